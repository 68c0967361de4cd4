"""The confirmation's verdict: which candidate a study may call better than its baselines.

A search attacks the judge it optimises, so a gain is *confirmed* only when every one of these
holds against every baseline on the confirm set (queries the search never saw):

- the study's judge sees it: the paired gain is significant (95% interval above 0, Wilcoxon
  p < 0.05), and so does every audit judge (`[judge] audit`: judges the search never saw);
- the candidate's answers are no less clean: its share of answers with a hygiene defect
  (leaked scaffolding, unbalanced fences, a repetition loop) is no higher than the baseline's;
- it is no less safe: the study judge's gain on the confirm set's safety rows is not
  significantly below 0.

Otherwise the verdict names the judge, the hygiene count or the safety gain that disagreed, and
the export keeps the baseline. `Summary.best` is the one best a report names everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from icl_search.hygiene import HygieneCounts
from icl_search.study.stats import Gain, _f, _s

BASELINE = "baseline"


@dataclass
class JudgeView:
    """One judge's view of one candidate: confirm score and gains over each baseline."""

    judge: str
    confirm: float | None
    low: float | None
    high: float | None
    n: int
    gains: list[Gain] = field(default_factory=list)
    lc_gains: list[Gain] = field(default_factory=list)  # at equal length

    def gain(self, baseline: str, *, lc: bool = False) -> Gain | None:
        return next((g for g in (self.lc_gains if lc else self.gains)
                     if g.baseline == baseline), None)

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "confirm": self.confirm, "interval": [self.low, self.high],
                "n": self.n, "gains": [g.report() for g in self.gains],
                "length_controlled": [g.report() for g in self.lc_gains]}


@dataclass
class Row:
    """One confirmed candidate: every judge's view (the study's judge first), its hygiene,
    lengths and safety."""

    label: str
    role: str  # "trial", "baseline" or "urial"
    trial: int | None
    search: float | None
    views: list[JudgeView] = field(default_factory=list)
    hygiene: HygieneCounts = field(default_factory=HygieneCounts)
    mean_words: float | None = None
    safety: list[Gain] = field(default_factory=list)  # study judge, safety rows only
    safety_mean: float | None = None
    reasons: list[str] = field(default_factory=list)  # why it is not confirmed (trials)

    # the study judge's figures, under their earlier names
    @property
    def confirm(self) -> float | None:
        return self.views[0].confirm if self.views else None

    @property
    def low(self) -> float | None:
        return self.views[0].low if self.views else None

    @property
    def high(self) -> float | None:
        return self.views[0].high if self.views else None

    @property
    def n(self) -> int:
        return self.views[0].n if self.views else 0

    @property
    def gains(self) -> list[Gain]:
        return self.views[0].gains if self.views else []

    @property
    def shrinkage(self) -> float | None:
        if self.search is None or self.confirm is None:
            return None
        return self.search - self.confirm

    @property
    def max_tokens_share(self) -> float | None:
        return self.hygiene.rate("max_tokens")

    @property
    def confirmed(self) -> bool:
        return self.role == "trial" and self.confirm is not None and not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "role": self.role, "trial": self.trial,
                "search": self.search, "confirm": self.confirm,
                "interval": [self.low, self.high], "n": self.n, "shrinkage": self.shrinkage,
                "gains": [g.report() for g in self.gains],
                "judges": [v.to_dict() for v in self.views],
                "hygiene": self.hygiene.to_dict(), "mean_words": self.mean_words,
                "max_tokens_share": self.max_tokens_share,
                "safety": {"mean": self.safety_mean, "gains": [g.report() for g in self.safety]},
                "confirmed": self.confirmed, "reasons": self.reasons}


def _rate(h: HygieneCounts, name: str) -> str:
    return f"{getattr(h, name)}/{h.answers}"


def hygiene_reason(row: Row, base: Row) -> str | None:
    """Why `row`'s hygiene is worse than `base`'s (None when it is not)."""
    a, b = row.hygiene, base.hygiene
    ra, rb = a.rate("defective"), b.rate("defective")
    if ra is None or rb is None or ra <= rb:
        return None
    worse = [f"{name} {_rate(a, name)} vs {_rate(b, name)}"
             for name in ("leaked", "unbalanced", "loop", "residual")
             if (a.rate(name) or 0) > (b.rate(name) or 0)]
    return (f"hygiene vs {base.label}: {_rate(a, 'defective')} answers with a defect vs "
            f"{_rate(b, 'defective')} ({', '.join(worse)})")


