"""The study configuration: one TOML file, validated with pydantic.

Relative paths in the file are resolved against the file's own folder, so a config works from
any working directory. Every error names the field and the accepted values.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from icl_search.errors import IclSearchError
from icl_search.feedback.rules import RuleName
from icl_search.selection import Strategy


class ConfigError(IclSearchError, ValueError):
    """The study config is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    engine: str = Field("vllm:default", description="engine spec: vllm:NAME_OR_PATH or "
                        "openai:http://host:port/v1[#model]")
    max_model_len: int | None = Field(2048, ge=128)
    kv_cache_memory_bytes: int | None = Field(None, ge=2**20)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    api_key_env: str | None = Field(None, description="env var holding the endpoint's API key")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="more vLLM engine arguments (tensor_parallel_size, "
        "dtype, quantization, trust_remote_code, ...), checked against vLLM's EngineArgs")


class JudgeSection(_Strict):
    spec: str = Field("default", description="judge spec, see `icl-search judge --help`")
    min_coverage: float = Field(0.5, ge=0.0, le=1.0)
    rubric: str | None = None
    safety_rubric: str | None = None
    max_model_len: int | None = Field(None, ge=128)
    screen: str | None = Field(None, description="cheap judge (e.g. distilled:DIR) scoring "
                               "every trial; the expensive `spec` judges only the top ones")
    screen_top: float = Field(0.5, gt=0.0, le=1.0, description="fraction of trials (by cheap "
                              "score, among those so far) the expensive judge sees; 1 = audit")
    audit: list[str] = Field(default_factory=list, description="judges that score only the "
                             "confirm set, never a trial: a gain is confirmed only when each of "
                             "them sees it too")
    hygiene_floor: bool = Field(True, description="an answer that still fails hygiene after "
                                "cleaning (unbalanced fences, a role heading) scores the floor "
                                "under every judge; false scores it as it is (the report says)")

    @field_validator("spec", "screen")
    @classmethod
    def _judge_spec(cls, v: str | None) -> str | None:
        from icl_search.judge import JudgeError, parse_judge_spec

        if v is not None:
            try:
                parse_judge_spec(v)
            except JudgeError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("audit")
    @classmethod
    def _audit_specs(cls, v: list[str]) -> list[str]:
        from icl_search.judge import JudgeError, parse_judge_spec

        for i, spec in enumerate(v):
            try:
                parse_judge_spec(spec)
            except JudgeError as exc:
                raise ValueError(f"audit[{i}]: {exc}") from None
        if len(set(v)) != len(v):
            raise ValueError(f"audit names a judge twice: {v}")
        return v


class PoolSection(_Strict):
    path: str
    embedder: str = "default"
    index_dir: str | None = None
    sources: list[str] | None = Field(
        None, min_length=1, description="keep only examples whose `source` is listed "
        "(e.g. [\"bootstrap\"] for on-policy only); default: every source")


class EvalSection(_Strict):
    path: str
    limit: int | None = Field(None, ge=1, description="first N search queries")
    confirm: str | None = Field(None, description="confirm query file: evaluated only by the "
                                "confirmation stage, never by the sampler, pruner or ranking")
    confirm_fraction: float | None = Field(None, gt=0, lt=1, description="instead of a file: "
                                           "this share of `path`, chosen by a hash of query id")
    confirm_limit: int | None = Field(None, ge=1, description="first N confirm queries")
    confirm_top: int = Field(3, ge=1, description="trials (by search score) confirmed")
    confirm_after_run: bool = Field(True, description="confirm when `study run` ends")
    overlap_cosine: float = Field(0.95, gt=0, le=1, description="a confirm query this close "
                                  "(embedder cosine) to a search query is refused")

    @model_validator(mode="after")
    def _one_confirm_set(self) -> EvalSection:
        if self.confirm and self.confirm_fraction:
            raise ValueError("give either confirm (a file) or confirm_fraction, not both")
        return self

    @property
    def has_confirm(self) -> bool:
        return bool(self.confirm or self.confirm_fraction)


class DecodingSection(_Strict):
    max_tokens: int = Field(256, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, gt=0.0, le=2.0)
    seed: int = 0


class BaselineSection(_Strict):
    system: str | None = Field(None, description="preamble file (default: the first one)")
    example_ids: list[str] = Field(default_factory=list, description="the fixed example set")
    urial: str | None = Field(None, description="a URIAL-format prompt file (e.g. URIAL's "
                              "inst_1k.txt): a second baseline the confirm stage reports "
                              "gains against; read where it is, never copied")


