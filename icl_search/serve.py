"""The OpenAI-compatible server: a base model behind `/v1/chat/completions`, `/v1/completions`,
`/v1/models` and `/health`, answering in the context of a prompt bundle.

How requests become prompts:

- **Chat**: the bundle's system preamble + the examples selected for the last user message +
  the earlier turns as further query/answer blocks + the last user message as the query.
  A `system` (or `developer`) message in the request is **appended** to the preamble after a
  blank line; with `"icl_system_mode": "replace"` in the request body (or the server's
  `system_mode="replace"`) it replaces the preamble. Examples are dropped (farthest from the
  query first) when the prompt plus `max_tokens` would not fit; earlier turns never are: a
  conversation that cannot fit gets a 400 (`context_length_exceeded`).
- **Completions**: the prompt is the user's query, rendered exactly like a one-turn chat.
  `"raw": true` sends the prompt to the model verbatim (no preamble, examples, template stop
  strings or output cleaning), like a plain `vllm serve`. `"echo": true` returns the prompt
  the model saw (the rendered one, unless raw) before the answer: the way to inspect a prompt.
  Each response carries the ids of the examples used in an `X-ICL-Examples` header.
- The answer is cleaned as the study cleaned it (`Template.clean`: cut at the template's stop
  strings, the answer block's fences removed, trimmed); while streaming, text that could still
  turn out to be the start of a stop string or the closing fence is held back until it is
  decided, so the streamed pieces join to exactly the non-streamed answer.
- Defaults come from the bundle (`max_tokens`, temperature, top_p, repetition penalty, seed);
  request fields override them. vLLM extensions accepted: `repetition_penalty`, `top_k`,
  `min_tokens`, `ignore_eos`.

Concurrency: every request is its own request to vLLM's `AsyncLLM`, whose scheduler batches
all requests in flight (continuous batching); `max_concurrency` caps the requests generating
at once (1 = one at a time, the benchmark's baseline). Errors use OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` and never take the server down.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from icl_search import __version__
from icl_search.bundle import (
    SYSTEM_MODES,
    Bundle,
    BundleError,
    ContextWindowError,
    ConversationError,
    Rendered,
    SystemMode,
)
from icl_search.engines.async_vllm import Delta
from icl_search.engines.base import SamplingParams
from icl_search.prompt import Budget, Template

log = logging.getLogger("icl_search.serve")


class ServingEngine(Protocol):
    """What the server needs from an engine (`AsyncVLLMEngine` implements it)."""

    model: str
    context_window: int

    async def start(self) -> None: ...

    def shutdown(self) -> None: ...

    async def check_health(self) -> None: ...

    def count_tokens(self, text: str) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def generate(self, prompt: str | Sequence[int], params: SamplingParams, *,
                 stream: bool = False, request_id: str | None = None,
                 **extra: Any) -> AsyncIterator[Delta]: ...


# -- errors --------------------------------------------------------------------------------
class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = \
            status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _validation_error(exc: ValidationError) -> APIError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    msg = first["msg"].removeprefix("Value error, ")
    return APIError(400, f"{param}: {msg}" if param else msg, param=param)


# -- request bodies ------------------------------------------------------------------------
class _Common(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do: clients send extras.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    top_k: int | None = Field(None, ge=-1)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool = False
    user: str | None = None


_R = TypeVar("_R", bound=_Common)


class ChatRequest(_Common):
    messages: list[Any]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    icl_system_mode: Literal["append", "replace"] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    raw: bool = False
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


# -- streaming output cleaning ---------------------------------------------------------------
def _partial_suffix(text: str, markers: Sequence[str], *, whole: bool = False) -> int:
    """Length of the longest suffix of `text` that is a prefix of a marker (a proper prefix,
    or with `whole=True` possibly the whole marker)."""
    best = 0
    for m in markers:
        top = min(len(m) if whole else len(m) - 1, len(text))
        for n in range(top, best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


class StreamCleaner:
    """`Template.clean` applied to text that arrives in pieces.

    `feed` returns the part of the cleaned answer that no continuation can change; `finish`
    returns the rest. Joined, the pieces equal `template.clean(whole text)`.
    """

    def __init__(self, template: Template):
        self.template = template
        self.raw = ""
        self.sent = ""

    def _emit(self, target: str) -> str:
        if not target.startswith(self.sent):  # cannot happen for `clean`; never re-send text
            log.warning("stream cleaner: final text diverged from the streamed prefix")
            return ""
        new = target[len(self.sent):]
        self.sent = target
        return new

    def feed(self, text: str) -> str:
        self.raw += text
        return self._emit(self._settled())

    def finish(self) -> str:
        return self._emit(self.template.clean(self.raw))

    def _settled(self) -> str:
        t = self.template
        f = t.fence
        hits = [i for i in (self.raw.find(s) for s in t.stop) if i != -1]
        if hits:
            text = self.raw[:min(hits)]
        else:
            # A tail that may grow into a stop string is undecided.
            text = self.raw[: len(self.raw) - _partial_suffix(self.raw, t.stop)]
        body = text.lstrip()
        head = f + "\n"
        if head.startswith(body):
            return ""  # it may still become the answer block's opening fence
        if body.startswith(head):
            body = body[len(head):].lstrip()
        # Trailing whitespace, and a trailing (partial) fence with the whitespace before it,
        # may be the end of the answer block: clean() would remove them.
        body = body.rstrip()
        body = body[: len(body) - _partial_suffix(body, (f,), whole=True)].rstrip()
        return body


# -- the app -------------------------------------------------------------------------------
def _now() -> int:
    return int(time.time())


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(
    bundle: Bundle,
    engine: ServingEngine,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    system_mode: SystemMode = "append",
    max_concurrency: int | None = None,
) -> FastAPI:
    """The FastAPI app serving `bundle` with `engine`.

    The engine is started when the app starts (inside its event loop) and shut down when it
    stops. `model_name` is the id clients ask for (default: the bundle file's stem, else the
    bundle's model); `api_key` makes every `/v1/` route require `Authorization: Bearer KEY`;
    `system_mode` is the default for request system messages ("append" or "replace");
    `max_concurrency` caps the requests generating at once (None: no cap, vLLM batches them).
    """
    if system_mode not in SYSTEM_MODES:
        raise ValueError(f"system_mode: {system_mode!r} is not one of {', '.join(SYSTEM_MODES)}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency: expected an integer >= 1, got {max_concurrency}")
    name = model_name or (bundle.path.stem if bundle.path is not None else bundle.model)
    # Tokenising and example selection are CPU work that would stall the event loop; one
    # worker thread keeps the (not thread-safe) fast tokenizer and the embedder serialised.
    prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icl-prep")
    state: dict[str, Any] = {"ready": False}
    created = _now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        state["budget"] = Budget(engine.count_tokens, engine.context_window)
        state["sem"] = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        if bundle.mode == "retrieval":
            # Load pool, embedder and index now: a bad bundle fails at start, not per request.
            await asyncio.get_running_loop().run_in_executor(prep_pool, bundle.selector)
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            engine.shutdown()
            prep_pool.shutdown(wait=False)

    app = FastAPI(title="icl-search", version=__version__, lifespan=lifespan)
    app.state.bundle = bundle
    app.state.model_name = name

    # -- plumbing ----------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail),
                        code="not_found" if exc.status_code == 404 else None).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                        type="server_error").response()

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable) -> Response:
        if api_key and request.url.path.startswith("/v1"):
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                     api_key.encode()):
                return APIError(401, "missing or incorrect API key: send "
                                "'Authorization: Bearer <key>'", code="invalid_api_key"
                                ).response()
        return await call_next(request)

    async def body_of(request: Request, model: type[_R]) -> _R:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        try:
            req = model.model_validate(data)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        if req.model is not None and req.model != name:
            raise APIError(404, f"model {req.model!r} does not exist; this server serves "
                           f"{name!r}", param="model", code="model_not_found")
        if req.n != 1:
            raise APIError(400, "n: only n=1 is supported", param="n")
        return req

    def params_for(req: _Common, max_tokens: int, rendered: bool) -> tuple[SamplingParams,
                                                                           dict[str, Any]]:
        """The bundle's decoding with the request's overrides. A raw completion stops only
        where the request says: the bundle's stop strings belong to its template."""
        base = bundle.sampling
        stops = list(base.stop) + list(bundle.template.stop) if rendered else []
        if req.stop is not None:
            stops += [req.stop] if isinstance(req.stop, str) else list(req.stop)
        params = base.replace(
            max_tokens=max_tokens,
            temperature=base.temperature if req.temperature is None else req.temperature,
            top_p=base.top_p if req.top_p is None else req.top_p,
            repetition_penalty=(base.repetition_penalty if req.repetition_penalty is None
                                else req.repetition_penalty),
            seed=base.seed if req.seed is None else req.seed,
            stop=tuple(dict.fromkeys(s for s in stops if s)), logprobs=None,
        )
        extra: dict[str, Any] = {}
        for k in ("presence_penalty", "frequency_penalty", "top_k", "min_tokens"):
            if getattr(req, k) is not None:
                extra[k] = getattr(req, k)
        if req.ignore_eos:
            extra["ignore_eos"] = True
        return params, extra

    def check_max_tokens(value: int | None) -> int:
        window = engine.context_window
        n = bundle.sampling.max_tokens if value is None else value
        if value is not None and value >= window:
            raise APIError(400, f"max_tokens: {value} is out of range: the context window is "
                           f"{window} tokens, and the prompt needs some of them",
                           param="max_tokens")
        # The bundle's default may not fit a smaller window chosen at serve time (--max-model-len):
        # then half the window, leaving the other half for the prompt.
        return min(n, max(1, window // 2)) if value is None and n >= window else n

    async def prepare(request: Any, max_tokens: int, mode: SystemMode) -> Rendered:
        def work() -> Rendered:
            return bundle.prepare(request, budget=state["budget"], max_tokens=max_tokens,
                                  system_mode=mode)
        try:
            return await asyncio.get_running_loop().run_in_executor(prep_pool, work)
        except ConversationError as exc:
            raise APIError(400, str(exc), param=exc.param) from None
        except ContextWindowError as exc:
            raise APIError(400, str(exc), param="messages" if not isinstance(request, str)
                           else "prompt", code="context_length_exceeded") from None
        except BundleError as exc:
            raise APIError(500, str(exc), type="server_error") from None

    async def count(text: str) -> int:
        return await asyncio.get_running_loop().run_in_executor(
            prep_pool, engine.count_tokens, text)

    async def run(prompt: str, params: SamplingParams, extra: dict[str, Any], *,
                  stream: bool) -> AsyncIterator[Delta]:
        sem = state["sem"]
        if sem is not None:
            await sem.acquire()
        try:
            async for d in engine.generate(prompt, params, stream=stream, **extra):
                yield d
        finally:
            if sem is not None:
                sem.release()

    async def complete(prompt: str, params: SamplingParams, extra: dict[str, Any],
                       clean: bool) -> tuple[str, Delta]:
        text, last = "", None
        async for d in run(prompt, params, extra, stream=False):
            text += d.text
            last = d
        assert last is not None
        return (bundle.template.clean(text) if clean else text), last

    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def icl_headers(r: Rendered | None) -> dict[str, str]:
        if r is None:
            return {}
        # Which examples the answer was conditioned on, for debugging a bad answer.
        return {"X-ICL-Examples": ",".join(getattr(e, "id", "?") for e in r.examples)[:4000]}

    def stream_events(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            try:
                async for c in chunks:
                    yield _sse(c)
            except APIError as exc:
                yield _sse(exc.body())
            except Exception as exc:  # the stream has started: report in-band, keep serving
                log.exception("error while streaming")
                yield _sse(APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                                    type="server_error").body())
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # -- routes ------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        if not state["ready"]:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await engine.check_health()
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            return JSONResponse({"status": "error", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "model": name, "bundle_mode": bundle.mode})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": created, "owned_by": "icl-search",
            "root": bundle.model, "max_model_len": engine.context_window,
        }]}

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str) -> dict[str, Any]:
        if model_id != name:
            raise APIError(404, f"model {model_id!r} does not exist; this server serves "
                           f"{name!r}", param="model", code="model_not_found")
        return (await models())["data"][0]

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req: ChatRequest = await body_of(request, ChatRequest)
        if req.logprobs or req.top_logprobs:
            raise APIError(400, "logprobs: not supported by this server", param="logprobs")
        max_tokens = check_max_tokens(req.max_completion_tokens
                                      if req.max_completion_tokens is not None else req.max_tokens)
        rendered = await prepare(req.messages, max_tokens, req.icl_system_mode or system_mode)
        params, extra = params_for(req, max_tokens, rendered=True)
        rid, ts = f"chatcmpl-{uuid.uuid4().hex}", _now()

        if not req.stream:
            text, last = await complete(rendered.prompt, params, extra, clean=True)
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": ts, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": last.finish_reason}],
                "usage": usage(last.prompt_tokens, last.completion_tokens),
            }, headers=icl_headers(rendered))

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": ts, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}]}

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            cleaner = StreamCleaner(bundle.template)
            yield chunk({"role": "assistant", "content": ""})
            last = None
            async for d in run(rendered.prompt, params, extra, stream=True):
                last = d
                piece = cleaner.feed(d.text)
                if piece:
                    yield chunk({"content": piece})
            piece = cleaner.finish()
            if piece:
                yield chunk({"content": piece})
            assert last is not None
            yield chunk({}, last.finish_reason)
            if include_usage:
                yield {"id": rid, "object": "chat.completion.chunk", "created": ts,
                       "model": name, "choices": [],
                       "usage": usage(last.prompt_tokens, last.completion_tokens)}

        response = stream_events(chunks())
        response.headers.update(icl_headers(rendered))
        return response

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req: CompletionRequest = await body_of(request, CompletionRequest)
        for field, bad in (("logprobs", req.logprobs is not None),
                           ("suffix", req.suffix is not None),
                           ("best_of", req.best_of not in (None, 1))):
            if bad:
                raise APIError(400, f"{field}: not supported by this server", param=field)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt: expected a string or a non-empty list of strings",
                           param="prompt")
        if req.stream and len(prompts) > 1:
            raise APIError(400, "prompt: streaming takes one prompt per request", param="prompt")
        max_tokens = check_max_tokens(req.max_tokens)
        params, extra = params_for(req, max_tokens, rendered=not req.raw)
        rendered: list[Rendered | None] = []
        texts: list[str] = []
        for i, p in enumerate(prompts):
            if req.raw:
                n = await count(p)
                if n + max_tokens > engine.context_window:
                    raise APIError(400, f"prompt{'' if len(prompts) == 1 else f'[{i}]'}: "
                                   f"{n} prompt tokens + max_tokens={max_tokens} exceed the "
                                   f"context window of {engine.context_window} tokens",
                                   param="prompt", code="context_length_exceeded")
                rendered.append(None)
                texts.append(p)
            else:
                if not p.strip():
                    raise APIError(400, "prompt: the query is empty", param="prompt")
                r = await prepare(p, max_tokens, system_mode)
                rendered.append(r)
                texts.append(r.prompt)
        rid, ts = f"cmpl-{uuid.uuid4().hex}", _now()

        if not req.stream:
            results = await asyncio.gather(*(complete(t, params, extra, clean=not req.raw)
                                             for t in texts))
            return JSONResponse({
                "id": rid, "object": "text_completion", "created": ts, "model": name,
                "choices": [{"index": i, "text": (texts[i] if req.echo else "") + text,
                             "logprobs": None, "finish_reason": last.finish_reason}
                            for i, (text, last) in enumerate(results)],
                "usage": usage(sum(last.prompt_tokens for _, last in results),
                               sum(last.completion_tokens for _, last in results)),
            }, headers=icl_headers(rendered[0]))

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": ts, "model": name,
                    "choices": [{"index": 0, "text": text, "logprobs": None,
                                 "finish_reason": finish}]}

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            cleaner = None if req.raw else StreamCleaner(bundle.template)
            last = None
            if req.echo:
                yield chunk(texts[0])
            async for d in run(texts[0], params, extra, stream=True):
                last = d
                piece = d.text if cleaner is None else cleaner.feed(d.text)
                if piece:
                    yield chunk(piece)
            assert last is not None
            tail = "" if cleaner is None else cleaner.finish()
            yield chunk(tail, last.finish_reason)
            if include_usage:
                yield {"id": rid, "object": "text_completion", "created": ts, "model": name,
                       "choices": [], "usage": usage(last.prompt_tokens, last.completion_tokens)}

        response = stream_events(chunks())
        response.headers.update(icl_headers(rendered[0]))
        return response

    return app


__all__ = ["APIError", "ChatRequest", "CompletionRequest", "ServingEngine", "StreamCleaner",
           "create_app"]
