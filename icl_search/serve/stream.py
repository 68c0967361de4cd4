"""Streaming: `Template.clean` applied to text that arrives in pieces, and server-sent events.

While streaming, text that could still turn out to be the start of a stop string or the
closing fence is held back until it is decided, so the streamed pieces join to exactly the
non-streamed answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from icl_search.prompt import Template
from icl_search.serve.protocol import APIError

log = logging.getLogger("icl_search.serve")


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
        return self.template.settled(self.raw)


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def event_stream(chunks: AsyncIterator[dict[str, Any]],
                 headers: dict[str, str] | None = None) -> StreamingResponse:
    """Chunks as server-sent events ending in `[DONE]`; an error after the first chunk is
    reported in-band (the status line has gone) and the server keeps serving."""
    async def events() -> AsyncIterator[str]:
        try:
            async for c in chunks:
                yield sse(c)
        except APIError as exc:
            yield sse(exc.body())
        except Exception as exc:  # the stream has started: report in-band, keep serving
            log.exception("error while streaming")
            yield sse(APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                               type="server_error").body())
        yield "data: [DONE]\n\n"
    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", **(headers or {})})


__all__ = ["StreamCleaner", "event_stream", "sse"]
