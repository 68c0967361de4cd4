"""`create_app`: the FastAPI app over one `ServerState`: lifespan, errors, the API key, the
routes of `icl_search.serve.routes`."""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from icl_search.bundle import Bundle, SystemMode
from icl_search.serve.protocol import APIError, ServingEngine
from icl_search.serve.routes import router
from icl_search.serve.state import ServerState
from icl_search.version import __version__

log = logging.getLogger("icl_search.serve")
DOC_PATHS = ("/docs", "/redoc", "/openapi.json")


def create_app(
    bundle: Bundle,
    engine: ServingEngine,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    system_mode: SystemMode = "append",
    max_concurrency: int | None = None,
    lock_context: bool = False,
    docs: bool | None = None,
) -> FastAPI:
    """The FastAPI app serving `bundle` with `engine`.

    The engine is started when the app starts (inside its event loop) and shut down when it
    stops. `model_name` is the id clients ask for (default: the bundle file's stem, else the
    bundle's model); `api_key` makes every `/v1/` route (and the docs, when on) require
    `Authorization: Bearer KEY`; `system_mode` is the default for request system messages
    ("append" or "replace"); `max_concurrency` caps the requests generating at once (None: no
    cap, vLLM batches them). `lock_context` (or the bundle's own `lock_context`) refuses, with
    a 403, requests that replace the preamble or send a raw prompt. `docs` serves `/docs` and
    `/openapi.json`: by default only when there is no API key (the schema describes the API
    to anyone who can reach it).
    """
    name = model_name or (bundle.path.stem if bundle.path is not None else bundle.model)
    state = ServerState(bundle, engine, name=name, api_key=api_key, system_mode=system_mode,
                        max_concurrency=max_concurrency,
                        lock_context=bool(lock_context or bundle.lock_context))
    show_docs = (api_key is None) if docs is None else docs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(title="icl-search", version=__version__, lifespan=lifespan,
                  **({} if show_docs else {"docs_url": None, "redoc_url": None,
                                           "openapi_url": None}))
    app.state.icl = state
    app.state.bundle = bundle
    app.state.model_name = name
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(_Auth, key=api_key)
    app.include_router(router)
    return app


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return APIError(exc.status_code, str(exc.detail),
                    code="not_found" if exc.status_code == 404 else None).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                    type="server_error").response()


def _needs_key(path: str) -> bool:
    return path.startswith("/v1") or path.startswith(DOC_PATHS)


class _Auth:
    """The API key check, as plain ASGI middleware: `app.middleware("http")` would pass every
    streamed chunk through an extra task and memory stream (Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key and scope["type"] == "http" and _needs_key(scope["path"]):
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                     self.key.encode()):
                res = APIError(401, "missing or incorrect API key: send "
                               "'Authorization: Bearer <key>'", code="invalid_api_key").response()
                await res(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["create_app"]
