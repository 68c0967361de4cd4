"""Several feedback sources on one trial: the judge, rule checks, a reward model, pairwise
preference against the baseline context; each kept separately, and combined into one value.

Every source is put on the judge's 1-5 scale before weighting, so a combined value reads like
a judge score: judge `overall`; rules `1 + 4 * pass_rate` (per query: 5 when no rule caught
it, 1 otherwise); reward the calibrated score; pairwise `1 + 4 * win_rate` (per query: win 5,
tie 3, loss 1). The combined value is the weighted mean of the sources that have a value.
A rules `gate` makes a trial whose pass rate is below `min_pass` fail outright.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icl_search.feedback.pairwise import PairItem, PairwiseJudge, PairwiseResult
from icl_search.feedback.reward import RewardScorer
from icl_search.feedback.rules import RuleChecker, RuleItem, RuleResult

SOURCES = ("judge", "rules", "reward", "pairwise")


@dataclass
class Feedback:
    """The configured sources and their weights (see `from_config`)."""

    judge_weight: float = 1.0
    rules: RuleChecker | None = None
    rules_weight: float = 0.5
    gate: bool = False
    min_pass: float = 1.0
    reward: RewardScorer | None = None
    reward_weight: float = 1.0
    pairwise: PairwiseJudge | None = None
    pairwise_weight: float = 1.0
    weights: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.weights = {"judge": self.judge_weight}
        for name in SOURCES[1:]:
            if getattr(self, name) is not None:
                self.weights[name] = getattr(self, f"{name}_weight")

    @property
    def sources(self) -> list[str]:
        return [s for s in SOURCES if s in self.weights]

    @property
    def extra_sources(self) -> list[str]:
        return [s for s in self.sources if s != "judge"]

    # -- per query -----------------------------------------------------------------------------
    def score_records(self, records: Sequence[Any], *, queries: Mapping[str, Any] | None = None,
                      baseline: Mapping[str, str | None] | None = None) -> None:
        """Set `record.feedback` = {source: detail} on `QueryRecord`-like objects
        (`query_id`, `query`, `category`, `answer`). `queries` maps query ids to `Query`s (for
        `expect`); `baseline` maps query ids to the baseline context's answers."""
        queries = queries or {}
        for r in records:
            if getattr(r, "feedback", None) is None:
                r.feedback = {}
        if self.rules is not None:
            items = [RuleItem(r.query_id, r.query, r.answer, r.category,
                              _expect(queries.get(r.query_id))) for r in records]
            res = self.rules.check(items)
            for r, hits in zip(records, res.hits, strict=True):
                r.feedback["rules"] = [h.to_dict() for h in hits]
        if self.reward is not None:
            scores = self.reward.score([(r.query, r.answer) for r in records])
            for r, s in zip(records, scores, strict=True):
                r.feedback["reward"] = {"raw": s.raw, "score": s.score}
        if self.pairwise is not None:
            if baseline is None:
                raise ValueError("pairwise feedback needs the baseline answers")
            res = self.pairwise.compare([PairItem(r.query_id, r.query, r.answer,
                                                  baseline.get(r.query_id)) for r in records])
            for r, o in zip(records, res.outcomes, strict=True):
                r.feedback["pairwise"] = o.to_dict()

    def query_values(self, record: Any) -> dict[str, float | None]:
        """Each source's value for one record, on the 1-5 scale."""
        j = record.judgement
        fb = getattr(record, "feedback", None) or {}
        out: dict[str, float | None] = {"judge": j.overall if j else None}
        if "rules" in self.weights:
            out["rules"] = (5.0 if not fb.get("rules") else 1.0) if "rules" in fb else None
        if "reward" in self.weights:
            out["reward"] = (fb.get("reward") or {}).get("score")
        if "pairwise" in self.weights:
            v = {"win": 5.0, "tie": 3.0, "loss": 1.0}.get((fb.get("pairwise") or {}).get("outcome"))
            out["pairwise"] = v
        return out

    def query_value(self, record: Any) -> float | None:
        """The weighted per-query value (what the pruner sees)."""
        return self._weighted(self.query_values(record))

    def _weighted(self, values: Mapping[str, float | None]) -> float | None:
        pairs = [(self.weights[s], v) for s, v in values.items()
                 if v is not None and self.weights.get(s, 0) > 0]
        total = sum(w for w, _ in pairs)
        return sum(w * v for w, v in pairs) / total if total else None

    # -- per trial -----------------------------------------------------------------------------
    def summarize(self, records: Sequence[Any], judge_overall: float | None) -> TrialFeedback:
        raw: dict[str, float | None] = {"judge": judge_overall}
        scaled: dict[str, float | None] = {"judge": judge_overall}
        detail: dict[str, Any] = {}
        fbs = [getattr(r, "feedback", None) or {} for r in records]
        if "rules" in self.weights:
            rows = [f["rules"] for f in fbs if "rules" in f]
            rate = sum(not h for h in rows) / len(rows) if rows else None
            counts: dict[str, int] = {n: 0 for n in self.rules.rules}
            for hits in rows:
                for n in {h["rule"] for h in hits}:
                    counts[n] = counts.get(n, 0) + 1
            raw["rules"] = rate
            scaled["rules"] = 1 + 4 * rate if rate is not None else None
            detail["rules"] = {"pass_rate": rate, "caught": counts}
        if "reward" in self.weights:
            vals = [f["reward"]["score"] for f in fbs if (f.get("reward") or {}).get("score")
                    is not None]
            raws = [f["reward"]["raw"] for f in fbs if (f.get("reward") or {}).get("raw")
                    is not None]
            raw["reward"] = scaled["reward"] = float(np.mean(vals)) if vals else None
            detail["reward"] = {"mean_score": raw["reward"],
                                "mean_raw": float(np.mean(raws)) if raws else None}
        if "pairwise" in self.weights:
            from icl_search.feedback.pairwise import PairOutcome

            res = PairwiseResult([PairOutcome(**{**f["pairwise"], "orders": tuple(
                f["pairwise"]["orders"])}) for f in fbs if f.get("pairwise")])
            raw["pairwise"] = res.win_rate
            scaled["pairwise"] = 1 + 4 * res.win_rate if res.win_rate is not None else None
            detail["pairwise"] = res.summary()
        gate = None
        if self.gate and raw.get("rules") is not None and raw["rules"] < self.min_pass:
            gate = (f"rule checks passed on {raw['rules']:.0%} of the answers, below the gate's "
                    f"min_pass {self.min_pass:.0%}: {detail['rules']['caught']}")
        return TrialFeedback(raw, scaled, self._weighted(scaled), detail, gate)


