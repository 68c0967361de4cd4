"""Client for a remote OpenAI-compatible `/v1/completions` endpoint (e.g. `vllm serve`)."""

from __future__ import annotations

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
    timeouts, 429 and 5xx are retried `max_retries` times with exponential back-off; after that
    one `EngineError` names the endpoint and the last error.
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
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)
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
    def _request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                r = self._http.request(method, url, **kw)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code < 400:
                    return r.json()
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code != 429 and r.status_code < 500:
                    raise EngineError(f"{url} refused the request: {last}")
            if attempt < self.max_retries:
                time.sleep(min(0.5 * 2**attempt, 8.0))
        raise EngineError(f"{url} unreachable after {self.max_retries + 1} attempts: {last}")

    def _models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/models").get("data", [])

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

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = [c for part in pool.map(run, chunks) for c in part]
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
            "repetition_penalty": params.repetition_penalty,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
        data = self._request("POST", "/completions", json=body)
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(chunk):
            raise EngineError(
                f"{self.base_url}/completions returned {len(choices)} choices for {len(chunk)} prompts"
            )
        usage = data.get("usage") or {}
        out = []
        for prompt, ch in zip(chunk, choices):
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
