"""Pre-flight checks of a study config before any model loads (`study run`, `worker`,
`validate`): the pool and eval files through their validators, the ids the config names exist
in the pool, every spec's prefix is known, the model folders exist, and the storage opens.
Each problem is one `StudyError` naming the config and the field (the CLI exits 2)."""

from __future__ import annotations

from pathlib import Path

from icl_search.errors import IclSearchError
from icl_search.study.config import StudyConfig
from icl_search.study.storage import StudyError, make_storage, redact


def _folder(cfg: StudyConfig, field: str, target: str) -> None:
    """A model named by a plain path must exist (ORG/NAME may be a Hugging Face id)."""
    if target.startswith(("/", "./", "../", "~")):
        folder = Path(target).expanduser().resolve()
        if not folder.exists():
            raise StudyError(f"{cfg.source}: field '{field}': model folder not found: {folder}")


def check_specs(cfg: StudyConfig) -> None:
    from icl_search.engines import parse_spec
    from icl_search.judge import parse_judge_spec

    def engine(field: str, spec: str) -> None:
        try:
            kind, target, _ = parse_spec(spec)
        except ValueError as exc:
            raise StudyError(f"{cfg.source}: field '{field}': {exc}") from None
        if kind == "vllm":
            _folder(cfg, field, target)

    def judge(field: str, spec: str) -> None:
        try:
            kind, rest = parse_judge_spec(spec)
        except IclSearchError as exc:
            raise StudyError(f"{cfg.source}: field '{field}': {exc}") from None
        if kind in ("logprob", "sample"):
            engine(field, rest)
        elif kind in ("distilled", "reward", "anchored") and rest != "default" and ":" not in rest:
            _folder(cfg, field, str(cfg.path(rest)))

    engine("model.engine", cfg.model.engine)
    judge("judge.spec", cfg.judge.spec)
    if cfg.judge.screen:
        judge("judge.screen", cfg.judge.screen)
    fb = cfg.feedback
    if fb is not None and fb.reward is not None:
        from icl_search.feedback.reward import parse_reward_spec

        try:
            parse_reward_spec(fb.reward.spec)
        except IclSearchError as exc:
            raise StudyError(f"{cfg.source}: field 'feedback.reward.spec': {exc}") from None
    if fb is not None and fb.pairwise is not None and fb.pairwise.judge:
        judge("feedback.pairwise.judge", fb.pairwise.judge)


def check_data(cfg: StudyConfig) -> None:
    """Pool and eval set load and validate; the ids the config names are in the pool."""
    from icl_search.evalset import load_queries
    from icl_search.pool import Pool

    pool = Pool.load(cfg.path(cfg.pool.path))  # PoolError lists file:line: field problems
    files = [cfg.path(cfg.eval.path)] + ([cfg.path(cfg.eval.confirm)] if cfg.eval.confirm
                                         else [])
    check_references(cfg, {f: load_queries(f) for f in files})
    ids = set(pool.ids)
    for field, wanted in (("search.baseline.example_ids", cfg.search.baseline.example_ids),
                          ("search.fixed_candidates", cfg.search.fixed_candidates or ())):
        unknown = [i for i in wanted if i not in ids]
        if unknown:
            raise StudyError(f"{cfg.source}: field '{field}': not in the pool "
                             f"{cfg.path(cfg.pool.path)}: {', '.join(map(repr, unknown[:5]))}")


def check_references(cfg: StudyConfig, query_files: dict) -> None:
    """A judge that needs references (`refsim`), as the study's judge, screen or audit judge,
    on an eval or confirm file with rows lacking them: one message naming the file. An audit
    judge scores the confirm set only: a separate confirm file is all it needs references in. A
    reference-anchored judge (the default) scores such rows by its reference-free part: a
    warning says how many."""
    import warnings

    from icl_search.judge import parse_judge_spec, require_references

    confirm = cfg.path(cfg.eval.confirm) if cfg.eval.confirm else None
    judges = {"judge.spec": (cfg.judge.spec, query_files),
              "judge.screen": (cfg.judge.screen, query_files)}
    for i, a in enumerate(cfg.judge.audit):
        judges[f"judge.audit[{i}]"] = (a, {f: q for f, q in query_files.items()
                                          if confirm is None or f == confirm})
    for field, (spec, files) in judges.items():
        for path, queries in files.items():
            if not spec:
                continue
            try:
                require_references(spec, queries, path, field=f"field '{field}'")
            except IclSearchError as exc:
                raise StudyError(f"{cfg.source}: {exc}") from None
            lacking = sum(q.reference is None for q in queries)
            if lacking and parse_judge_spec(spec)[0] == "anchored":
                warnings.warn(f"{path}: {lacking} of {len(queries)} queries have no "
                              f"'reference' answer; the judge {spec!r} ({field}) scores their "
                              "answers without one (its reference-free part); add references "
                              "with `icl-search references build`", stacklevel=2)


def check_storage(cfg: StudyConfig, url: str | None = None, *, create: bool = True) -> None:
    """The storage opens and answers. With `create=False` a SQLite file that does not exist
    yet is fine (`study run` will create it) and is not created."""
    import optuna

    url = url or cfg.storage_url
    if not create and url.startswith("sqlite:///") and \
            not Path(url[len("sqlite:///"):]).is_file():
        return
    storage = make_storage(cfg, url)
    try:
        optuna.get_all_study_names(storage)
    except Exception as exc:  # noqa: BLE001  (any driver error: the connection fails here for lazy drivers)
        raise StudyError(f"cannot open the study storage {redact(url)}: "
                         f"{type(exc).__name__}") from None


def preflight(cfg: StudyConfig, storage_url: str | None = None, *,
              create: bool = True) -> None:
    cfg.check_engine()
    check_specs(cfg)
    check_data(cfg)
    check_storage(cfg, storage_url, create=create)
