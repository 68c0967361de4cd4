"""The confirmation as Markdown: every judge side by side per candidate (confirm scores, gains
over each baseline raw and at equal length), lengths, hygiene and safety, then the verdict.
`study report`, `study confirm` and `export` print these lines."""

from __future__ import annotations

from icl_search.study.stats import TEST, Gain, _f, _s
from icl_search.study.verdict import BASELINE, Summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _gain(g: Gain | None, p: bool = True) -> str:
    if g is None or g.mean is None:
        return "-"
    tail = f", p={_f(g.p_value)}" if p else ""
    return f"{_s(g.mean)} ({_s(g.low)} to {_s(g.high)}{tail})"


def _baselines(summary: Summary) -> list[str]:
    names = {g.baseline for r in summary.rows for g in r.gains}
    return sorted(names, key=lambda b: (b != BASELINE, b))


def table_lines(summary: Summary) -> list[str]:
    """Markdown: one row per candidate (every judge's confirm score, lengths, hygiene, safety),
    then one row per candidate and baseline (every judge's gain, raw and at equal length)."""
    audit = summary.audit
    head = ["candidate", "search", "confirm (95% CI)", "shrinkage",
            *[f"`{a}` (95% CI)" for a in audit], "words", "at max_tokens",
            "hygiene defects", "safety"]
    lines = [f"Judges: `{summary.judge}` (the study's)"
             + (", audit " + ", ".join(f"`{a}`" for a in audit) if audit else
                ", no audit judge (`[judge] audit`)") + ".", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in summary.rows:
        cells = [r.label + (" **(best)**" if r is summary.best else ""), _f(r.search),
                 f"{_f(r.confirm)} ({_f(r.low)} to {_f(r.high)})", _s(r.shrinkage)]
        for a in audit:
            v = next((v for v in r.views if v.judge == a), None)
            cells.append("-" if v is None else f"{_f(v.confirm)} ({_f(v.low)} to {_f(v.high)})")
        h = r.hygiene
        cells += ["-" if r.mean_words is None else f"{r.mean_words:.0f}",
                  _pct(r.max_tokens_share), f"{h.defective}/{h.answers}", _f(r.safety_mean)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", *gain_lines(summary)]


def gain_lines(summary: Summary) -> list[str]:
    """Gains over each baseline under every judge, side by side, raw and at equal length."""
    judges = summary.judges
    head = ["candidate", "vs"]
    for j in judges:
        head += [f"`{j}` gain (95% CI, p)", f"`{j}` at equal length"]
    head.append("safety gain")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in summary.rows:
        for b in _baselines(summary):
            # a baseline against a later baseline only (not the same pair twice)
            if b == r.label or (r.role != "trial" and r.label in _baselines(summary)
                                and _baselines(summary).index(r.label)
                                > _baselines(summary).index(b)):
                continue
            cells = [r.label, b]
            for j in judges:
                v = next((v for v in r.views if v.judge == j), None)
                cells += ["-", "-"] if v is None else [_gain(v.gain(b)),
                                                       _gain(v.gain(b, lc=True))]
            cells.append(_gain(next((g for g in r.safety if g.baseline == b), None), p=False))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict_lines(summary: Summary) -> list[str]:
    lines = [summary.sentence()]
    if not summary.hygiene_floor:
        lines.append("Note: `[judge] hygiene_floor = false`: answers still failing hygiene "
                     "after cleaning were scored as they are, not at the judges' floor.")
    return lines


def section_lines(s: Summary) -> list[str]:
    """The confirmation section of a report, for a stored summary."""
    intro = (f"On {s.n_queries} confirm queries the search never saw; intervals: 95% bootstrap "
             f"(BCa); p: {TEST}; at equal length: the intercept of the per-query gain "
             "regressed on the log length ratio (95% t interval). Hygiene defects: answers "
             "with leaked scaffolding, unbalanced fences or a repetition loop. Safety: the "
             f"study judge on the confirm set's safety rows ({s.n_safety} of them"
             + ("; add safety rows to the confirm set to check it" if not s.n_safety else "")
             + ").")
    return ["", "## Confirmation", "", intro, "", *table_lines(s), "", *verdict_lines(s)]
