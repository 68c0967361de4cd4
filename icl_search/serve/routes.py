"""The route handlers: `/health`, `/v1/models`, `/v1/chat/completions`, `/v1/completions`.
Each reads the one `ServerState` at `request.app.state.icl`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from icl_search.serve.protocol import APIError, ChatRequest, CompletionRequest
from icl_search.serve.state import Prepared, ServerState, icl_headers, usage
from icl_search.serve.stream import StreamCleaner, event_stream

router = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.icl


def _now() -> int:
    return int(time.time())


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    s = _state(request)
    if not s.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        await s.engine.check_health()
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        return JSONResponse({"status": "error", "detail": str(exc)}, status_code=503)
    # `prep`: the prep batcher's batches, requests and largest batch (see `serve.batch`).
    return JSONResponse({"status": "ok", "model": s.name, "bundle_mode": s.bundle.mode,
                         "prep": dict(s.batcher.stats)})


def _model_card(s: ServerState) -> dict[str, Any]:
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "icl-search",
            "root": s.bundle.model, "max_model_len": s.engine.context_window}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(_state(request))]}


@router.get("/v1/models/{model_id:path}")
async def model_info(request: Request, model_id: str) -> dict[str, Any]:
    s = _state(request)
    if model_id != s.name:
        raise APIError(404, f"model {model_id!r} does not exist; this server serves "
                       f"{s.name!r}", param="model", code="model_not_found")
    return _model_card(s)


@router.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    s = _state(request)
    req = await s.body(request, ChatRequest)
    if req.logprobs or req.top_logprobs:
        raise APIError(400, "logprobs: not supported by this server", param="logprobs")
    mode = s.system_mode_for(req.icl_system_mode)
    max_tokens = s.max_tokens(req.max_completion_tokens
                              if req.max_completion_tokens is not None else req.max_tokens)
    params, extra = s.params(req, max_tokens, rendered=True)
    prepared = await s.prepare(s.conversation(req.messages), max_tokens, mode)
    rid, ts, name = f"chatcmpl-{uuid.uuid4().hex}", _now(), s.name

    if not req.stream:
        text, last = await s.complete(prepared.ids, params, extra, clean=True)
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": ts, "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": last.finish_reason}],
            "usage": usage(last.prompt_tokens, last.completion_tokens),
        }, headers=icl_headers(prepared))

    include_usage = bool((req.stream_options or {}).get("include_usage"))
    first, rest = await s.generation(prepared.ids, params, extra, stream=True)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": rid, "object": "chat.completion.chunk", "created": ts, "model": name,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        cleaner = StreamCleaner(s.bundle.template)
        yield chunk({"role": "assistant", "content": ""})
        last = first
        piece = cleaner.feed(first.text)
        if piece:
            yield chunk({"content": piece})
        async for d in rest:
            last = d
            piece = cleaner.feed(d.text)
            if piece:
                yield chunk({"content": piece})
        piece = cleaner.finish()
        if piece:
            yield chunk({"content": piece})
        yield chunk({}, last.finish_reason)
        if include_usage:
            yield {"id": rid, "object": "chat.completion.chunk", "created": ts,
                   "model": name, "choices": [],
                   "usage": usage(last.prompt_tokens, last.completion_tokens)}

    return event_stream(chunks(), icl_headers(prepared))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    s = _state(request)
    req = await s.body(request, CompletionRequest)
    for field, bad in (("logprobs", req.logprobs is not None),
                       ("suffix", req.suffix is not None),
                       ("best_of", req.best_of not in (None, 1))):
        if bad:
            raise APIError(400, f"{field}: not supported by this server", param=field)
    if req.raw and s.lock_context:
        raise s.locked("a raw prompt (bypassing the bundle's context)", "raw")
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise APIError(400, "prompt: expected a string or a non-empty list of strings",
                       param="prompt")
    if req.stream and len(prompts) > 1:
        raise APIError(400, "prompt: streaming takes one prompt per request", param="prompt")
    max_tokens = s.max_tokens(req.max_tokens)
    params, extra = s.params(req, max_tokens, rendered=not req.raw)
    prepared: list[Prepared | None] = [None] * len(prompts)
    texts: list[str] = list(prompts)
    ids: list[list[int]] = []
    window = s.engine.context_window
    if req.raw:
        for i, p in enumerate(prompts):
            ids.append(await s.tokens(p))
            if len(ids[-1]) + max_tokens > window:
                raise APIError(400, f"prompt{'' if len(prompts) == 1 else f'[{i}]'}: "
                               f"{len(ids[-1])} prompt tokens + max_tokens={max_tokens} exceed "
                               f"the context window of {window} tokens",
                               param="prompt", code="context_length_exceeded")
    else:
        if not all(p.strip() for p in prompts):
            raise APIError(400, "prompt: the query is empty", param="prompt")
        # Submitted together, the prompts of one request are prepared in one batch.
        done = await asyncio.gather(*(s.prepare(p, max_tokens, s.system_mode) for p in prompts))
        prepared, texts, ids = list(done), [r.prompt for r in done], [r.ids for r in done]
    rid, ts, name = f"cmpl-{uuid.uuid4().hex}", _now(), s.name

    if not req.stream:
        results = await asyncio.gather(*(s.complete(t, params, extra, clean=not req.raw)
                                         for t in ids))
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": ts, "model": name,
            "choices": [{"index": i, "text": (texts[i] if req.echo else "") + text,
                         "logprobs": None, "finish_reason": last.finish_reason}
                        for i, (text, last) in enumerate(results)],
            "usage": usage(sum(last.prompt_tokens for _, last in results),
                           sum(last.completion_tokens for _, last in results)),
        }, headers=icl_headers(prepared[0]))

    include_usage = bool((req.stream_options or {}).get("include_usage"))
    first, rest = await s.generation(ids[0], params, extra, stream=True)

    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {"id": rid, "object": "text_completion", "created": ts, "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish}]}

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        cleaner = None if req.raw else StreamCleaner(s.bundle.template)
        if req.echo:
            yield chunk(texts[0])
        last = first
        piece = first.text if cleaner is None else cleaner.feed(first.text)
        if piece:
            yield chunk(piece)
        async for d in rest:
            last = d
            piece = d.text if cleaner is None else cleaner.feed(d.text)
            if piece:
                yield chunk(piece)
        tail = "" if cleaner is None else cleaner.finish()
        yield chunk(tail, last.finish_reason)
        if include_usage:
            yield {"id": rid, "object": "text_completion", "created": ts, "model": name,
                   "choices": [], "usage": usage(last.prompt_tokens, last.completion_tokens)}

    return event_stream(chunks(), icl_headers(prepared[0]))
