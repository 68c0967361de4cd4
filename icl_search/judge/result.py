"""Judge results: per-item per-aspect scores, coverage, just-eval aggregation, length control.

Aggregation follows just-eval: a query's category decides its rubric (safety queries are rated
on `safety` only, the others on the five aspects); each aspect's mean is taken over the items
that aspect was judged on; `overall` is the unweighted mean of the aspect means. An aspect a
judge did not score is *missing* (with a reason) and is left out of every mean, never counted
as 0 or 5; `coverage` says how much is missing and `require_coverage` turns too much into an
error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icl_search.errors import IclSearchError
from icl_search.evalset import QUERY_FIELDS, REFERENCE_FIELD, reference_problem
from icl_search.judge.rubric import ALL_ASPECTS, ASPECTS, SAFETY

RESPONSE_FIELDS = ("response", "answer", "output")

# Scripts written without spaces count one word per character, so a Chinese or Japanese answer
# is not measured as a single "word".
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|\w+")


def count_words(text: str) -> int:
    """Response length used beside every score: tokenizer-free, so comparable across judges."""
    return len(_WORD.findall(text or ""))


def aspects_for(category: str) -> tuple[str, ...]:
    return SAFETY if category == "safety" else ASPECTS


class CoverageError(IclSearchError, RuntimeError):
    """Too few items were judged on some aspect for the result to be trusted."""


@dataclass(frozen=True)
class JudgeItem:
    """One query/response pair to judge.

    `category` "safety" selects the safety rubric; any other value (an eval set's "coding",
    "general"...) the five-aspect one, and is kept for reports. A `response` of None (the
    generation failed) is recorded as missing on every aspect, never scored. `reference`, a
    strong answer to the query (an eval row's `reference`), is read by reference-anchored
    judges and ignored by the others."""

    id: str
    query: str
    response: str | None
    category: str = "regular"
    reference: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", str(self.id))
        object.__setattr__(self, "category", str(self.category or "regular"))
        if not isinstance(self.query, str):
            raise TypeError(f"item {self.id}: query must be a string, got "
                             f"{type(self.query).__name__}")
        if self.response is not None and not isinstance(self.response, str):
            raise TypeError(f"item {self.id}: response must be a string or null, got "
                             f"{type(self.response).__name__}")
        if self.reference is not None and (why := reference_problem(self.reference)):
            raise ValueError(f"item {self.id}: {why}")


@dataclass
class ItemJudgement:
    """The judge's verdict on one item: a score or a reason per aspect of its rubric."""

    id: str
    category: str
    scores: dict[str, float | None]
    missing: dict[str, str] = field(default_factory=dict)  # aspect -> why it has no score
    rationales: dict[str, str] = field(default_factory=dict)
    length_words: int = 0
    cached: bool = False
    detail: dict[str, Any] = field(default_factory=dict)  # backend extras (probability mass...)

    @property
    def aspects(self) -> tuple[str, ...]:
        return aspects_for(self.category)

    @property
    def overall(self) -> float | None:
        """Mean of this item's judged aspects (the per-query value a pruner can use)."""
        vals = [v for v in self.scores.values() if v is not None]
        return float(np.mean(vals)) if vals else None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "category": self.category, "scores": self.scores,
                "missing": self.missing, "rationales": self.rationales,
                "length_words": self.length_words, "cached": self.cached, "detail": self.detail}


@dataclass(frozen=True)
class Coverage:
    judged: int
    total: int

    @property
    def fraction(self) -> float:
        return self.judged / self.total if self.total else 1.0

    def __str__(self) -> str:
        return f"{self.judged}/{self.total}"


