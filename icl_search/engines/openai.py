"""Client for a remote OpenAI-compatible `/v1/completions` endpoint (e.g. `vllm serve`), on
the `openai` SDK: its transport, authentication, timeouts and retries (connection errors,
timeouts, 408/409/429/5xx, with exponential back-off). The reply is read from the raw HTTP
response, so a hostile body (HTML with 200, a JSON array, a malformed choice) is still one
clear error or a failed completion rather than an SDK validation error."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from icl_search.engines.base import Completion, EngineError, EngineStats, SamplingParams


class OpenAIEngine:
    """Raw-text completions over HTTP; base models need `/v1/completions`, not chat.

    Requests are sent in chunks of `batch_size` prompts (the completions API takes a list),
    `concurrency` chunks at a time, so the server's own batching stays busy. Connection errors,
    timeouts, 429 and 5xx are retried `max_retries` times with exponential back-off (the SDK's
    own retry loop). When every
    request of a `generate` failed, one `EngineError` names the endpoint and the last error;
    when only some did (or a choice is malformed), those prompts come back as failed
    completions (`finish_reason="error"`, `error` says why) and the others stand.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        batch_size: int = 16,
        concurrency: int = 4,
        tokenizer: str | None = None,
        context_window: int | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        key = api_key or os.environ.get("ICL_SEARCH_API_KEY") or os.environ.get("OPENAI_API_KEY")
        import openai

        # a local server needs no key, but the SDK refuses to start without one
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "EMPTY",
                                     timeout=timeout, max_retries=max_retries)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)  # vLLM's /tokenize only
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.stats = EngineStats()
        info = self._models()
        if model is None:
            if not info:
                raise EngineError(f"{self.base_url}/models lists no model; pass a model name")
            model = info[0]["id"]
        elif info and model not in {m["id"] for m in info}:
            raise EngineError(
                f"model {model!r} is not served at {self.base_url} "
                f"(served: {', '.join(m['id'] for m in info)})"
            )
        self.model = model
        self.id = f"openai:{self.base_url}#{model}"
        served = next((m for m in info if m["id"] == model), {})
        self.context_window = int(context_window or served.get("max_model_len") or 4096)
        self._tokenizer = None
        if tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    # -- HTTP ------------------------------------------------------------------------------
    def _request(self, path: str, call) -> dict[str, Any]:
        """`call()` (an SDK `with_raw_response` method, retried by the SDK) -> the reply's
        JSON object; every failure is one `EngineError` naming the endpoint."""
        import openai

        url = f"{self.base_url}{path}"
        try:
            raw = call()
        except openai.APIStatusError as exc:
            code = exc.status_code
            last = f"HTTP {code}: {exc.response.text[:300]}"
            if code == 429 or code >= 500:  # retried by the SDK, still failing
                raise EngineError(f"{url} unreachable after {self.max_retries + 1} attempts: "
                                  f"{last}") from None
            raise EngineError(f"{url} refused the request: {last}") from None
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            cause = exc.__cause__ or exc
            raise EngineError(f"{url} unreachable after {self.max_retries + 1} attempts: "
                              f"{type(exc).__name__}: {exc} ({cause})") from None
        return _json_object(raw.http_response, url)

    def _models(self) -> list[dict[str, Any]]:
        return self._request("/models", self._client.models.with_raw_response.list).get(
            "data", [])

    # -- Engine protocol -------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text))
        root = self.base_url[: -len("/v1")]
        try:
            r = self._http.post(f"{root}/tokenize", json={"model": self.model, "prompt": text})
            if r.status_code == 200:
                return int(r.json()["count"])
        except httpx.HTTPError:
            pass
        # Neither a local tokenizer nor vLLM's /tokenize: a conservative estimate.
        return len(text) // 3 + 1

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: bool = False
    ) -> list[Completion]:
        prompts = list(prompts)
        if not prompts:
            return []
        chunks = [prompts[i:i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc="generating", unit="prompt")

        def run(chunk: list[str]) -> list[Completion]:
            out = self._complete(chunk, params)
            if bar is not None:
                bar.update(len(chunk))
            return out

        def attempt(chunk: list[str]) -> list[Completion] | EngineError:
            try:
                return run(chunk)
            except EngineError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            parts = list(pool.map(attempt, chunks))
        failed = [p for p in parts if isinstance(p, EngineError)]
        if failed and len(failed) == len(parts):
            raise failed[-1]  # every request failed: the endpoint is down, one message
        # Some requests failed: their prompts are failed completions, the others stand.
        results = [c for chunk, part in zip(chunks, parts, strict=True)
                   for c in (_failed(chunk, part) if isinstance(part, EngineError) else part)]
        if bar is not None:
            bar.close()
        self.stats.calls += 1
        self.stats.prompts += len(prompts)
        self.stats.engine_seconds += time.perf_counter() - t0
        return results

    def _complete(self, chunk: list[str], params: SamplingParams) -> list[Completion]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": chunk, "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p,
            # not in the OpenAI API; vLLM and most compatible servers read it
            "extra_body": {"repetition_penalty": params.repetition_penalty},
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
        data = self._request("/completions",
                             lambda: self._client.completions.with_raw_response.create(**body))
        raw = data.get("choices")
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            raise EngineError(f"{self.base_url}/completions: malformed reply: 'choices' is not "
                              f"a list of objects ({str(raw)[:80]!r})")
        choices = sorted(raw, key=lambda c: c.get("index", 0) if isinstance(
            c.get("index", 0), int) else 0)
        if len(choices) != len(chunk):
            raise EngineError(
                f"{self.base_url}/completions returned {len(choices)} choices for {len(chunk)} prompts"
            )
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        out = []
        for prompt, ch in zip(chunk, choices):
            problem = _malformed(ch)
            if problem:
                out.append(Completion("", 0, 0, "error", error=f"malformed reply: {problem}"))
                continue
            lp = ch.get("logprobs") or {}
            top = lp.get("top_logprobs")
            text = ch.get("text") or ""
            n_out = len(lp.get("tokens") or []) or (
                usage.get("completion_tokens", 0) // max(len(chunk), 1))
            out.append(Completion(
                text=text,
                prompt_tokens=(self.count_tokens(prompt) if self._tokenizer is not None
                               else usage.get("prompt_tokens", 0) // max(len(chunk), 1)),
                completion_tokens=n_out,
                finish_reason=ch.get("finish_reason") or "stop",
                logprobs=[{k: float(v) for k, v in (d or {}).items()} for d in top]
                if top is not None else None,
            ))
        return out


def _json_object(r: httpx.Response, url: str) -> dict[str, Any]:
    """The reply's JSON object; anything else (an HTML page from a proxy, a JSON array) is
    one `EngineError` naming the endpoint."""
    try:
        data = r.json()
    except ValueError:
        raise EngineError(f"{url} answered HTTP {r.status_code} with a body that is not JSON: "
                          f"{r.text[:120]!r}") from None
    if not isinstance(data, dict):
        raise EngineError(f"{url} answered with JSON that is not an object: "
                          f"{json.dumps(data)[:120]}")
    return data


def _malformed(choice: dict[str, Any]) -> str | None:
    """Why one choice cannot be read, or None."""
    if not isinstance(choice.get("text", ""), (str, type(None))):
        return f"'text' is {type(choice['text']).__name__}, not a string"
    lp = choice.get("logprobs")
    if lp is None:
        return None
    if not isinstance(lp, dict):
        return f"'logprobs' is {type(lp).__name__}, not an object"
    top = lp.get("top_logprobs")
    if top is None:
        return None
    if not isinstance(top, list):
        return "'top_logprobs' is not a list"
    for d in top:
        if d is None:
            continue
        if not isinstance(d, dict):
            return "a 'top_logprobs' entry is not an object"
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"log-probability of {k!r} is {v!r}, not a number"
    return None


def _failed(chunk: list[str], exc: EngineError) -> list[Completion]:
    return [Completion("", 0, 0, "error", error=" ".join(str(exc).split())[:300])
            for _ in chunk]