class SearchSection(_Strict):
    system_prompts: list[str] = Field(min_length=1)
    k: tuple[int, int] = Field((0, 4), description="[min, max] examples per prompt")
    strategies: list[Strategy] = Field(default_factory=lambda: ["fixed", "knn", "mmr", "hybrid"],
                                       min_length=1)
    fixed_candidates: list[str] | None = Field(
        None, description="pool ids a fixed set may use (default: the whole pool)")
    anchors: int = Field(1, ge=1, description="hybrid: fixed anchors before retrieved ones")
    mmr_lambda: tuple[float, float] = (0.3, 0.9)
    temperature: tuple[float, float] | None = None
    repetition_penalty: tuple[float, float] | None = None
    baseline: BaselineSection = Field(default_factory=BaselineSection)
    enqueue: list[dict[str, Any]] = Field(default_factory=list,
                                          description="extra trials to evaluate first (params)")

    @field_validator("k")
    @classmethod
    def _k(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] <= v[1] <= 16:
            raise ValueError("expected [min, max] with 0 <= min <= max <= 16")
        return v

    @field_validator("mmr_lambda", "temperature", "repetition_penalty")
    @classmethod
    def _range(cls, v):
        if v is not None and not (0 <= v[0] <= v[1] <= 2):
            raise ValueError("expected [low, high] with 0 <= low <= high <= 2")
        return v


class OptunaSection(_Strict):
    n_trials: int = Field(12, ge=1)
    timeout_minutes: float | None = Field(None, gt=0)
    sampler: Literal["tpe", "random"] = "tpe"
    n_startup_trials: int = Field(4, ge=0)
    pruner: Literal["wilcoxon", "halving", "none"] = "wilcoxon"
    wilcoxon_p: float = Field(0.1, gt=0, lt=1)
    storage: str | None = Field(None, description="Optuna storage URL (default: sqlite file "
                                "beside the config)")
    batch_trials: int = Field(4, ge=1, description="trials evaluated together per engine call")
    chunk_size: int = Field(8, ge=1, description="queries per pruning step")
    multi_objective: bool = Field(False, description="maximise score and minimise context tokens")
    heartbeat_seconds: int = Field(30, ge=1)
    max_retry: int = Field(2, ge=0, description="retries of a trial failed by heartbeat")


class RulesFeedback(_Strict):
    weight: float = Field(0.5, ge=0)
    gate: bool = Field(False, description="fail a trial whose pass rate is below min_pass")
    min_pass: float = Field(1.0, ge=0, le=1)
    rules: list[RuleName] | None = None
    min_words: int = Field(3, ge=0)
    max_words: int = Field(600, ge=1)
    max_repeat_share: float = Field(0.35, gt=0, le=1)


class RewardFeedback(_Strict):
    spec: str = Field(description="reward:PATH (transformers) or reward:vllm:PATH")
    weight: float = Field(1.0, ge=0)
    center: float = 0.0
    scale: float = Field(1.0, gt=0)
    trust_remote_code: bool = False
    max_length: int = Field(2048, ge=16)


class PairwiseFeedback(_Strict):
    weight: float = Field(1.0, ge=0)
    judge: str | None = Field(None, description="judge spec (default: the study's judge)")
    template: str | None = Field(None, description="pairwise rubric file")
    margin: float = Field(0.1, ge=0, lt=0.5)


class FeedbackSection(_Strict):
    judge_weight: float = Field(1.0, ge=0, description="weight of the pointwise judge")
    rules: RulesFeedback | None = None
    reward: RewardFeedback | None = None
    pairwise: PairwiseFeedback | None = None


class ProposeSection(_Strict):
    """Proposed contexts (icl_search.propose): rounds of LM-written preambles and restyles."""

    spec: str = Field("self", description="proposer: self (the base model), dspy:<provider>/"
                      "<model>[@api_base], openai:URL or vllm:NAME_OR_PATH")
    rounds: int = Field(1, ge=0, description="rounds after round 0 (the config's own space)")
    per_round: int = Field(4, ge=1, le=32, description="preambles asked for per round")
    restyle: bool = Field(False, description="round 1 also restyles the pool's answers")
    top: int = Field(1, ge=0, description="per new preamble, the best configurations so far "
                     "enqueued with it (the earlier trials are copied into each round, not rerun)")
    max_chars: int = Field(2000, ge=50, description="longest preamble accepted")
    min_recall: float = Field(0.6, ge=0, le=1, description="restyle: key-token recall needed")
    min_cosine: float = Field(0.8, ge=-1, le=1, description="restyle: cosine to the original")
    api_key_env: str | None = Field(None, description="env var holding the proposer's API key")

    @field_validator("spec")
    @classmethod
    def _spec(cls, v: str) -> str:
        from icl_search.proposer_spec import ProposeError, parse_proposer_spec

        try:
            parse_proposer_spec(v)
        except ProposeError as exc:
            raise ValueError(str(exc)) from None
        return v


class StudyConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    model: ModelSection = Field(default_factory=ModelSection)
    judge: JudgeSection = Field(default_factory=JudgeSection)
    pool: PoolSection
    eval: EvalSection
    decoding: DecodingSection = Field(default_factory=DecodingSection)
    search: SearchSection
    optuna: OptunaSection = Field(default_factory=OptunaSection)
    template: dict[str, Any] | None = None
    feedback: FeedbackSection | None = None
    propose: ProposeSection | None = None
    artifacts_dir: str | None = None
    cache: str | None = Field(None, description="cache file (default: the user cache)")

    # not part of the file: where it was read from
    source: Path | None = Field(None, exclude=True)

    @field_validator("template")
    @classmethod
    def _template(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        from icl_search.prompt import Template

        Template.from_dict(v)
        return v

    # -- paths ---------------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def path(self, p: str | None) -> Path | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q)

    @property
    def storage_url(self) -> str:
        if self.optuna.storage:
            return self.optuna.storage
        return f"sqlite:///{(self.base_dir / f'{self.name}.db').resolve()}"

    @property
    def artifacts_path(self) -> Path:
        return self.path(self.artifacts_dir) or (self.base_dir / "artifacts" / self.name)

    @property
    def hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_files(self) -> None:
        """Every file the study reads must exist: fail before any model is loaded."""
        fields = [("pool.path", self.pool.path), ("eval.path", self.eval.path)]
        if self.eval.confirm:
            fields.append(("eval.confirm", self.eval.confirm))
        if self.search.baseline.urial:
            fields.append(("search.baseline.urial", self.search.baseline.urial))
        fields += [(f"search.system_prompts[{i}]", p)
                   for i, p in enumerate(self.search.system_prompts)]
        if self.judge.rubric:
            fields.append(("judge.rubric", self.judge.rubric))
        if self.judge.safety_rubric:
            fields.append(("judge.safety_rubric", self.judge.safety_rubric))
        if self.feedback and self.feedback.pairwise and self.feedback.pairwise.template:
            fields.append(("feedback.pairwise.template", self.feedback.pairwise.template))
        for name, spec in (("judge.spec", self.judge.spec), ("judge.screen", self.judge.screen)):
            if spec and spec.startswith("distilled:"):
                fields.append((name, str(Path(spec.split(":", 1)[1]) / "distilled.json")))
        for name, p in fields:
            if not self.path(p).exists():
                raise ConfigError(f"{self.source}: field '{name}': file not found: {self.path(p)}")
        if self.search.baseline.system and self.search.baseline.system not in \
                self.search.system_prompts:
            raise ConfigError(
                f"{self.source}: field 'search.baseline.system': {self.search.baseline.system!r} "
                f"is not one of search.system_prompts {self.search.system_prompts}")


    def check_engine(self) -> None:
        """The engine's model folder exists, when `model.engine` is plainly a path (`vllm:ORG/NAME`
        may be a Hugging Face id). Not part of loading: a config written for another machine
        (studies/gpu-7b.toml) still loads here; `study validate` and `study run` call it."""
        kind, _, target = self.model.engine.partition(":")
        if kind == "vllm" and target.startswith(("/", "./", "../", "~")):
            folder = Path(target).expanduser().resolve()
            if not folder.exists():
                raise ConfigError(f"{self.source}: field 'model.engine': model folder not "
                                  f"found: {folder}")
        if self.model.engine_args:
            if kind == "openai":
                raise ConfigError(f"{self.source}: field 'model.engine_args': vLLM engine "
                                  "arguments apply to vllm: engines, not to an openai: endpoint")
            from icl_search.engines import EngineError
            from icl_search.engines.vllm import check_engine_args

            try:
                check_engine_args(self.model.engine_args)
            except EngineError as exc:
                name, _, why = str(exc).partition(": ")
                raise ConfigError(f"{self.source}: field '{name}': {why}") from None


def _format_error(source: Path | str, exc: ValidationError) -> str:
    lines = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            model = StudyConfig
            for part in parent:
                if isinstance(part, int) or part not in model.model_fields:
                    continue
                ann = model.model_fields[part].annotation
                # unwrap `X | None` and similar to the model class inside
                inner = [a for a in (typing.get_args(ann) or (ann,))
                         if isinstance(a, type) and issubclass(a, BaseModel)]
                if inner:
                    model = inner[0]
            msg = f"unknown field; accepted fields: {', '.join(sorted(model.model_fields))}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{source}: field '{loc}': {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | typing.Mapping[str, Any], *, base: str | Path | None = None,
                **overrides: Any) -> StudyConfig:
    """A study config from a TOML file, or from a dict (the TOML's tables as nested dicts)
    whose relative paths resolve against `base` (default: the current folder).
    `overrides` set dotted fields (`**{"optuna.n_trials": 3}`); None values are skipped.

    >>> cfg = load_config("studies/demo.toml", **{"optuna.n_trials": 4})
    >>> cfg = load_config({"name": "nb", "pool": {"path": "pools/default.jsonl"}, ...},
    ...                   base="/work/main")
    """
    if isinstance(path, typing.Mapping):
        import copy

        # named as a file in `base`, so messages and the default storage sit beside it
        where = Path(base if base is not None else Path.cwd()).resolve() / "<dict>"
        return _validated(copy.deepcopy(dict(path)), where, where, overrides)
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1}); a study config is a "
                          "TOML text file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return _validated(data, path, path.resolve(), overrides)


def _validated(data: dict[str, Any], path: Path, source: Path,
               overrides: dict[str, Any]) -> StudyConfig:
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc)) from None
    except ValueError as exc:  # template field errors
        raise ConfigError(f"{path}: field 'template': {exc}") from None
    cfg = cfg.model_copy(update={"source": source})
    cfg.check_files()
    return cfg
