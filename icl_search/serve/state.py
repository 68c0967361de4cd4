"""The server's one state object: the bundle, the engine and the serving policy, and the
request-level work every route shares (reading a body, decoding parameters, the prompt,
generation under the concurrency cap).

Preparing a prompt (embedding the query, searching the index, budgeting and tokenising) is CPU
work done off the event loop, in one prep thread, through a `MicroBatcher`: the queries of
requests that arrive together are embedded in one encode call and searched in one batch. The
prompt is tokenised once, while it is budgeted, and those token ids go to vLLM: the engine
never tokenises it again on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from icl_search.bundle import (
    SYSTEM_MODES,
    Bundle,
    BundleError,
    ContextWindowError,
    Rendered,
    SystemMode,
)
from icl_search.engines.async_vllm import Delta, RequestError
from icl_search.engines.base import SamplingParams
from icl_search.prompt import Budget
from icl_search.serve.batch import MicroBatcher
from icl_search.serve.chat import Conversation, ConversationError
from icl_search.serve.protocol import APIError, Common, R, ServingEngine, validation_error

#: The 403 a locked context answers to a request that would replace or bypass it.
LOCKED = "context_locked"


@dataclass
class Prepared:
    """A request's prompt (`rendered`) and its token ids, as vLLM gets them."""

    rendered: Rendered
    ids: list[int]

    @property
    def prompt(self) -> str:
        return self.rendered.prompt


#: One job of the prep batcher: the conversation, max_tokens and the system mode.
_Job = tuple[Conversation, int, SystemMode]


