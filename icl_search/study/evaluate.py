"""Evaluating trial contexts: render every (trial, query) prompt, generate them in one batched
engine call, judge them in one batched judge call, and keep the per-query artifacts.

Every judge an evaluator uses is a constructor input (`judge`, the optional cheap `screen`,
the `feedback` sources); which one scores a call is an argument of `evaluate`, so nothing
outside the evaluator swaps its attributes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icl_search.engines.base import Engine, SamplingParams
from icl_search.evalset import Query
from icl_search.generation import Job, Timing, generate_fitted
from icl_search.hygiene import Hygiene, HygieneCounts, judge_floor
from icl_search.judge import ItemJudgement, Judge, JudgeItem, JudgeResult
from icl_search.pool import Example, Pool
from icl_search.prompt import Budget, Template
from icl_search.study.space import TrialSpec

#: An `ItemJudgement.detail` key: the score is the judge's floor, set for failed hygiene.
FLOORED = "hygiene_floor"


@dataclass
class QueryRecord:
    """One query of one trial: what was asked, what came back, how it was judged."""

    query_id: str
    query: str
    category: str
    prompt: str | None
    examples: list[str]
    dropped: list[str]
    context_tokens: int
    answer: str | None
    finish_reason: str
    completion_tokens: int
    error: str | None
    judgement: ItemJudgement | None = None
    feedback: dict[str, Any] | None = None  # source -> detail (icl_search.feedback)
    feedback_value: float | None = None  # the sources' weighted value, when there are some
    hygiene: Hygiene | None = None  # what cleaning cut and what is still wrong

    @property
    def objective(self) -> float | None:
        """The per-query value the pruner sees: feedback-weighted when configured."""
        if self.feedback is not None:
            return self.feedback_value
        return self.judgement.overall if self.judgement else None

    def to_dict(self) -> dict[str, Any]:
        j = self.judgement
        return {
            "query_id": self.query_id, "query": self.query, "category": self.category,
            "prompt": self.prompt, "examples": self.examples, "dropped": self.dropped,
            "context_tokens": self.context_tokens, "answer": self.answer,
            "finish_reason": self.finish_reason, "completion_tokens": self.completion_tokens,
            "error": self.error,
            "scores": j.scores if j else None, "missing": j.missing if j else None,
            "overall": j.overall if j else None, "length_words": j.length_words if j else None,
            "feedback": self.feedback,
            "hygiene": self.hygiene.to_dict() if self.hygiene else None,
            "floored": bool(j and j.detail.get(FLOORED)),
        }


@dataclass
class TrialEvaluation:
    spec: TrialSpec
    records: list[QueryRecord] = field(default_factory=list)

    def result(self, judge_id: str = "") -> JudgeResult:
        return JudgeResult([r.judgement for r in self.records if r.judgement is not None],
                           judge_id)

    @property
    def hygiene(self) -> HygieneCounts:
        return HygieneCounts.of(r.hygiene for r in self.records)

    @property
    def mean_context_tokens(self) -> float:
        toks = [r.context_tokens for r in self.records if r.prompt is not None]
        return float(np.mean(toks)) if toks else 0.0


@dataclass
class EvalStats:
    prompts: int = 0
    generated: int = 0
    gen_cached: int = 0
    judged: int = 0
    judge_cached: int = 0
    gen_seconds: float = 0.0
    judge_seconds: float = 0.0


@dataclass
class ScreenStats:
    """The cheap screen's judge calls, kept apart from the main judge's counts."""

    screened: int = 0
    screen_cached: int = 0
    screen_seconds: float = 0.0


class Evaluator:
    """Turns `TrialSpec`s into judged answers on an evaluation set.

    Retrieval strategies use the pool's FAISS index; the eval queries are embedded once.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        judge: Judge,
        pool: Pool,
        queries: Sequence[Query],
        systems: dict[str, str],
        params: SamplingParams,
        template: Template | None = None,
        index_dir: Path | None = None,
        embedder: str = "default",
        needs_index: bool = True,
        feedback: Any = None,
        baseline: TrialSpec | None = None,
        screen: Judge | None = None,
        audit: Sequence[Judge] = (),
        hygiene_floor: bool = True,
    ):
        self.engine = engine
        self.judge = judge
        # judges that score only the confirm set (`score_audit`), never a trial of the search
        self.audit = list(audit)
        # an answer that still fails hygiene after cleaning scores every judge's floor
        self.hygiene_floor = hygiene_floor
        # the cheap judge of multi-fidelity screening (icl_search.study.screening), or None
        self.screen = screen
        self.pool = pool
        self.queries = list(queries)
        self.systems = systems
        self.template = template or Template()
        self.params = self.template.sampling(params)
        self.budget = Budget(engine.count_tokens, engine.context_window)
        self.stats = EvalStats()
        self.screen_stats = ScreenStats()
        self._index = None
        self._vectors: np.ndarray | None = None
        self._index_dir = index_dir
        self._embedder = embedder
        self._selectors: dict[Any, Any] = {}
        # Extra feedback sources (icl_search.feedback.Feedback), scored after the judge;
        # pairwise compares against the answers of the `baseline` context.
        self.feedback = feedback
        self.baseline = baseline
        self._baseline_answers: dict[str, str | None] = {}
        if needs_index:
            self._load_index()

    def with_queries(self, queries: Sequence[Query], *, pool: Pool | None = None,
                     systems: dict[str, str] | None = None,
                     audit: Sequence[Judge] | None = None) -> Evaluator:
        """The same engine, judge, template, decoding and index on other queries (the
        confirmation stage's set), without feedback sources; `pool`/`systems` replace this
        evaluator's (a fixed reference context outside the pool; no index then); `audit`
        gives the confirmation its audit judges."""
        return Evaluator(engine=self.engine, judge=self.judge, pool=pool or self.pool,
                         queries=queries, systems=systems or self.systems, params=self.params,
                         template=self.template, index_dir=self._index_dir,
                         embedder=self._embedder,
                         audit=self.audit if audit is None else audit,
                         hygiene_floor=self.hygiene_floor,
                         needs_index=pool is None and self._index is not None)

    # -- retrieval ---------------------------------------------------------------------------
    def _load_index(self):
        if self._index is None:
            from icl_search.index import Embedder, PoolIndex

            directory = self._index_dir or PoolIndex.default_dir(self.pool.path)
            self._index = PoolIndex.load(directory, self.pool, Embedder(
                None if self._embedder == "default" else self._embedder))
            self._vectors = self._index.embed([q.query for q in self.queries])
        return self._index

    def _selector(self, spec: TrialSpec):
        from icl_search.selection import DEFAULT_MMR_LAMBDA, SelectionConfig, Selector

        key = (spec.strategy, spec.k, spec.fixed_ids, spec.mmr_lambda)
        if key not in self._selectors:
            cfg = SelectionConfig(
                strategy=spec.strategy, k=spec.k, fixed_ids=list(spec.fixed_ids),
                mmr_lambda=DEFAULT_MMR_LAMBDA if spec.mmr_lambda is None else spec.mmr_lambda,
            )
            self._selectors[key] = Selector(self._load_index(), cfg)
        return self._selectors[key]

    def examples_for(self, spec: TrialSpec, positions: Sequence[int]) -> list[list[Example]]:
        if spec.k == 0 or spec.strategy == "none":
            return [[] for _ in positions]
        if spec.strategy == "fixed":
            shots = [self.pool[i] for i in spec.fixed_ids]
            return [shots for _ in positions]
        sel = self._selector(spec)
        assert self._vectors is not None
        picked = sel.select_many([self.queries[i].query for i in positions],
                                 vectors=self._vectors[list(positions)])
        return [[s.example for s in row] for row in picked]

    def params_for(self, spec: TrialSpec) -> SamplingParams:
        kw = {}
        if spec.temperature is not None:
            kw["temperature"] = spec.temperature
        if spec.repetition_penalty is not None:
            kw["repetition_penalty"] = spec.repetition_penalty
        return self.params.replace(**kw) if kw else self.params

    # -- evaluation --------------------------------------------------------------------------
    def generate(self, specs: Sequence[TrialSpec], positions: Sequence[int],
                 *, keep_prompts: bool = True) -> list[list[QueryRecord]]:
        """Unjudged records for `positions` (indices into the eval set) of every spec: one
        generation call per distinct decoding setting (usually one for the whole batch)."""
        per_spec: list[list[QueryRecord]] = []
        jobs: dict[SamplingParams, list[tuple[QueryRecord, Job]]] = {}
        for spec in specs:
            system = self.systems[spec.system_name]
            params = self.params_for(spec)
            rows = []
            for pos, exs in zip(positions, self.examples_for(spec, positions)):
                q = self.queries[pos]
                rec = QueryRecord(q.id, q.query, q.category, None, [], [], 0, None, "pending",
                                  0, None)
                jobs.setdefault(params, []).append((rec, Job(system, exs, q.query)))
                rows.append(rec)
            per_spec.append(rows)
        engine_time = Timing()  # engine calls only: fitting and retrieval are not counted
        for params, items in jobs.items():
            done = generate_fitted(self.engine, [j for _, j in items], params, self.template,
                                   budget=self.budget, timing=engine_time)
            for (rec, _), g in zip(items, done, strict=True):
                f, c = g.fit, g.completion
                rec.examples, rec.dropped = [e.id for e in f.kept], [e.id for e in f.dropped]
                rec.context_tokens, rec.error = f.prompt_tokens, f.error
                if c is None:
                    rec.finish_reason = "error"
                    continue
                rec.prompt = f.prompt if keep_prompts else ""
                rec.answer, rec.finish_reason = g.answer, c.finish_reason
                rec.completion_tokens = c.completion_tokens
                rec.hygiene = g.hygiene
                self.stats.prompts += 1
                self.stats.generated += 1
                self.stats.gen_cached += int(c.cached)
        self.stats.gen_seconds += engine_time.engine
        return per_spec

    def evaluate(self, specs: Sequence[TrialSpec], positions: Sequence[int],
                 *, keep_prompts: bool = True, screen: bool = False) -> list[list[QueryRecord]]:
        """Judged records for `positions` of every spec: `generate`, then one judge call.

        `screen=True` judges with the cheap screen instead of the main judge, without the
        feedback sources, counting into `screen_stats` (the generations are cached, so the
        expensive pass that may follow pays for judging only)."""
        if screen and self.screen is None:
            raise ValueError("this evaluator has no screening judge (judge.screen)")
        per_spec = self.generate(specs, positions, keep_prompts=keep_prompts)
        flat = [r for rows in per_spec for r in rows]
        t1 = time.perf_counter()
        result = self._score(self.screen if screen else self.judge, flat)
        for r, j in zip(flat, result.items):
            r.judgement = j
        seconds = time.perf_counter() - t1
        if screen:
            self.screen_stats.screened += len(flat)
            self.screen_stats.screen_cached += result.cache_hits
            self.screen_stats.screen_seconds += seconds
            return per_spec
        self.stats.judged += len(flat)
        self.stats.judge_cached += result.cache_hits
        self.stats.judge_seconds += seconds
        if self.feedback is not None:
            self.feedback.score_records(
                flat, queries={q.id: q for q in self.queries},
                baseline=self.baseline_answers(positions)
                if getattr(self.feedback, "pairwise", None) is not None else None)
            for r in flat:
                r.feedback_value = self.feedback.query_value(r)
        return per_spec

    def _score(self, judge: Judge, records: Sequence[QueryRecord]) -> JudgeResult:
        """`judge`'s verdicts on the records' answers; with `hygiene_floor`, an answer that
        still fails hygiene gets the judge's floor on every aspect (and is not asked)."""
        floor = judge_floor(judge)
        refs = {q.id: q.reference for q in self.queries}  # read by reference-anchored judges
        # a row a judge cannot score without a reference (refsim) stays missing, floored or not;
        # the anchored judge scores it by its reference-free part, so it is floored
        from icl_search.judge.judge import REFERENCE_KINDS

        needs_ref = str(getattr(judge, "id", "")).split(":", 1)[0] in REFERENCE_KINDS
        fails = [self.hygiene_floor and r.hygiene is not None and r.hygiene.fails
                 and not (needs_ref and refs.get(r.query_id) is None) for r in records]
        items = [JudgeItem(f"{i}", r.query, None if bad else r.answer, r.category,
                           refs.get(r.query_id))
                 for i, (r, bad) in enumerate(zip(records, fails))]
        result = judge.score(items)
        for j, bad in zip(result.items, fails):
            if bad:
                j.scores = dict.fromkeys(j.scores, floor)
                j.missing = {}
                j.detail[FLOORED] = True
        return result

    def score_audit(self, records: Sequence[QueryRecord]) -> dict[str, list[float | None]]:
        """Each audit judge's per-record overall score (the floor rule as for the study's
        judge): judge id -> one value per record. Never called by the search."""
        return {a.id: [j.overall for j in self._score(a, records).items] for a in self.audit}

    def baseline_answers(self, positions: Sequence[int]) -> dict[str, str | None]:
        """The baseline context's answers (query id -> answer), generated once per query and
        never judged."""
        if self.baseline is None:
            raise ValueError("pairwise feedback needs the study's baseline context")
        todo = [p for p in positions if self.queries[p].id not in self._baseline_answers]
        if todo:
            (rows,) = self.generate([self.baseline], todo, keep_prompts=False)
            for r in rows:
                self._baseline_answers[r.query_id] = r.answer
        return {self.queries[p].id: self._baseline_answers[self.queries[p].id]
                for p in positions}
