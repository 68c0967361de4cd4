"""The wire contract: request bodies as pydantic models, errors in OpenAI's shape, and what
the server needs from an engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from icl_search.engines.async_vllm import Delta
from icl_search.engines.base import SamplingParams


class ServingEngine(Protocol):
    """What the server needs from an engine (`AsyncVLLMEngine` implements it)."""

    model: str
    context_window: int

    async def start(self) -> None: ...

    def shutdown(self) -> None: ...

    async def check_health(self) -> None: ...

    def encode(self, text: str) -> list[int]: ...

    def generate(self, prompt: str | Sequence[int], params: SamplingParams, *,
                 stream: bool = False, request_id: str | None = None,
                 **extra: Any) -> AsyncIterator[Delta]: ...


class APIError(Exception):
    """An error answered in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`."""

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


def validation_error(exc: ValidationError) -> APIError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    msg = first["msg"].removeprefix("Value error, ")
    return APIError(400, f"{param}: {msg}" if param else msg, param=param)


class Common(BaseModel):
    """Fields both completion routes take."""

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
    # vLLM sends the seed to its engine core as a 64-bit integer: a larger one was a 500.
    seed: int | None = Field(None, ge=-2**63, le=2**63 - 1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    top_k: int | None = Field(None, ge=-1)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool = False
    user: str | None = None


R = TypeVar("R", bound=Common)


class ChatRequest(Common):
    messages: list[Any]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    icl_system_mode: Literal["append", "replace"] | None = None


class CompletionRequest(Common):
    prompt: str | list[str]
    raw: bool = False
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


__all__ = ["APIError", "ChatRequest", "Common", "CompletionRequest", "ServingEngine",
           "validation_error"]
