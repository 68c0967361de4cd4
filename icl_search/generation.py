"""Turning queries into URIAL answers: budget, render, generate in batches, clean.

`generate_fitted` is the one fit -> generate -> clean primitive: `generate_answers` (the
`generate` command), the study's `Evaluator` and `bootstrap` all go through it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from icl_search.engines.base import Completion, Engine, SamplingParams
from icl_search.hygiene import Hygiene
from icl_search.prompt import Budget, Fit, Template


@dataclass
class Answer:
    id: str
    query: str
    answer: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | error
    examples: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    cached: bool = False
    error: str | None = None
    prompt: str | None = None
    hygiene: Hygiene | None = None  # what cleaning cut, what is still wrong (None: no answer)

    def to_dict(self, with_prompt: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["hygiene"] = self.hygiene.to_dict() if self.hygiene else None
        if not with_prompt:
            d.pop("prompt")
        return d


@dataclass
class Timing:
    total: float = 0.0
    engine: float = 0.0

    @property
    def outside_share(self) -> float:
        return (self.total - self.engine) / self.total if self.total else 0.0


@dataclass
class Job:
    """One prompt to build: a preamble, the examples to fit in front of the query, the query."""

    system: str
    examples: Sequence[Any]
    query: str


@dataclass
class Generated:
    """A job's outcome: how its prompt fitted, the engine's completion and the cleaned answer
    (both None when the prompt could not fit the context window: `fit.error` says why)."""

    fit: Fit
    completion: Completion | None = None
    answer: str | None = None
    hygiene: Hygiene | None = None


def generate_fitted(
    engine: Engine,
    jobs: Sequence[Job],
    params: SamplingParams,
    template: Template,
    *,
    budget: Budget | None = None,
    timing: Timing | None = None,
) -> list[Generated]:
    """Fit every job into the engine's window (examples dropped from the front), generate the
    prompts that fit in one engine call (stop strings: the template's unless `params` has
    some) and clean the answers with the template, noting their hygiene."""
    params = template.sampling(params)
    budget = budget or Budget(engine.count_tokens, engine.context_window)
    out = [Generated(budget.fit(template, j.system, j.examples, j.query, params.max_tokens))
           for j in jobs]
    todo = [g for g in out if g.fit.ok]
    if todo:
        t0 = time.perf_counter()
        completions = engine.generate([g.fit.prompt for g in todo], params)
        if timing is not None:
            timing.engine += time.perf_counter() - t0
        for g, c in zip(todo, completions, strict=True):
            g.completion = c
            g.answer, g.hygiene = template.hygiene(c.text, c.finish_reason)
    return out


def _ex_id(e: Any, i: int) -> str:
    return str(getattr(e, "id", f"ex{i}"))


def generate_answers(
    engine: Engine,
    queries: Sequence[Any],
    *,
    system: str = "",
    examples: Sequence[Any] | Callable[[Any], Sequence[Any]] = (),
    params: SamplingParams | None = None,
    template: Template | None = None,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    keep_prompts: bool = False,
    timing: Timing | None = None,
) -> list[Answer]:
    """Generate one answer per query (`Query`-like objects with `.id`, `.query`).

    `examples` is a fixed list, or a function query -> examples (per-query retrieval).
    A query whose prompt cannot fit the context window gets `finish_reason="error"` and a
    reason; the others go on.
    """
    template = template or Template()
    params = params or SamplingParams()
    budget = Budget(engine.count_tokens, engine.context_window)
    t_start = time.perf_counter()
    engine_time = Timing()
    answers: list[Answer] = []
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        jobs = [Job(system, examples(q) if callable(examples) else examples, q.query)
                for q in batch]
        for q, g in zip(batch, generate_fitted(engine, jobs, params, template, budget=budget,
                                               timing=engine_time)):
            f, c = g.fit, g.completion
            if c is None:
                answers.append(Answer(q.id, q.query, None, f.prompt_tokens, 0, "error",
                                      error=f.error))
                continue
            answers.append(Answer(
                q.id, q.query, g.answer, f.prompt_tokens, c.completion_tokens,
                c.finish_reason, [_ex_id(e, len(f.dropped) + i) for i, e in enumerate(f.kept)],
                [_ex_id(e, i) for i, e in enumerate(f.dropped)], c.cached, c.error,
                f.prompt if keep_prompts else None, g.hygiene,
            ))
        if progress:
            progress(len(batch))
    if timing is not None:
        timing.total += time.perf_counter() - t_start
        timing.engine += engine_time.engine
    return answers
