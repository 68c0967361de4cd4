"""The table of `compare`: studies grouped into columns they may share (one judge, one confirm
set), as Markdown and as a long CSV (polars). Studies scored by different judges or on different
confirm sets get tables of their own, and the Markdown says why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from icl_search.compare.rows import BUNDLE, COLUMNS, URIAL, StudyRow


@dataclass
class Panel:
    """Studies whose scores under `judge` share columns (same judge, same confirm set)."""

    judge: str | None  # None: studies without a confirmation
    confirm_set: str | None
    n_queries: int
    rows: list[tuple[StudyRow, int]]  # (row, index of `judge` among the row's judges)

    @property
    def title(self) -> str:
        if self.judge is None:
            return "Studies without a confirmation"
        return (f"Judge `{self.judge}` on confirm set `{self.confirm_set}` "
                f"({self.n_queries} queries)")


def panels(rows: list[StudyRow]) -> list[Panel]:
    """One panel per (judge, confirm set): a study's own judge and each audit judge."""
    out: dict[tuple[str, str], Panel] = {}
    for r in rows:
        for i, j in enumerate(r.judges):
            key = (j, r.confirm_set or "")
            out.setdefault(key, Panel(j, r.confirm_set, r.n_queries, [])).rows.append((r, i))
    found = list(out.values())
    lost = [r for r in rows if not r.confirmed]
    if lost:
        found.append(Panel(None, None, 0, [(r, 0) for r in lost]))
    return found


def apart_reasons(rows: list[StudyRow]) -> list[str]:
    """Why studies are not in one column: another study judge, or another confirm set."""
    done = [r for r in rows if r.confirmed]
    out = []
    for i, a in enumerate(done):
        for b in done[i + 1:]:
            if a.judges[0] != b.judges[0]:
                out.append(f"`{a.name}` and `{b.name}` are not in one column: {a.name} was "
                           f"judged by `{a.judges[0]}`, {b.name} by `{b.judges[0]}`.")
            elif a.confirm_set != b.confirm_set:
                out.append(f"`{a.name}` and `{b.name}` are not in one column: they were "
                           f"confirmed on different confirm sets (`{a.confirm_set}`, "
                           f"{a.n_queries} queries; `{b.confirm_set}`, {b.n_queries} queries).")
    out += [f"`{r.name}` has no confirmation: its cells are empty "
            "(`icl-search study confirm CONFIG`)." for r in rows if not r.confirmed]
    return out


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def score_cell(row: StudyRow, col: str, judge_index: int) -> str:
    from icl_search.compare.contexts import transfer_label

    cand = row.cells.get(col)
    if col == transfer_label(row.name):
        return "own bundle"
    if cand is None:
        return f"missing: {row.missing.get(col, 'not evaluated')}"
    if judge_index >= len(cand.views):
        return "missing: this judge did not score it"
    v = cand.views[judge_index]
    return f"{_num(v.confirm)} [{_num(v.low)}, {_num(v.high)}]"


def transfer_columns(rows: list[StudyRow]) -> list[str]:
    return sorted({c for r in rows for c in r.columns() if c not in COLUMNS})


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")
    return ["| " + " | ".join(map(esc, head)) + " |", "|" + " --- |" * len(head),
            *("| " + " | ".join(map(esc, b)) + " |" for b in body)]


def model_cells(r: StudyRow) -> list[str]:
    m = r.source.model
    return [r.name, m.name, m.size, m.kind]


