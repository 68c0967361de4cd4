"""The judge: one spec string -> a backend, the rubrics for it, and the judge cache.

Spec grammar (one string, as in a study config's `judge = "..."`)::

    default                               the embedded default, `anchored:default`: the
                                          reference-anchored judge, prepared once from the
                                          reference data (`icl-search judge prepare`)
    anchored:<dir>                        an anchored judge folder (`icl_search.judge.anchored`:
                                          a learned reward score and cosine(answer, the row's
                                          `reference`), weights fitted on GPT-4-turbo's pairs)
    logprob:<engine spec>                 local completion model; per aspect, the expected score
                                          over the next tokens "1".."5" (top-20 logprobs)
    sample:<engine spec>                  the same prompts, one sampled score token (baseline)
    vllm:<model> | openai:<url>[#model]   shorthand for logprob:vllm:... / logprob:openai:...
    dspy:<provider>/<model>[@<api_base>]  a chat model through dspy.LM, answering the JSON rubric
    distilled:<dir>                       a cross-encoder trained by `icl-search judge distill`
    reward:<dir>                          a reward judge folder; `reward:default` is the old
                                          default (the reward judge alone, no reference)
    refsim[:<embedder>]                   cosine(answer, the row's `reference` answer) with the
                                          project's embedder (packaged MiniLM by default); a row
                                          without a reference is missing, not scored

`<engine spec>` is anything `icl_search.engines.make_engine` accepts (`vllm:default`,
`vllm:/path/to/hf-model`, `openai:http://host:8000/v1`). For `dspy:` the model string is
LiteLLM's (`openai/gpt-4o-mini`, `openai/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1` for a
`vllm serve` endpoint); the API key comes from the `api_key` option, else the environment
variable ICL_SEARCH_JUDGE_API_KEY, else the provider's own variable (OPENAI_API_KEY...).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from icl_search.judge.backends import Backend, ChatBackend, EngineBackend, JudgeError, Verdict
from icl_search.judge.result import (  # noqa: F401  (RESPONSE_FIELDS, to_item: re-exported)
    RESPONSE_FIELDS,
    ItemJudgement,
    JudgeItem,
    JudgeResult,
    count_words,
    to_item,
)
from icl_search.judge.rubric import RubricSet

#: The judge used when none is named: the reference-anchored judge (`icl_search.judge.anchored`:
#: the learned reward score and the answer's similarity to the row's reference answer, combined
#: by a Bradley-Terry fit on GPT-4-turbo's within-query preferences; a row without a reference
#: gets the reference-free part, a safety row the safety head). The defaults before it remain
#: reachable by name: `reward:default` (the reward judge alone) and `logprob:vllm:default`.
DEFAULT_JUDGE = "anchored:default"
#: A judge needs the response plus a few-shot rubric, not a whole study context.
DEFAULT_JUDGE_MAX_MODEL_LEN = 4096
API_KEY_ENV = "ICL_SEARCH_JUDGE_API_KEY"
NO_RESPONSE = "no-response: the item has no response text (failed generation)"
_KINDS = ("default", "logprob", "sample", "vllm", "openai", "dspy", "distilled", "reward",
          "anchored", "refsim")
#: Judge kinds that cannot score a row without a `reference` answer.
REFERENCE_KINDS = ("refsim",)


def parse_judge_spec(spec: str) -> tuple[str, str]:
    """`spec` -> (kind, rest) with kind in logprob | sample | dspy; shorthands expanded."""
    if not isinstance(spec, str) or not spec.strip():
        raise JudgeError(f"judge spec {spec!r} is empty; accepted forms: "
                         f"{', '.join(k + ':...' for k in _KINDS[1:])} or 'default'")
    spec = spec.strip()
    if spec == "default":
        spec = DEFAULT_JUDGE
    kind, sep, rest = spec.partition(":")
    if kind in ("vllm", "openai", "http", "https"):
        return "logprob", spec
    if kind in ("logprob", "sample") and sep and rest:
        return kind, rest
    if kind == "dspy" and sep and "/" in rest.split("@", 1)[0]:
        return "dspy", rest
    if kind in ("distilled", "reward", "anchored") and sep and rest:
        return kind, rest
    if kind == "refsim" and (not sep or rest):
        return kind, rest or "default"
    raise JudgeError(
        f"judge spec {spec!r} is not understood; accepted: 'default', 'logprob:<engine>', "
        "'sample:<engine>', 'vllm:<model>', 'openai:<url>', "
        "'dspy:<provider>/<model>[@<api_base>]' (e.g. 'dspy:openai/gpt-4o-mini'), "
        "'distilled:<dir>', 'reward:<dir>', 'anchored:<dir>', 'refsim[:<embedder>]'")


def needs_reference(spec: str) -> bool:
    """True when the judge `spec` names cannot score a row without a `reference` answer."""
    return parse_judge_spec(spec)[0] in REFERENCE_KINDS


def require_references(spec: str, queries, path, field: str = "") -> None:
    """Before any model loads: a JudgeError naming `path` when the judge `spec` needs
    references and some of `queries` (rows with `.reference`) have none."""
    if not needs_reference(spec):
        return
    lacking = [q for q in queries if getattr(q, "reference", None) is None]
    if lacking:
        raise JudgeError(
            f"{path}: {len(lacking)} of {len(queries)} queries have no 'reference' answer "
            f"(first: id {lacking[0].id!r}), but the judge {spec!r}{f' ({field})' if field else ''} "
            "scores an answer by its "
            "similarity to the row's reference; add references (`icl-search references "
            "build`) or choose a judge that needs none")


class Judge:
    """Scores query/response pairs on the just-eval aspects.

    >>> judge = make_judge("dspy:openai/gpt-4o-mini", cache=Cache())
    >>> result = judge.score([JudgeItem("q1", "What is 2+2?", "4.")])
    >>> result.overall, result.coverage, result.items[0].scores
    """

    def __init__(self, backend: Backend, rubrics: RubricSet | None = None, *, cache=None):
        self.backend = backend
        self.rubrics = rubrics or RubricSet.default(backend.mode)
        for r in (self.rubrics.regular, self.rubrics.safety):
            if r.mode != backend.mode:
                raise JudgeError(f"{r.source}: a {r.mode} rubric cannot drive the "
                                 f"{backend.mode} judge {backend.id}")
        self.cache = cache

    @property
    def id(self) -> str:
        return self.backend.id

    def _key(self, item: JudgeItem) -> str:
        from icl_search.cache import cache_key

        parts = ["judge", self.id, self.rubrics.for_category(item.category).version,
                 item.query, item.response]
        if getattr(self.backend, "uses_reference", False):
            parts.append(item.reference)  # a judge that ignores it keeps its old keys
        return cache_key(*parts)

    def score(self, items: Iterable[JudgeItem | Mapping[str, Any]], *, progress: bool = False,
              min_coverage: float | None = None) -> JudgeResult:
        """Judge every item (cached ones are not asked again); raise `CoverageError` when
        `min_coverage` is given and some aspect was judged on fewer of its items."""
        items = [to_item(x, i) for i, x in enumerate(items)]
        keys = [self._key(it) for it in items]
        found: dict[str, Any] = self.cache.get_many(keys) if self.cache is not None else {}
        todo: dict[str, JudgeItem] = {}
        for it, k in zip(items, keys, strict=True):
            if k not in found and it.response is not None:
                todo.setdefault(k, it)
        fresh: dict[str, Verdict] = {}
        if todo:
            requests = [(it, self.rubrics.for_category(it.category)) for it in todo.values()]
            verdicts = self.backend.judge(requests, progress=progress)
            fresh = dict(zip(todo, verdicts, strict=True))
            if self.cache is not None:
                self.cache.put_many((k, v.to_dict()) for k, v in fresh.items() if v.cacheable)
        judged = []
        for it, k in zip(items, keys, strict=True):
            cached = k in found
            aspects = self.rubrics.for_category(it.category).aspects
            if it.response is None:
                v = Verdict(missing=dict.fromkeys(aspects, NO_RESPONSE))
            else:
                v = Verdict.from_dict(found[k]) if cached else fresh[k]
            judged.append(ItemJudgement(
                id=it.id, category=it.category,
                scores={a: v.scores.get(a) for a in aspects},
                missing={a: v.missing.get(a, "missing: no score") for a in aspects
                         if v.scores.get(a) is None},
                rationales=dict(v.rationales), length_words=count_words(it.response or ""),
                cached=cached, detail=dict(v.detail)))
        result = JudgeResult(judged, self.id, {"regular": self.rubrics.regular.version,
                                               "safety": self.rubrics.safety.version})
        if min_coverage is not None:
            result.require_coverage(min_coverage)
        return result


def make_judge(spec: str = "default", *, engine=None, cache=None,
               rubric: str | Path | None = None, safety_rubric: str | Path | None = None,
               **opts: Any) -> Judge:
    """Build the judge a spec names.

    >>> judge = make_judge("logprob:vllm:default")
    >>> judge.score([JudgeItem("1", "What is 2+2?", "4.", "regular")]).overall

    engine: an already-loaded `Engine` to use for a logprob/sample judge instead of loading
        the spec's model again (the study passes its generator when both name the same model).
    cache: an `icl_search.cache.Cache` (or a path to one); None disables caching.
    rubric / safety_rubric: rubric files replacing the shipped ones (same mode).
    opts: backend options: for engines `max_model_len`, `kv_cache_memory_bytes`, `top_k`,
        `temperature`, `seed`; for dspy `api_key`, `temperature`, `max_tokens`, `timeout`,
        `num_retries` (transport), `max_retries` (repair requests), `concurrency`,
        `structured` (send the answer's JSON schema as `response_format`; default True).
    """
    kind, rest = parse_judge_spec(spec)
    if isinstance(cache, (str, os.PathLike)):
        from icl_search.cache import Cache

        cache = Cache(cache)
    backend: Backend
    if kind == "distilled":
        from icl_search.judge.learned import DistilledBackend

        backend = DistilledBackend(rest, **{k: v for k, v in opts.items()
                                      if k in ("batch_size", "threads")})
    elif kind == "reward":
        from icl_search.judge.learned import RewardBackend

        if rest == "default":
            from icl_search.judge.prepare import prepare_default

            rest = str(prepare_default(opts.get("data"), say=opts.get("say", _say)))
        backend = RewardBackend(rest, **{k: v for k, v in opts.items()
                                   if k in ("batch_size", "threads")})
    elif kind == "anchored":
        from icl_search.judge.learned import AnchoredBackend

        if rest == "default":
            from icl_search.judge.prepare import prepare_anchored

            rest = str(prepare_anchored(opts.get("data"), say=opts.get("say", _say)))
        backend = AnchoredBackend(rest, **{k: v for k, v in opts.items()
                                     if k in ("batch_size", "threads")})
    elif kind == "refsim":
        from icl_search.judge.refsim import RefSimBackend

        backend = RefSimBackend(rest, threads=opts.get("threads"))
    elif kind in ("logprob", "sample"):
        if engine is None:
            from icl_search.engines import make_engine
            from icl_search.engines.base import EngineError

            engine_opts = {k: v for k, v in opts.items()
                           if k not in ("top_k", "temperature", "seed")}
            engine_opts.setdefault("max_model_len", DEFAULT_JUDGE_MAX_MODEL_LEN)
            try:
                engine = make_engine(rest, **engine_opts)
            except (EngineError, ValueError, OSError) as e:
                raise JudgeError(f"judge {spec!r}: cannot load the judge model: {e}") from None
        backend = EngineBackend(engine, scoring=kind,
                                **{k: v for k, v in opts.items()
                                   if k in ("top_k", "temperature", "seed")})
    else:
        model, _, api_base = rest.partition("@")
        chat_opts = {k: v for k, v in opts.items()
                     if k in ("api_key", "temperature", "max_tokens", "timeout", "num_retries",
                              "max_retries", "concurrency", "structured")}
        chat_opts.setdefault("api_key", os.environ.get(API_KEY_ENV)
                             or ("EMPTY" if api_base and _no_provider_key(model) else None))
        backend = ChatBackend(model, api_base or None, **chat_opts)
    return Judge(backend, RubricSet.load(backend.mode, rubric, safety_rubric), cache=cache)


def _say(message: str) -> None:
    # Preparation notices go to stderr: stdout may carry a command's results.
    import sys

    print(message, file=sys.stderr)


def _no_provider_key(model: str) -> bool:
    # A self-hosted `vllm serve` needs no key, but LiteLLM refuses to send none.
    provider = model.split("/", 1)[0].upper()
    return not os.environ.get(f"{provider}_API_KEY")


def score(items: Sequence[JudgeItem | Mapping[str, Any]], spec: str = "default",
          **kwargs: Any) -> JudgeResult:
    """One-shot convenience: `make_judge(spec, **kwargs).score(items)`."""
    return make_judge(spec, **kwargs).score(items)