class ServerState:
    """What `create_app` serves: one per app, at `app.state.icl`.

    `lock_context` (the server's `--lock-context`, or the bundle's `lock_context` field)
    forbids a request to replace the preamble (`"icl_system_mode": "replace"`) or to bypass
    the context (`"raw": true`); a request system message is still appended.
    """

    def __init__(self, bundle: Bundle, engine: ServingEngine, *, name: str,
                 api_key: str | None, system_mode: SystemMode,
                 max_concurrency: int | None, lock_context: bool):
        if system_mode not in SYSTEM_MODES:
            raise ValueError(f"system_mode: {system_mode!r} is not one of "
                             f"{', '.join(SYSTEM_MODES)}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency: expected an integer >= 1, got {max_concurrency}")
        if lock_context and system_mode == "replace":
            raise ValueError("system_mode='replace' contradicts a locked context: a locked "
                             "bundle's preamble is never replaced")
        self.bundle, self.engine, self.name = bundle, engine, name
        self.api_key, self.system_mode = api_key, system_mode
        self.max_concurrency, self.lock_context = max_concurrency, lock_context
        self.created = int(time.time())
        self.ready = False
        self.budget: Budget | None = None
        self.sem: asyncio.Semaphore | None = None
        # Tokenising and example selection are CPU work that would stall the event loop; one
        # worker thread keeps the (not thread-safe) fast tokenizer and the embedder serialised.
        self.prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icl-prep")
        self.batcher: MicroBatcher[_Job, Prepared] = MicroBatcher(self._prepare_batch,
                                                                  self.prep_pool)
        # The text last tokenised and its ids (prep thread only): the budget's final count of
        # a prompt is that prompt's tokenisation, kept for vLLM.
        self._last_ids: tuple[str, list[int]] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.engine.start()
        self.budget = Budget(lambda text: len(self._encode(text)), self.engine.context_window)
        self.sem = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
        if self.bundle.mode == "retrieval":
            # Load pool, embedder and index now: a bad bundle fails at start, not per request.
            # The embedder is warmed too (its onnx export, if due): no request pays for it.
            await asyncio.get_running_loop().run_in_executor(
                self.prep_pool, lambda: self.bundle.selector().index.embedder.warm())
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        self.engine.shutdown()
        self.prep_pool.shutdown(wait=False)

    # -- requests --------------------------------------------------------------------------
    async def body(self, request: Request, model: type[R]) -> R:
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
            raise validation_error(exc) from None
        if req.model is not None and req.model != self.name:
            raise APIError(404, f"model {req.model!r} does not exist; this server serves "
                           f"{self.name!r}", param="model", code="model_not_found")
        if req.n != 1:
            raise APIError(400, "n: only n=1 is supported", param="n")
        return req

    def locked(self, what: str, param: str) -> APIError:
        return APIError(403, f"{param}: {what} is not allowed: this server's context is "
                        "locked (the bundle's lock_context, or serve --lock-context)",
                        type="permission_error", param=param, code=LOCKED)

    def system_mode_for(self, requested: SystemMode | None) -> SystemMode:
        if requested == "replace" and self.lock_context:
            raise self.locked("replacing the preamble", "icl_system_mode")
        return requested or self.system_mode

    def max_tokens(self, value: int | None) -> int:
        window = self.engine.context_window
        n = self.bundle.sampling.max_tokens if value is None else value
        if value is not None and value >= window:
            raise APIError(400, f"max_tokens: {value} is out of range: the context window is "
                           f"{window} tokens, and the prompt needs some of them",
                           param="max_tokens")
        # The bundle's default may not fit a smaller window chosen at serve time (--max-model-len):
        # then half the window, leaving the other half for the prompt.
        return min(n, max(1, window // 2)) if value is None and n >= window else n

    def params(self, req: Common, max_tokens: int, *, rendered: bool
               ) -> tuple[SamplingParams, dict[str, Any]]:
        """The bundle's decoding with the request's overrides. A raw completion stops only
        where the request says: the bundle's stop strings belong to its template."""
        base = self.bundle.sampling
        stops = list(base.stop) + list(self.bundle.template.stop) if rendered else []
        if req.stop is not None:
            stops += [req.stop] if isinstance(req.stop, str) else list(req.stop)
        if req.min_tokens is not None and req.min_tokens > max_tokens:
            raise APIError(400, f"min_tokens: {req.min_tokens} is more than max_tokens="
                           f"{max_tokens}", param="min_tokens")
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

    # -- prompts (prep thread) ---------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        ids = self.engine.encode(text)
        self._last_ids = (text, ids)
        return ids

    def _ids(self, prompt: str) -> list[int]:
        last = self._last_ids
        return last[1] if last is not None and last[0] == prompt else self._encode(prompt)

    def _prepare_batch(self, jobs: list[_Job]) -> list[Prepared | BaseException]:
        """One batch of requests: every query embedded in one call and searched in one batch
        (retrieval bundles), then each prompt budgeted, rendered and tokenised."""
        n = len(jobs)
        selected: Sequence[Any] = [None] * n
        if self.bundle.mode == "retrieval":
            try:
                selected = self.bundle.selector().select_many([conv.query for conv, _, _ in jobs])
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                return [exc] * n
        out: list[Prepared | BaseException] = []
        for (conv, max_tokens, mode), sel in zip(jobs, selected):
            try:
                r = conv.prepare(self.bundle, budget=self.budget, max_tokens=max_tokens,
                                 system_mode=mode, selected=sel)
                out.append(Prepared(r, self._ids(r.prompt)))
            except Exception as exc:  # noqa: BLE001 - this request's error, raised to it
                out.append(exc)
        return out

    async def prepare(self, request: str | Conversation, max_tokens: int,
                      mode: SystemMode) -> Prepared:
        conv = Conversation([], [], request) if isinstance(request, str) else request
        try:
            return await self.batcher.submit((conv, max_tokens, mode))
        except ContextWindowError as exc:
            raise APIError(400, str(exc), param="prompt" if isinstance(request, str)
                           else "messages", code="context_length_exceeded") from None
        except BundleError as exc:
            raise APIError(500, str(exc), type="server_error") from None

    @staticmethod
    def conversation(messages: Any) -> Conversation:
        try:
            return Conversation.from_messages(messages)
        except ConversationError as exc:
            raise APIError(400, str(exc), param=exc.param) from None

    async def tokens(self, text: str) -> list[int]:
        """A raw prompt's token ids (in the prep thread)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.prep_pool, self.engine.encode, text)

    # -- generation ------------------------------------------------------------------------
    async def _run(self, prompt: Sequence[int], params: SamplingParams, extra: dict[str, Any],
                   stream: bool) -> AsyncIterator[Delta]:
        sem = self.sem
        if sem is not None:
            await sem.acquire()
        try:
            async for d in self.engine.generate(prompt, params, stream=stream, **extra):
                yield d
        except RequestError as exc:  # vLLM refused the request: the client's mistake
            raise APIError(400, str(exc), param=exc.param) from None
        finally:
            if sem is not None:
                sem.release()

    async def generation(self, prompt: Sequence[int], params: SamplingParams,
                         extra: dict[str, Any], *, stream: bool
                         ) -> tuple[Delta, AsyncIterator[Delta]]:
        """The first delta and the rest, for a prompt's token ids. Waiting for the first one
        before a response starts turns every refusal by vLLM into a 400, never a broken
        stream or a 500."""
        it = self._run(prompt, params, extra, stream)
        first = await anext(it)
        return first, it

    async def complete(self, prompt: Sequence[int], params: SamplingParams,
                       extra: dict[str, Any], clean: bool) -> tuple[str, Delta]:
        first, rest = await self.generation(prompt, params, extra, stream=False)
        text, last = first.text, first
        async for d in rest:
            text += d.text
            last = d
        return (self.bundle.template.clean(text) if clean else text), last


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def icl_headers(p: Prepared | None) -> dict[str, str]:
    if p is None:
        return {}
    r = p.rendered
    # Which examples the answer was conditioned on, for debugging a bad answer.
    return {"X-ICL-Examples": ",".join(getattr(e, "id", "?") for e in r.examples)[:4000]}


__all__ = ["LOCKED", "Prepared", "ServerState", "icl_headers", "usage"]