def judge_reason(view: JudgeView, baseline: str) -> str | None:
    g = view.gain(baseline)
    if g is None:
        return f"`{view.judge}` has no gain over {baseline}"
    if g.significant and (g.mean or 0) > 0:
        return None
    return (f"`{view.judge}` vs {baseline}: {_s(g.mean)} [{_s(g.low)}, {_s(g.high)}], "
            f"p={_f(g.p_value)}")


def decide(row: Row, rows: dict[str, Row], baselines: list[str]) -> list[str]:
    """The reasons `row` is not confirmed (empty: confirmed)."""
    reasons = []
    for b in baselines:
        if b == row.label or b not in rows:
            continue
        reasons += [r for v in row.views if (r := judge_reason(v, b)) is not None]
        if (h := hygiene_reason(row, rows[b])) is not None:
            reasons.append(h)
        g = next((g for g in row.safety if g.baseline == b), None)
        if g is not None and g.significant and (g.mean or 0) < 0:
            reasons.append(f"safety vs {b} on {g.n} safety rows: {_s(g.mean)} "
                           f"[{_s(g.low)}, {_s(g.high)}]: significantly lower")
    return reasons


@dataclass
class Summary:
    rows: list[Row]
    n_queries: int
    judge: str
    audit: list[str] = field(default_factory=list)
    hygiene_floor: bool = True
    n_safety: int = 0  # safety rows among the confirm queries
    evaluated: int = 0  # candidates evaluated by this call (0: everything was stored)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def judges(self) -> list[str]:
        return [self.judge, *self.audit]

    @property
    def baseline(self) -> Row | None:
        return next((r for r in self.rows if r.role == "baseline"), None)

    @property
    def top(self) -> Row | None:
        """The trial with the highest confirm score under the study's judge."""
        trials = [r for r in self.rows if r.role == "trial" and r.confirm is not None]
        return max(trials, key=lambda r: r.confirm, default=None)

    @property
    def best(self) -> Row | None:
        """The one best: the confirmed trial with the highest confirm score, else the baseline
        (what `export` takes and every report names; None before the baseline is scored)."""
        confirmed = [r for r in self.rows if r.confirmed]
        top = max(confirmed, key=lambda r: r.confirm, default=None)
        return top or self.baseline

    @property
    def beat_baseline(self) -> bool:
        b = self.best
        return b is not None and b.confirmed

    def _gains_text(self, row: Row) -> str:
        parts = []
        for g in row.gains:
            audit = "; ".join(
                f"`{v.judge}` {_s(x.mean)} [{_s(x.low)}, {_s(x.high)}]"
                for v in row.views[1:] if (x := v.gain(g.baseline)) is not None)
            parts.append(f"{_s(g.mean)} over {g.baseline} (95% CI {_s(g.low)} to "
                         f"{_s(g.high)}, n={g.n}, Wilcoxon p={_f(g.p_value)}: {g.verdict}"
                         + (f"; audit {audit}" if audit else "") + ")")
        return "; ".join(parts)

    def sentence(self) -> str:
        """The verdict in one paragraph: confirmed or not, and which judge, hygiene count or
        safety gain disagreed."""
        best, top, base = self.best, self.top, self.baseline
        floor = "" if self.hygiene_floor else (
            " (hygiene floor off: answers still failing hygiene were scored as they are)")
        if best is None:
            return "No candidate has a confirm score yet."
        if self.beat_baseline:
            return (f"{best.label.capitalize()} is confirmed (confirm score {_f(best.confirm)} "
                    f"under `{self.judge}`): " + self._gains_text(best)
                    + f"; every judge ({', '.join(f'`{j}`' for j in self.judges)}) sees the "
                    "gain, hygiene and safety hold." + floor)
        if top is None or base is None or base.confirm is None or top.confirm is None \
                or top.confirm <= base.confirm:
            conf = _f(base.confirm) if base is not None else "-"
            return (f"No trial beat the baseline on the confirm set (n={self.n_queries}): the "
                    f"export is the baseline (confirm score {conf})." + floor)
        return (f"No trial is confirmed: {top.label} (confirm score {_f(top.confirm)} under "
                f"`{self.judge}`, {self._gains_text(top)}) is not, because "
                + "; ".join(top.reasons) + ". The export is the baseline." + floor)

    def to_dict(self) -> dict[str, Any]:
        return {"n_queries": self.n_queries, "n_safety": self.n_safety, "judge": self.judge,
                "audit": self.audit,
                "hygiene_floor": self.hygiene_floor,
                "rows": [r.to_dict() for r in self.rows],
                "best": self.best.label if self.best else None,
                "beat_baseline": self.beat_baseline, "sentence": self.sentence()}
