"""An engine wrapper that answers repeated (engine, prompt, parameters) from the cache."""

from __future__ import annotations

from collections.abc import Sequence

from icl_search.cache import Cache, cache_key
from icl_search.engines.base import Completion, Engine, SamplingParams


class CachedEngine:
    """Same interface as the wrapped engine; only cache misses reach it.

    Sampled generations (temperature > 0) are cached too: asking the same thing again returns
    the same sample, which is what a study that re-evaluates a configuration wants.
    """

    def __init__(self, engine: Engine, cache: Cache):
        self.engine = engine
        self.cache = cache
        self.id = engine.id
        self.model = engine.model
        self.context_window = engine.context_window

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def key(self, prompt: str, params: SamplingParams) -> str:
        return cache_key("generate", self.engine.id, prompt, params.to_dict())

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: bool = False
    ) -> list[Completion]:
        keys = [self.key(p, params) for p in prompts]
        found = self.cache.get_many(keys)
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        if todo:
            first = {k: p for k, p in zip(keys, prompts)}
            fresh = self.engine.generate([first[k] for k in todo], params, progress=progress)
            self.cache.put_many(
                (k, c.to_dict() | {"cached": False}) for k, c in zip(todo, fresh)
                if c.finish_reason != "error"
            )
            new = dict(zip(todo, fresh))
        else:
            new = {}
        out = []
        for k in keys:
            if k in new:
                out.append(new[k])
            else:
                c = Completion.from_dict(found[k])
                c.cached = True
                out.append(c)
        return out

    def __getattr__(self, name: str):
        return getattr(self.engine, name)