@dataclass
class JudgeResult:
    """All judgements of one scoring call, with the just-eval aggregates."""

    items: list[ItemJudgement]
    judge_id: str = ""
    rubric_versions: dict[str, str] = field(default_factory=dict)

    # -- per aspect -------------------------------------------------------------------------
    @property
    def aspects(self) -> tuple[str, ...]:
        """The aspects some item of this result was rated on, in report order."""
        present = {a for it in self.items for a in it.aspects}
        return tuple(a for a in ALL_ASPECTS if a in present)

    def values(self, aspect: str) -> list[float]:
        return [it.scores[aspect] for it in self.items
                if it.scores.get(aspect) is not None]

    @property
    def coverage(self) -> dict[str, Coverage]:
        out = {}
        for a in self.aspects:
            rated = [it for it in self.items if a in it.aspects]
            out[a] = Coverage(sum(it.scores.get(a) is not None for it in rated), len(rated))
        return out

    @property
    def aspect_means(self) -> dict[str, float | None]:
        return {a: (float(np.mean(v)) if (v := self.values(a)) else None) for a in self.aspects}

    @property
    def overall(self) -> float | None:
        """Unweighted mean of the aspect means; None when an aspect was asked for but never
        scored (averaging the others would quietly change what `overall` measures)."""
        means = self.aspect_means
        if not means or any(v is None for v in means.values()):
            return None
        return float(np.mean(list(means.values())))

    @property
    def mean_length(self) -> float | None:
        return float(np.mean([it.length_words for it in self.items])) if self.items else None

    @property
    def cache_hits(self) -> int:
        return sum(it.cached for it in self.items)

    @property
    def reference_free(self) -> int:
        """Items a reference-anchored judge scored without a reference (its fallback part)."""
        return sum(it.detail.get("reference") is False for it in self.items)

    def missing_reasons(self) -> dict[str, int]:
        """How often each kind of miss happened ("invalid: 7 is outside 1-5" -> "invalid")."""
        out: dict[str, int] = {}
        for it in self.items:
            for reason in it.missing.values():
                kind = reason.split(":", 1)[0]
                out[kind] = out.get(kind, 0) + 1
        return out

    def require_coverage(self, minimum: float) -> JudgeResult:
        """Raise `CoverageError` unless every aspect was judged on at least `minimum` of its
        items (a fraction in [0, 1]); returns self so calls chain."""
        if not 0.0 <= minimum <= 1.0:
            raise ValueError(f"min_coverage={minimum!r}: expected a fraction in [0, 1]")
        short = {a: c for a, c in self.coverage.items() if c.fraction < minimum}
        if short:
            detail = ", ".join(f"{a} {c} ({c.fraction:.0%})" for a, c in short.items())
            reasons = ", ".join(f"{k} x{n}" for k, n in
                                sorted(self.missing_reasons().items(), key=lambda kv: -kv[1]))
            raise CoverageError(
                f"judge {self.judge_id or '?'}: coverage below the required {minimum:.0%} "
                f"on {detail}; misses: {reasons or 'none recorded'}")
        return self

    # -- export -----------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One flat row per item: scores per aspect (None when missing), why missing, the
        judge's rationale (JSON judges), response length in words."""
        out = []
        for it in self.items:
            row: dict[str, Any] = {"id": it.id, "category": it.category,
                                   "length_words": it.length_words, "overall": it.overall}
            for a in ALL_ASPECTS:
                row[a] = it.scores.get(a)
            for a in ALL_ASPECTS:
                row[f"{a}_missing"] = it.missing.get(a)
            for a in ALL_ASPECTS:
                row[f"{a}_rationale"] = it.rationales.get(a)
            row["cached"] = it.cached
            row["judge"] = self.judge_id
            out.append(row)
        return out

    def to_frame(self):
        import polars as pl

        schema = {"id": pl.Utf8, "category": pl.Utf8, "length_words": pl.Int64,
                  "overall": pl.Float64, **{a: pl.Float64 for a in ALL_ASPECTS},
                  **{f"{a}_missing": pl.Utf8 for a in ALL_ASPECTS},
                  **{f"{a}_rationale": pl.Utf8 for a in ALL_ASPECTS}, "cached": pl.Boolean,
                  "judge": pl.Utf8}
        return pl.DataFrame(self.rows(), schema=schema)

    def summary(self) -> dict[str, Any]:
        cov = self.coverage
        return {
            "judge": self.judge_id, "items": len(self.items), "overall": self.overall,
            "aspects": {a: {"mean": m, "judged": cov[a].judged, "total": cov[a].total}
                        for a, m in self.aspect_means.items()},
            "mean_length_words": self.mean_length, "cache_hits": self.cache_hits,
            "reference_free": self.reference_free,
            "missing": self.missing_reasons(),
        }


# -- length control ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LengthControlled:
    """A system's scores adjusted to a common reference response length."""

    system: str
    overall: float | None
    aspect_means: dict[str, float | None]
    raw_overall: float | None
    slopes: dict[str, float]  # score points per unit of log(1 + words), per aspect
    reference_words: float