def markdown(rows: list[StudyRow]) -> list[str]:
    tcols = transfer_columns(rows)
    lines = ["# Studies side by side", "",
             "One row per study (its base model). Each cell: the mean confirm score on queries "
             "no search saw, [95% bootstrap interval]. `bundle` is what `export` takes: the "
             "confirmed trial, else the baseline kept; `search top`: the trial with the best "
             "confirm score under the study judge, confirmed or not (the study's report says "
             "why not). `transfer:X`: study X's bundle answered "
             "by this row's model and scored by this row's judges (a measurement, not a "
             "claim). A model of kind `instruct` is already aligned: its row asks whether a "
             "context still helps.", ""]
    for r in rows:
        judges = ", ".join(f"`{j}`" for j in r.judges) or "none (not confirmed)"
        lines.append(f"- `{r.name}`: {r.source.model.label}; judges {judges}; bundle = "
                     f"{r.bundle_label}; search top = {r.top_label}"
                     + (f"; URIAL file {r.urial_file}"
                                            if r.urial_file and r.urial_file != "inst_1k.txt"
                                            else ""))
    donors = sorted({f"`{c}` = {c.split(':', 1)[1]}'s {d}" for r in rows
                     for c, d in r.transfers.items()})
    if donors:
        lines += ["", "Transfers answer with: " + "; ".join(donors) + " (a kept baseline "
                  "is the same context in every study sharing the baseline config)."]
    for p in panels(rows):
        lines += ["", f"## {p.title}", ""]
        head = ["study", "model", "size", "kind", *COLUMNS, *tcols]
        body = [[*model_cells(r), *(score_cell(r, c, i) for c in (*COLUMNS, *tcols))]
                for r, i in p.rows]
        lines += _md_table(head, body)
    reasons = apart_reasons(rows)
    if reasons:
        lines += ["", "## Not in one column", "", *(f"- {x}" for x in reasons)]
    lines += ["", "## Answers: hygiene and length", "",
              "Per context: answers still failing hygiene after cleaning, answers with any "
              "defect (leaked scaffolding, unbalanced fences, loops), mean length in words.", ""]
    lines += _md_table(["study", *COLUMNS, *tcols],
                       [[r.name, *(answers_cell(r, c) for c in (*COLUMNS, *tcols))]
                        for r in rows])
    lines += ["", f"## Blind review: {BUNDLE} over {URIAL}", "",
              "Win rate of the bundle (ties count half), [95% Wilson interval], from `icl-search "
              "review score`.", ""]
    lines += _md_table(["study", "win rate", "pairs", "raters"],
                       [[r.name, *review_cells(r)] for r in rows])
    return lines


def answers_cell(r: StudyRow, col: str) -> str:
    from icl_search.compare.contexts import transfer_label

    cand = r.cells.get(col)
    if col == transfer_label(r.name):
        return "own bundle"
    if cand is None:
        return "missing"
    h = cand.hygiene
    if not h.answers:
        return f"hygiene not stored; {_num(cand.mean_words, '.0f')} words"
    return (f"failed {h.failed}/{h.answers}, defects {h.defective}/{h.answers}, "
            f"{_num(cand.mean_words, '.0f')} words")


def review_cells(r: StudyRow) -> list[str]:
    rv = r.review
    if rv is None:
        return [f"missing: {r.review_missing}", "-", "-"]
    ci = rv["ci95"]
    return [f"{_num(rv['win_rate'])} [{_num(ci[0] if ci else None)}, "
            f"{_num(ci[1] if ci else None)}]", str(rv["pairs"]), rv["raters"]]


def long_records(rows: list[StudyRow]) -> list[dict[str, Any]]:
    """One record per (study, judge, context): the CSV's rows."""
    out = []
    tcols = transfer_columns(rows)
    for r in rows:
        m = r.source.model
        base = {"study": r.name, "model": m.name, "size": m.size, "kind": m.kind,
                "bundle": r.bundle_label, "confirm_set": r.confirm_set,
                "n_queries": r.n_queries or None}
        for col in (*COLUMNS, *tcols):
            cand = r.cells.get(col)
            h = cand.hygiene if cand is not None else None
            ans = {"context": col, "hygiene_answers": h.answers if h else None,
                   "hygiene_failed": h.failed if h else None,
                   "hygiene_defective": h.defective if h else None,
                   "failure_rate": h.rate("failed") if h else None,
                   "mean_words": cand.mean_words if cand is not None else None}
            for i, j in enumerate(r.judges or [None]):
                v = cand.views[i] if cand is not None and i < len(cand.views) else None
                out.append({**base, **ans, "judge": j,
                            "judge_role": None if j is None else "study" if i == 0 else "audit",
                            "score": v.confirm if v else None, "low": v.low if v else None,
                            "high": v.high if v else None, "n": v.n if v else None,
                            "missing": None if v else r.missing.get(col, "not evaluated")})
        rv = r.review
        out.append({**base, "context": f"review:{BUNDLE}>{URIAL}", "judge": "blind review",
                    "judge_role": rv["raters"] if rv else None,
                    "score": rv["win_rate"] if rv else None,
                    "low": rv["ci95"][0] if rv and rv["ci95"] else None,
                    "high": rv["ci95"][1] if rv and rv["ci95"] else None,
                    "n": rv["pairs"] if rv else None,
                    "missing": None if rv else r.review_missing})
    return out


def write_csv(rows: list[StudyRow], path) -> None:
    import polars as pl

    from icl_search.io import atomic_write

    df = pl.DataFrame(long_records(rows), infer_schema_length=None)
    with atomic_write(path) as fh:
        df.write_csv(fh)
