"""The one small interface every text-generation backend implements."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from icl_search.errors import IclSearchError


class EngineError(IclSearchError, RuntimeError):
    """A backend could not answer (unreachable endpoint, bad model path, server error)."""


@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters. URIAL's defaults: greedy with repetition penalty 1.1."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # top-k log-probabilities per generated token

    def __post_init__(self) -> None:
        checks = [
            ("max_tokens", isinstance(self.max_tokens, int) and self.max_tokens >= 1,
             "an integer >= 1"),
            ("temperature", _num(self.temperature) and 0.0 <= self.temperature <= 2.0,
             "a number in [0, 2]"),
            ("top_p", _num(self.top_p) and 0.0 < self.top_p <= 1.0, "a number in (0, 1]"),
            ("repetition_penalty", _num(self.repetition_penalty)
             and 0.0 < self.repetition_penalty <= 2.0, "a number in (0, 2]"),
            ("logprobs", self.logprobs is None
             or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
             "null or an integer in [0, 20]"),
        ]
        for name, ok, accepted in checks:
            if not ok:
                raise ValueError(
                    f"sampling parameter {name}={getattr(self, name)!r} is out of range: "
                    f"expected {accepted}"
                )
        object.__setattr__(self, "stop", tuple(self.stop))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    def replace(self, **kw: Any) -> SamplingParams:
        d = asdict(self)
        d.update(kw)
        return SamplingParams(**d)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Completion:
    """One generated continuation.

    `logprobs`, when asked for, holds one dict per generated token: the top-k candidate
    token strings mapped to their log-probabilities.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "error"
    logprobs: list[dict[str, float]] | None = None
    cached: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@runtime_checkable
class Engine(Protocol):
    """Generates continuations of raw text prompts.

    `id` identifies backend + model for caching (e.g. "vllm:/models/gemma-3-270m").
    `context_window` and `count_tokens` let callers budget prompts with the target tokenizer.
    """

    id: str
    model: str
    context_window: int

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: bool = False
    ) -> list[Completion]: ...


@dataclass
class EngineStats:
    calls: int = 0
    prompts: int = 0
    cache_hits: int = 0
    engine_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
