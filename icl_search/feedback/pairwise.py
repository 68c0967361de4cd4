"""Pairwise preference: the judge compares a candidate answer with a baseline answer to the same
query, in both orders, and a trial's value is its win rate against the baseline context.

Each pair is asked twice, candidate first (as reply A) and baseline first, with the rubric in
`templates/pairwise.txt`. A verdict per order is A, B or tie; the pair's outcome counts only
what survives the swap: a **win** when both orders prefer the candidate, a **loss** when both
prefer the baseline, a **tie** otherwise (a judge that always says "A" produces ties, not a
bias towards whichever answer it happens to read first). Identical answers are a tie without
asking. `win_rate = (wins + ties / 2) / n`, with a Wilson score interval (ties counted as half
a success) and, on request, a bootstrap interval.

How the judge is read depends on its backend (the same `make_judge` spec as pointwise):

- ``logprob:`` local engines: the next-token top-20 log-probabilities after "Better reply:";
  P(A), P(B) and P(tie) are summed over their spellings ("A", " A", "▁A"...) and over the
  space-then-letter path (as in the pointwise judge); the order prefers A when
  (P(A) + P(tie)/2) / (P(A) + P(B) + P(tie)) exceeds 0.5 + `margin`, B below 0.5 - `margin`.
- ``sample:`` local engines: the generated word, at the judge's temperature.
- ``dspy:`` chat models: the rubric as one user message, the first A / B / tie in the reply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from icl_search.errors import one_line
from icl_search.judge.backends import ChatBackend, EngineBackend, JudgeError, label_probabilities

DEFAULT_TEMPLATE = "pairwise.txt"
_WORD = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)
TRUNCATED = "\n[... truncated ...]"


def load_template(path: str | Path | None = None) -> str:
    if path is None:
        return files("icl_search.feedback").joinpath("templates", DEFAULT_TEMPLATE).read_text(
            encoding="utf-8")
    p = Path(path)
    if not p.exists():
        raise JudgeError(f"{p}: pairwise template not found")
    text = p.read_text(encoding="utf-8")
    missing = [f for f in ("{query}", "{first}", "{second}") if f not in text]
    if missing:
        raise JudgeError(f"{p}: pairwise template lacks the field(s) {', '.join(missing)}")
    return text


@dataclass(frozen=True)
class PairItem:
    id: str
    query: str
    candidate: str | None
    baseline: str | None


@dataclass
class PairOutcome:
    id: str
    outcome: str  # win | loss | tie | missing
    orders: tuple[str | None, str | None] = (None, None)  # verdict candidate-first, baseline-first
    p_candidate: float | None = None  # mean over both orders of P(candidate preferred)
    reason: str = ""

    @property
    def value(self) -> float | None:
        return {"win": 1.0, "tie": 0.5, "loss": 0.0}.get(self.outcome)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "outcome": self.outcome, "orders": list(self.orders),
                "p_candidate": self.p_candidate, "reason": self.reason}


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (successes may be fractional: ties count 1/2)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class PairwiseResult:
    outcomes: list[PairOutcome]
    judge_id: str = ""

    def _count(self, what: str) -> int:
        return sum(o.outcome == what for o in self.outcomes)

    @property
    def wins(self) -> int:
        return self._count("win")

    @property
    def losses(self) -> int:
        return self._count("loss")

    @property
    def ties(self) -> int:
        return self._count("tie")

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float | None:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        """95% Wilson interval of the win rate."""
        return wilson_interval(self.wins + 0.5 * self.ties, self.n)

    def bootstrap_interval(self, n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float]:
        vals = np.array([o.value for o in self.outcomes if o.value is not None])
        if not len(vals):
            return (0.0, 1.0)
        rng = np.random.default_rng(seed)
        means = vals[rng.integers(0, len(vals), (n_boot, len(vals)))].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        return (float(lo), float(hi))

    def summary(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"win_rate": self.win_rate, "ci95": [round(lo, 4), round(hi, 4)],
                "wins": self.wins, "losses": self.losses, "ties": self.ties,
                "missing": self._count("missing")}


def _letter(token: str) -> str | None:
    t = token.replace("▁", " ").replace("Ġ", " ").strip().casefold()
    return {"a": "A", "b": "B", "tie": "tie"}.get(t)


def read_preference(*positions: dict[str, float]) -> tuple[float | None, float]:
    """(P(first reply preferred), probability mass on A/B/tie) from next-token top-k."""
    probs = label_probabilities(positions, _letter, ("A", "B", "tie"))
    mass = sum(probs.values())
    if mass <= 0:
        return None, 0.0
    return (probs["A"] + 0.5 * probs["tie"]) / mass, mass


class PairwiseJudge:
    """Compares candidate answers with baseline answers through a `Judge`'s backend.

    >>> pj = PairwiseJudge(make_judge("logprob:vllm:default"))
    >>> res = pj.compare([PairItem("q1", query, candidate_answer, baseline_answer)])
    >>> res.win_rate, res.interval, res.outcomes[0].orders
    """

    def __init__(self, judge, *, template: str | Path | None = None, margin: float = 0.1,
                 cache=None):
        self.backend = judge.backend if hasattr(judge, "backend") else judge
        if not isinstance(self.backend, (EngineBackend, ChatBackend)):
            raise JudgeError(f"pairwise: backend {type(self.backend).__name__} is not supported")
        self.template = load_template(template)
        self.margin = margin
        self.cache = cache if cache is not None else getattr(judge, "cache", None)
        import hashlib

        self.version = hashlib.sha256(self.template.encode()).hexdigest()[:12]

    @property
    def id(self) -> str:
        return f"pairwise:{self.backend.id}#m={self.margin:g}"

    def _prompt(self, query: str, first: str, second: str) -> str:
        return (self.template.replace("{query}", query).replace("{first}", first)
                .replace("{second}", second)).rstrip()

    def _fit(self, query: str, first: str, second: str) -> str:
        prompt = self._prompt(query, first, second)
        if not isinstance(self.backend, EngineBackend):
            return prompt
        engine = self.backend.engine
        budget = engine.context_window - 8
        n = engine.count_tokens(prompt)
        if n <= budget:
            return prompt
        overhead = engine.count_tokens(self._prompt(query, TRUNCATED, TRUNCATED))
        share = max(budget - overhead, 0) / max(n - overhead, 1) * 0.9
        first = first[: int(len(first) * share)] + TRUNCATED
        second = second[: int(len(second) * share)] + TRUNCATED
        return self._prompt(query, first, second)

    # -- asking ------------------------------------------------------------------------------
    def _ask(self, prompts: list[str]) -> list[tuple[str | None, float | None, str]]:
        """(verdict, P(first preferred) or None, reason) per prompt."""
        b = self.backend
        if isinstance(b, ChatBackend):
            from dspy.utils.exceptions import LMError

            out = []
            for p in prompts:
                try:
                    text = b._ask([("user", p)])
                except LMError as exc:  # transport: a miss for this pair
                    out.append((None, None, f"error: {one_line(exc)[:200]}"))
                    continue
                m = _WORD.search(text or "")
                v = {"a": "A", "b": "B", "tie": "tie"}[m.group(1).casefold()] if m else None
                out.append((v, None, "" if v else f"invalid: {text[:80]!r}"))
            return out
        from icl_search.engines.base import EngineError, SamplingParams

        logprob = b.scoring == "logprob"
        params = SamplingParams(max_tokens=2 if logprob else 3,
                                temperature=0.0 if logprob else b.temperature,
                                repetition_penalty=1.0, logprobs=b.top_k if logprob else None)
        try:
            comps = b.engine.generate(prompts, params)
        except EngineError as exc:
            raise JudgeError(f"pairwise judge {b.id}: {one_line(exc)}") from None
        out = []
        for c in comps:
            if c.error or c.finish_reason == "error":
                out.append((None, None, f"error: {c.error or 'engine error'}"))
            elif logprob:
                p, _ = read_preference(*(c.logprobs or [])[:2])
                if p is None:
                    out.append((None, None, "no-verdict-token: none of A/B/tie in the top-k"))
                else:
                    v = "A" if p > 0.5 + self.margin else "B" if p < 0.5 - self.margin else "tie"
                    out.append((v, p, ""))
            else:
                m = _WORD.search(c.text or "")
                v = {"a": "A", "b": "B", "tie": "tie"}[m.group(1).casefold()] if m else None
                out.append((v, None, "" if v else f"invalid: {c.text[:40]!r}"))
        return out

    def compare(self, items: Sequence[PairItem], *, progress: bool = False) -> PairwiseResult:
        from icl_search.cache import cache_key

        outcomes: list[PairOutcome | None] = [None] * len(items)
        keys: dict[int, str] = {}
        for i, it in enumerate(items):
            if it.candidate is None or it.baseline is None:
                outcomes[i] = PairOutcome(it.id, "missing", reason="no answer to compare")
            elif it.candidate.strip() == it.baseline.strip():
                outcomes[i] = PairOutcome(it.id, "tie", ("tie", "tie"), 0.5, "identical answers")
            else:
                keys[i] = cache_key("pairwise", self.id, self.version, it.query, it.candidate,
                                    it.baseline)
        found = self.cache.get_many(list(keys.values())) if self.cache is not None and keys \
            else {}
        todo = [i for i, k in keys.items() if k not in found]
        for i, k in keys.items():
            if k in found:
                outcomes[i] = PairOutcome(**{**found[k], "orders": tuple(found[k]["orders"])})
        prompts = []
        for i in todo:
            it = items[i]
            prompts.append(self._fit(it.query, it.candidate, it.baseline))
            prompts.append(self._fit(it.query, it.baseline, it.candidate))
        verdicts = self._ask(prompts) if prompts else []
        fresh = []
        for j, i in enumerate(todo):
            (v1, p1, r1), (v2, p2, r2) = verdicts[2 * j], verdicts[2 * j + 1]
            # order 2 has the candidate as B: flip it into the candidate's frame
            c2 = {"A": "B", "B": "A", "tie": "tie"}.get(v2) if v2 else None
            if v1 is None or c2 is None:
                o = PairOutcome(items[i].id, "missing", (v1, v2), None, r1 or r2)
            else:
                outcome = ("win" if v1 == "A" and c2 == "A" else
                           "loss" if v1 == "B" and c2 == "B" else "tie")
                p = (p1 + (1 - p2)) / 2 if p1 is not None and p2 is not None else None
                o = PairOutcome(items[i].id, outcome, (v1, v2), p)
                fresh.append((keys[i], o.to_dict()))
            outcomes[i] = o
        if self.cache is not None and fresh:
            self.cache.put_many(fresh)
        return PairwiseResult([o for o in outcomes if o is not None], self.id)
