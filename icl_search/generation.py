"""Turning queries into URIAL answers: budget, render, generate in batches, clean."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from icl_search.engines.base import Engine, SamplingParams
from icl_search.prompt import Budget, Template


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

    def to_dict(self, with_prompt: bool = False) -> dict[str, Any]:
        d = asdict(self)
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
    if not params.stop:
        params = params.replace(stop=template.stop)
    budget = Budget(engine.count_tokens, engine.context_window)
    t_start = time.perf_counter()
    engine_s = 0.0
    answers: list[Answer] = []
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        fits = []
        for q in batch:
            exs = examples(q) if callable(examples) else examples
            fits.append((q, budget.fit(template, system, exs, q.query, params.max_tokens)))
        todo = [f.prompt for _, f in fits if f.ok]
        t0 = time.perf_counter()
        outs = iter(engine.generate(todo, params) if todo else [])
        engine_s += time.perf_counter() - t0
        for q, f in fits:
            if not f.ok:
                answers.append(Answer(q.id, q.query, None, f.prompt_tokens, 0, "error",
                                      error=f.error))
                continue
            c = next(outs)
            answers.append(Answer(
                q.id, q.query, template.clean(c.text), f.prompt_tokens, c.completion_tokens,
                c.finish_reason, [_ex_id(e, len(f.dropped) + i) for i, e in enumerate(f.kept)],
                [_ex_id(e, i) for i, e in enumerate(f.dropped)], c.cached, c.error,
                f.prompt if keep_prompts else None,
            ))
        if progress:
            progress(len(batch))
    if timing is not None:
        timing.total += time.perf_counter() - t_start
        timing.engine += engine_s
    return answers