@dataclass
class TrialFeedback:
    values: dict[str, float | None]  # each source in its own unit (rate, score)
    scaled: dict[str, float | None]  # each source on 1-5
    combined: float | None
    detail: dict[str, Any]
    gate_failed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values, "scaled": self.scaled, "combined": self.combined,
                "detail": self.detail, "gate_failed": self.gate_failed}


def _expect(q: Any) -> str | None:
    meta = getattr(q, "meta", None) or {}
    return meta.get("expect")


def rules_result(records: Sequence[Any], checker: RuleChecker | None = None,
                 queries: Mapping[str, Any] | None = None) -> RuleResult:
    """Rule checks over `QueryRecord`-like objects, outside a study."""
    queries = queries or {}
    return (checker or RuleChecker()).check(
        [RuleItem(r.query_id, r.query, r.answer, r.category, _expect(queries.get(r.query_id)))
         for r in records])


def feedback_from_config(section: Any, *, judge=None, cache=None, template=None,
                         resolve=lambda p: p) -> Feedback | None:
    """A `Feedback` from a study config's `[feedback]` section (None when there is none).

    `judge` is the study's judge (the pairwise default); `resolve` turns config-relative paths
    into paths; `template` the prompt template (for the template-leak rule)."""
    if section is None:
        return None
    from icl_search.prompt import Template

    kw: dict[str, Any] = {"judge_weight": section.judge_weight}
    if section.rules is not None:
        r = section.rules
        opts: dict[str, Any] = {"min_words": r.min_words, "max_words": r.max_words,
                                "max_repeat_share": r.max_repeat_share,
                                "template": template or Template()}
        if r.rules:
            opts["rules"] = tuple(r.rules)
        kw.update(rules=RuleChecker(**opts), rules_weight=r.weight, gate=r.gate,
                  min_pass=r.min_pass)
    if section.reward is not None:
        r = section.reward
        kw.update(reward=RewardScorer(r.spec, center=r.center, scale=r.scale,
                                      trust_remote_code=r.trust_remote_code,
                                      max_length=r.max_length, cache=cache),
                  reward_weight=r.weight)
    if section.pairwise is not None:
        p = section.pairwise
        pj = judge
        if p.judge:
            from icl_search.judge import make_judge

            pj = make_judge(p.judge, cache=cache)
        if pj is None:
            raise ValueError("pairwise feedback needs a judge")
        kw.update(pairwise=PairwiseJudge(pj, template=resolve(p.template), margin=p.margin,
                                         cache=cache),
                  pairwise_weight=p.weight)
    return Feedback(**kw)
