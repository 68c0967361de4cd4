"""`icl-search serve`: put a base model behind an OpenAI-compatible endpoint using a bundle."""

from __future__ import annotations

import ipaddress
import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from icl_search.cli import app
from icl_search.cli import fail as _fail

if TYPE_CHECKING:
    from icl_search.engines.async_vllm import AsyncVLLMEngine

_err = Console(stderr=True)


class SystemModeName(StrEnum):
    append = "append"
    replace = "replace"


def _note(msg: str) -> None:
    _err.print(escape(msg), highlight=False, soft_wrap=True)


#: Engine arguments with their own flag here: `--engine-arg` points at the flag.
_OWN_FLAGS = {"model": "--model", "max_model_len": "--max-model-len",
              "kv_cache_memory_bytes": "--kv-cache-memory-bytes",
              "gpu_memory_utilization": "--gpu-memory-utilization",
              "enforce_eager": "--enforce-eager", "served_model_name": "--served-model-name"}


def parse_engine_args(items: list[str]) -> dict[str, Any]:
    """`--engine-arg NAME=VALUE` items -> vLLM engine arguments, checked against vLLM's
    `EngineArgs` (the `[model.engine_args]` table of a study config, as flags). A value is
    read as JSON (16, 0.5, true, ["a"]) and otherwise kept as a string (fp8)."""
    from icl_search.engines.base import EngineError
    from icl_search.engines.vllm import check_engine_args

    args: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().removeprefix("--").replace("-", "_")
        if not sep or not name:
            _fail(f"--engine-arg {item!r}: expected NAME=VALUE, e.g. --engine-arg "
                  "max_num_seqs=16")
        if name in _OWN_FLAGS:
            _fail(f"--engine-arg {name}: set it with {_OWN_FLAGS[name]} instead")
        try:
            args[name] = json.loads(raw)
        except json.JSONDecodeError:
            args[name] = raw
    try:
        return check_engine_args(args, where="--engine-arg")
    except EngineError as exc:
        _fail(str(exc).replace("--engine-arg.", "--engine-arg ", 1))


def serve_engine(target: str, *, max_model_len: int | None = None,
                 kv_cache_memory_bytes: int | None = None,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool | None = None,
                 engine_args: dict[str, Any] | None = None) -> AsyncVLLMEngine:
    """The (not yet started) engine `serve` runs: its flags over this host's defaults, then
    the `--engine-arg`s."""
    from icl_search.engines.async_vllm import AsyncVLLMEngine

    own = {"gpu_memory_utilization": gpu_memory_utilization, "enforce_eager": enforce_eager}
    return AsyncVLLMEngine(target, max_model_len=max_model_len,
                           kv_cache_memory_bytes=kv_cache_memory_bytes,
                           **{k: v for k, v in own.items() if v is not None},
                           **(engine_args or {}))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("serve")