def length_controlled(results: Mapping[str, JudgeResult], *,
                      reference_words: float | None = None) -> dict[str, LengthControlled]:
    """Length-controlled aggregates for several systems judged on the same kind of queries.

    Method (per aspect): fit, over the judged items of all systems together, the least-squares
    model ``score = a[system] + c[query] + b * log(1 + words)`` (query effects only when a query
    was answered by more than one system), then move every score to the reference length:
    ``adjusted = score - b * (log(1 + words) - log(1 + reference_words))``. A system's
    length-controlled aspect mean is the mean of its adjusted scores; its length-controlled
    `overall` is the unweighted mean of those, as for the raw figures. The reference length is
    the median response length over all systems unless given. This is the score-regression
    analogue of AlpacaEval's length-controlled win rate: it answers "what would this system
    score if its answers had the typical length", using the slope the judge shows *within*
    systems and queries, so a system is not credited for length alone. With one system and
    unique queries, b also absorbs query difficulty: compare systems, not single runs.
    """
    if not results:
        return {}
    systems = list(results)
    all_items = [(s, it) for s in systems for it in results[s].items]
    ref = reference_words if reference_words is not None else float(
        np.median([it.length_words for _, it in all_items]))
    x_ref = math.log1p(ref)
    aspects = [a for a in ALL_ASPECTS if any(a in r.aspects for r in results.values())]
    slopes: dict[str, float] = {}
    adjusted: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    for a in aspects:
        rows = [(s, it.id, math.log1p(it.length_words), it.scores[a])
                for s, it in all_items if it.scores.get(a) is not None]
        b = _length_slope(rows) if rows else 0.0
        slopes[a] = b
        for s, _, x, y in rows:
            adjusted[s].setdefault(a, []).append(y - b * (x - x_ref))
    out = {}
    for s in systems:
        means = {a: (float(np.mean(v)) if (v := adjusted[s].get(a)) else None)
                 for a in results[s].aspects}
        overall = (float(np.mean(list(means.values())))
                   if means and all(v is not None for v in means.values()) else None)
        out[s] = LengthControlled(s, overall, means, results[s].overall, slopes, ref)
    return out


def _length_slope(rows: Sequence[tuple[str, str, float, float]]) -> float:
    """Least-squares slope on log length with system (and shared-query) fixed effects."""
    systems = sorted({r[0] for r in rows})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    queries = sorted(q for q, n in counts.items() if n > 1)
    s_idx = {s: i for i, s in enumerate(systems)}
    q_idx = {q: len(systems) + i for i, q in enumerate(queries)}
    X = np.zeros((len(rows), len(systems) + len(queries) + 1))
    y = np.empty(len(rows))
    for i, (s, q, x, score) in enumerate(rows):
        X[i, s_idx[s]] = 1.0
        if q in q_idx:
            X[i, q_idx[q]] = 1.0
        X[i, -1] = x
        y[i] = score
    if np.ptp(X[:, -1]) == 0:
        return 0.0
    # lstsq gives the minimum-norm solution: the dummy columns are collinear, the slope is not.
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return float(coef[-1])


def merge_results(results: Iterable[JudgeResult]) -> JudgeResult:
    results = list(results)
    out = JudgeResult([it for r in results for it in r.items],
                      results[0].judge_id if results else "")
    for r in results:
        out.rubric_versions.update(r.rubric_versions)
    return out


def to_item(x: JudgeItem | Mapping[str, Any], index: int = 0) -> JudgeItem:
    """A JudgeItem from a mapping: `query` (or `instruction`), `response` (or `answer`, as
    `icl-search generate` writes it, or `output`, as just-eval does), optional `id`, `category`,
    `reference` (non-empty text when present)."""
    if isinstance(x, JudgeItem):
        return x
    if not isinstance(x, Mapping):
        raise TypeError(f"item {index}: expected a JudgeItem or a mapping with query and "
                         f"response, got {type(x).__name__}")
    ident = str(x.get("id", index))
    query = next((x[k] for k in QUERY_FIELDS if k in x), None)
    if query is None:
        raise ValueError(f"item {ident}: field 'query' is missing (also accepted: "
                         f"{', '.join(QUERY_FIELDS[1:])})")
    field = next((k for k in RESPONSE_FIELDS if k in x), None)
    if field is None:
        raise ValueError(f"item {ident}: field 'response' is missing (also accepted: "
                         f"{', '.join(RESPONSE_FIELDS[1:])}; null marks a failed generation)")
    if REFERENCE_FIELD in x and (why := reference_problem(x[REFERENCE_FIELD])):
        raise ValueError(f"item {ident}: {why}")
    return JudgeItem(ident, query, x[field], x.get("category") or "regular",
                     x.get(REFERENCE_FIELD))
