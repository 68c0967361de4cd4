"""Text-generation backends behind one small interface, picked by one string.

Specs: `vllm:default` or `vllm:/path/to/hf-model` (in-process vLLM), `openai:http://host:port/v1`
or `openai:http://host:port/v1#model-name` (any OpenAI-compatible `/v1/completions` server).
A bare model name or path means `vllm:`.
"""

from __future__ import annotations

from typing import Any

from icl_search.engines.base import Completion, Engine, EngineError, EngineStats, SamplingParams

__all__ = [
    "CachedEngine",
    "Completion",
    "Engine",
    "EngineError",
    "EngineStats",
    "SamplingParams",
    "make_engine",
    "parse_spec",
]


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """`spec` -> (kind, target, model)."""
    kind, sep, rest = spec.partition(":")
    if kind in ("http", "https"):  # a bare URL
        return "openai", spec, None
    if not sep or kind not in ("vllm", "openai"):
        return "vllm", spec, None
    if kind == "openai":
        url, _, model = rest.partition("#")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"engine spec {spec!r}: expected openai:http(s)://host:port/v1[#model]")
        return "openai", url, model or None
    return "vllm", rest or "default", None


def make_engine(spec: str, **opts: Any) -> Engine:
    """The engine a spec names: `vllm:NAME_OR_PATH` (in-process vLLM; `default`, a model
    folder or a cached Hugging Face id) or `openai:http://host:port/v1[#model]`.
    `engine_args` (vLLM only): more vLLM engine arguments, checked against `EngineArgs`.

    >>> engine = make_engine("vllm:default", max_model_len=2048)
    >>> [c.text for c in engine.generate([bundle.render("What is 2+2?")],
    ...                                  SamplingParams(max_tokens=16))]
    """
    kind, target, model = parse_spec(spec)
    if kind == "openai":
        from icl_search.engines.openai import OpenAIEngine

        allowed = {"api_key", "timeout", "max_retries", "batch_size", "concurrency", "tokenizer",
                   "context_window"}
        return OpenAIEngine(target, model, **{k: v for k, v in opts.items() if k in allowed})
    from icl_search.engines.vllm import VLLMEngine, check_engine_args

    allowed = {"max_model_len", "kv_cache_memory_bytes", "enable_prefix_caching", "enforce_eager",
               "gpu_memory_utilization", "dtype", "seed"}
    # `[model.engine_args]`: any other vLLM engine argument (tensor_parallel_size, quantization)
    extra = check_engine_args(dict(opts["engine_args"])) if opts.get("engine_args") else {}
    kwargs = {k: v for k, v in opts.items() if k in allowed and v is not None}
    return VLLMEngine(target, **{**extra, **kwargs})


from icl_search.engines.cached import CachedEngine