def serve_cmd(
    bundle_path: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle .json file.")],
    model: Annotated[str | None, typer.Option(
        "--model", help="Model folder or name (default: the bundle's model).")] = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535,
                                      help="Port to listen on.")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="ICL_SEARCH_API_KEY",
        help="Require 'Authorization: Bearer KEY' on /v1/ routes (or set ICL_SEARCH_API_KEY).")
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(
        "--max-model-len", min=16, help="Context window (default: the model's).")] = None,
    served_model_name: Annotated[str | None, typer.Option(
        "--served-model-name", help="Model id clients use (default: the bundle file's stem).")
    ] = None,
    system_mode: Annotated[SystemModeName, typer.Option(
        "--system-mode",
        help="A system message in a request: append it to the bundle's preamble, or replace "
             "the preamble (a request may choose with \"icl_system_mode\").")
    ] = SystemModeName.append,
    lock_context: Annotated[bool, typer.Option(
        "--lock-context",
        help="Refuse (403) requests that replace the bundle's preamble (\"icl_system_mode\": "
             "\"replace\") or bypass it (\"raw\": true). Also set by the bundle's "
             "lock_context field. Default: unlocked, the key holder is trusted.")] = False,
    docs: Annotated[bool | None, typer.Option(
        "--docs/--no-docs",
        help="Serve /docs and /openapi.json (default: only without --api-key; with a key "
             "they need it too).")] = None,
    max_concurrency: Annotated[int | None, typer.Option(
        "--max-concurrency", min=1,
        help="Requests generating at once (default: no cap; vLLM batches them).")] = None,
    kv_cache_memory_bytes: Annotated[int | None, typer.Option(
        "--kv-cache-memory-bytes", min=1,
        help="KV cache size (CPU default 512 MiB; GPU default: vLLM's).")] = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option(
        "--gpu-memory-utilization", min=0.01, max=1.0,
        help="Share of GPU memory vLLM may use (default 0.85; ignored on CPU).")] = None,
    enforce_eager: Annotated[bool | None, typer.Option(
        "--enforce-eager/--no-enforce-eager",
        help="Run the model eagerly, without CUDA graphs (default: eager on CPU, graphs on "
             "GPU).")] = None,
    engine_arg: Annotated[list[str] | None, typer.Option(
        "--engine-arg", metavar="NAME=VALUE",
        help="Any other vLLM engine argument, repeatable, as a study config's "
             "model.engine_args takes them: a `vllm serve` flag with - as _, the value read "
             "as JSON else text (--engine-arg max_num_seqs=16 --engine-arg quantization=fp8).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve a base model with BUNDLE's context behind an OpenAI-compatible API.

    Routes: /v1/chat/completions, /v1/completions, /v1/models and /health, with streaming.

    Chat messages are rendered as the bundle's preamble + examples + earlier turns as
    query/answer blocks + the last user message as the query. Completions treat the prompt as
    the query ("raw": true in the request sends it verbatim).
    """
    from icl_search.bundle import Bundle, BundleError
    from icl_search.models import ModelError, resolve_model

    extra = parse_engine_args(engine_arg or [])
    try:
        bundle = Bundle.load(bundle_path)
    except BundleError as exc:
        _fail(str(exc))
    target = model or bundle.model
    try:
        resolve_model(target)
    except ModelError as exc:
        where = "--model" if model else f"{bundle_path}: model"
        _fail(f"{where}: {exc}" + ("" if model else " (point --model at the model folder)"))
    if bundle.mode == "retrieval":
        try:
            bundle.selector()  # fail now, with the bundle's message, not on the first request
        except BundleError as exc:
            _fail(str(exc))
    if lock_context and system_mode is SystemModeName.replace:
        _fail("--lock-context and --system-mode replace contradict each other: a locked "
              "context's preamble is never replaced")
    if not _is_loopback(host) and not api_key:
        _note(f"warning: serving on {host} without --api-key: anyone who can reach this "
              "address can use the model")

    import uvicorn

    from icl_search.serve import create_app

    engine = serve_engine(target, max_model_len=max_model_len,
                          kv_cache_memory_bytes=kv_cache_memory_bytes,
                          gpu_memory_utilization=gpu_memory_utilization,
                          enforce_eager=enforce_eager, engine_args=extra)
    from icl_search.engines.base import EngineError

    try:  # a bad --engine-arg value (or flag combination) is one message, before uvicorn starts
        engine.check_config()
    except EngineError as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in extra.items())
        _fail(f"{exc} (check the --engine-arg values and engine flags"
              + (f"; --engine-arg given: {given})" if given else ")"))
    if bundle.mode == "retrieval" and engine.device == "cpu":
        # vLLM's engine core runs in its own process on the same cores. torch's OpenMP workers
        # in this one (the query embedder) spin while they wait and took those cores from it:
        # 0.39 of a plain vLLM server's throughput with torch's 2 threads, 1.0 with one
        # (bench/serve_vs_vllm.py, tiny model, 2 cores). One thread also embeds a lone query
        # fastest on a busy host.
        import torch

        torch.set_num_threads(1)
    application = create_app(bundle, engine, model_name=served_model_name, api_key=api_key,
                             system_mode=system_mode.value, max_concurrency=max_concurrency,
                             lock_context=lock_context, docs=docs)
    _note(f"serving {bundle.describe()} as {application.state.model_name!r} on "
          f"http://{host}:{port}/v1 (starting the engine ...)")
    uvicorn.run(application, host=host, port=port, log_level=log_level)
