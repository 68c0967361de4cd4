"""Running a study: ask a batch of trials, evaluate them together chunk by chunk (reporting
per-query scores to the pruner), tell, and keep every trial's artifacts.

Crash safety: trials in flight send heartbeats; a worker that dies leaves RUNNING trials that
`fail_stale_trials` fails after the grace period, and `RetryHeartbeatStaleTrialCallback` re-enqueues
them with the same parameters (the caches make the work already done free). Trial asks are
serialised across workers (an advisory lock on PostgreSQL, a file lock beside a SQLite file),
so the number of finished trials is exactly `n_trials`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from icl_search.errors import IclSearchError
from icl_search.study.config import StudyConfig
from icl_search.study.evaluate import Evaluator, TrialEvaluation
from icl_search.study.space import (
    TrialSpec,
    baseline_params,
    make_pruner,
    make_sampler,
    suggest,
    system_choices,
)

log = logging.getLogger("icl_search.study")
# We drive heartbeats ourselves around ask/tell (Optuna only does it inside Study.optimize);
# these two warnings say exactly that and would otherwise print on every batch.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
BASELINE_ATTR = "baseline_enqueued"


class StudyError(IclSearchError, RuntimeError):
    """The study cannot go on (e.g. the judge keeps failing coverage)."""


def redact(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def make_storage(cfg: StudyConfig, url: str | None = None) -> optuna.storages.BaseStorage:
    url = url or cfg.storage_url
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    hb = cfg.optuna.heartbeat_seconds
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=hb, grace_period=2 * hb,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=cfg.optuna.max_retry),
        **kwargs,
    )


def open_study(cfg: StudyConfig, storage_url: str | None = None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if cfg.optuna.multi_objective else ["maximize"]
    extra = feedback_objectives(cfg)
    directions += ["maximize"] * len(extra)
    storage = make_storage(cfg, storage_url)
    study = optuna.create_study(
        study_name=cfg.name, storage=storage, sampler=make_sampler(cfg),
        pruner=make_pruner(cfg), directions=directions, load_if_exists=True,
    )
    if cfg.optuna.multi_objective:
        study.set_metric_names(["score", "context_tokens", *extra])
    else:
        study.set_metric_names(["score"])
    return study


@contextlib.contextmanager
def ask_lock(study: optuna.Study, url: str) -> Iterator[None]:
    """Serialise count-then-ask across workers so the trial budget is exact."""
    if url.startswith("sqlite:///"):
        from filelock import FileLock

        with FileLock(url[len("sqlite:///"):] + ".ask.lock"):
            yield
    elif url.startswith("postgresql"):
        import sqlalchemy as sa

        storage = study._storage
        engine = getattr(storage, "_backend", storage).engine  # RDBStorage under Optuna's cache
        key = int.from_bytes(study.study_name.encode()[:8].ljust(8, b"\0"), "big") >> 1
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        yield


class Heartbeat:
    """Records a heartbeat for every trial this worker is evaluating."""

    def __init__(self, study: optuna.Study, interval: float):
        self.storage = study._storage
        self.interval = interval
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def add(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception as exc:  # a transient storage error must not kill the run
                    log.warning("heartbeat for trial %s failed: %s", tid, exc)


@dataclass
class RunSummary:
    finished: int = 0
    pruned: int = 0
    failed: int = 0
    screened_out: int = 0  # told PRUNED by the cheap screen (icl_search.study.screening)
    batches: int = 0
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    confirm: Any = None  # icl_search.study.confirm.Summary, when the study has a confirm set


def _count(study: optuna.Study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _spent(study: optuna.Study) -> int:
    """Trials that use up the budget: finished, running, and failed by the study itself (judge
    coverage, rules gate). A trial failed by heartbeat is not spent: its retry is."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in LIVE or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs))


def ensure_baseline(study: optuna.Study, cfg: StudyConfig, pool_ids: list[str], url: str) -> None:
    if study.user_attrs.get(BASELINE_ATTR):
        return
    with ask_lock(study, url):
        if study.user_attrs.get(BASELINE_ATTR):
            return
        study.enqueue_trial(baseline_params(cfg, pool_ids), user_attrs={"role": "baseline"})
        for i, params in enumerate(cfg.search.enqueue):
            study.enqueue_trial(params, user_attrs={"role": f"enqueued-{i}"})
        study.set_user_attr(BASELINE_ATTR, True)


def run_study(
    cfg: StudyConfig,
    evaluator: Evaluator,
    *,
    storage_url: str | None = None,
    n_trials: int | None = None,
    progress: Callable[[str], None] | None = None,
    artifact_dir: Path | None = None,
) -> RunSummary:
    """Run (or resume, or join as a worker) until the study has `n_trials` finished trials."""
    url = storage_url or cfg.storage_url
    study = open_study(cfg, url)
    pool_ids = evaluator.pool.ids
    candidates = cfg.search.fixed_candidates or pool_ids
    unknown = [i for i in candidates if i not in set(pool_ids)]
    if unknown:
        raise StudyError(f"{cfg.source}: field 'search.fixed_candidates': ids not in the pool: "
                         f"{unknown[:5]}")
    for i in cfg.search.baseline.example_ids:
        if i not in set(pool_ids):
            raise StudyError(f"{cfg.source}: field 'search.baseline.example_ids': {i!r} is not "
                             f"in the pool {cfg.path(cfg.pool.path)}")
    ensure_baseline(study, cfg, pool_ids, url)
    from icl_search.study.export import record_export_info

    record_export_info(study, cfg)
    target = n_trials or cfg.optuna.n_trials
    deadline = (time.time() + cfg.optuna.timeout_minutes * 60
                if cfg.optuna.timeout_minutes else None)
    store = _artifact_store(artifact_dir or cfg.artifacts_path)
    summary = RunSummary()
    t_start = time.time()
    consecutive_fail = 0
    say = progress or (lambda m: None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_queries = len(evaluator.queries)
    chunk = min(cfg.optuna.chunk_size, n_queries)
    with Heartbeat(study, cfg.optuna.heartbeat_seconds) as hb:
        while True:
            optuna.storages.fail_stale_trials(study)
            if deadline and time.time() > deadline:
                say("time budget reached")
                break
            with ask_lock(study, url):
                live = _spent(study)
                room = target - live
                trials = [study.ask() for _ in range(max(0, min(room, cfg.optuna.batch_trials)))]
                for t in trials:
                    hb.add(t._trial_id)
            if not trials:
                running = _count(study, (TrialState.RUNNING,))
                if running:  # another (or a dead) worker's trials: wait, stale ones get retried
                    say(f"waiting for {running} running trial(s) of other workers")
                    time.sleep(min(cfg.optuna.heartbeat_seconds, 10))
                    continue
                break
            summary.batches += 1
            specs = [suggest(t, cfg, candidates) for t in trials]
            for t, s in zip(trials, specs):
                t.set_user_attr("spec", s.to_dict())
            evals = [TrialEvaluation(s) for s in specs]
            skip: dict[int, list] = {}
            if getattr(evaluator, "screen", None) is not None:
                from icl_search.study.screening import screen_trials

                skip = screen_trials(study, cfg, evaluator, trials, specs)
                for i, rows in skip.items():
                    evals[i].records.extend(rows)
            active = [i for i in range(len(trials)) if i not in skip]
            pruned: set[int] = set()
            for start in range(0, n_queries, chunk):
                positions = list(range(start, min(start + chunk, n_queries)))
                recs = evaluator.evaluate([specs[i] for i in active], positions)
                for i, rows in zip(list(active), recs):
                    evals[i].records.extend(rows)
                    last = start + chunk >= n_queries  # fully evaluated: complete, not prune
                    if _report(trials[i], cfg, rows, evals[i], start // chunk) and not last:
                        pruned.add(i)
                        active.remove(i)
                if not active:
                    break
            for i, (t, ev) in enumerate(zip(trials, evals)):
                _save_artifacts(store, study, t, ev)
                if i in skip:
                    study.tell(t, state=TrialState.PRUNED)
                    summary.pruned += 1
                    summary.screened_out += 1
                    say(f"trial {t.number}: screened out (cheap score "
                        f"{t.user_attrs['screen_score']:.3f})")
                    hb.discard(t._trial_id)
                    continue
                res = ev.result(evaluator.judge.id)
                _attrs(t, ev, res)
                fb = (evaluator.feedback.summarize(ev.records, res.overall)
                      if evaluator.feedback is not None else None)
                if fb is not None:
                    t.set_user_attr("feedback", fb.to_dict())
                if i in pruned:
                    study.tell(t, state=TrialState.PRUNED)
                    summary.pruned += 1
                    consecutive_fail = 0
                    say(f"trial {t.number}: pruned after {len(ev.records)} queries")
                elif res.overall is None or min(
                        (c.fraction for c in res.coverage.values()), default=0) < \
                        cfg.judge.min_coverage:
                    cov = ", ".join(f"{a} {c}" for a, c in res.coverage.items())
                    t.set_user_attr("fail_reason", f"judge coverage below "
                                    f"{cfg.judge.min_coverage:.0%}: {cov}")
                    study.tell(t, state=TrialState.FAIL)
                    summary.failed += 1
                    consecutive_fail += 1
                    say(f"trial {t.number}: failed (judge coverage {cov})")
                elif fb is not None and fb.gate_failed:
                    t.set_user_attr("fail_reason", fb.gate_failed)
                    study.tell(t, state=TrialState.FAIL)
                    summary.failed += 1
                    consecutive_fail += 1
                    say(f"trial {t.number}: failed the rules gate ({fb.gate_failed})")
                else:
                    score = fb.combined if fb is not None else res.overall
                    values = ([res.overall, ev.mean_context_tokens]
                              + [fb.values.get(s) or 0.0 for s in feedback_objectives(cfg)]
                              if cfg.optuna.multi_objective else score)
                    study.tell(t, values)
                    summary.finished += 1
                    consecutive_fail = 0
                    say(f"trial {t.number}: score {score:.3f} "
                        f"({specs[i].system_name}, k={specs[i].k}, {specs[i].strategy})")
                hb.discard(t._trial_id)
            if consecutive_fail >= max(3, cfg.optuna.batch_trials * 2) and \
                    _spent(study) < target:
                raise StudyError(
                    f"{consecutive_fail} trials in a row failed (judge coverage below "
                    f"{cfg.judge.min_coverage:.0%}, or the rules gate): see their fail_reason in "
                    f"`icl-search study trials`; check the judge (`icl-search judge score`) or "
                    f"lower judge.min_coverage in {cfg.source}")
    if cfg.eval.has_confirm and cfg.eval.confirm_after_run and \
            _count(study, (TrialState.COMPLETE,)):
        from icl_search.study.confirm import confirm

        with ask_lock(study, url):  # one worker confirms; the others then find it stored
            summary.confirm = confirm(study, cfg, evaluator, say=say)
    summary.seconds = time.time() - t_start
    summary.stats = vars(evaluator.stats).copy()
    summary.stats.update(getattr(evaluator, "screen_stats", {}))
    return summary


def _report(trial: optuna.Trial, cfg: StudyConfig, rows, ev: TrialEvaluation, step: int) -> bool:
    """Report this chunk to the pruner; True when the trial should stop here."""
    if cfg.optuna.multi_objective or cfg.optuna.pruner == "none":
        return False
    if cfg.optuna.pruner == "wilcoxon":
        base = len(ev.records) - len(rows)
        for j, r in enumerate(rows):
            v = r.objective
            if v is not None:
                trial.report(v, base + j)
    else:
        vals = [r.objective for r in ev.records if r.objective is not None]
        if vals:
            trial.report(sum(vals) / len(vals), step)
    return trial.should_prune()


def feedback_objectives(cfg: StudyConfig) -> list[str]:
    """Extra objectives of a multi-objective study: one per configured feedback source."""
    f = cfg.feedback
    if not cfg.optuna.multi_objective or f is None:
        return []
    return [s for s in ("rules", "reward", "pairwise") if getattr(f, s) is not None]


def _attrs(trial: optuna.Trial, ev: TrialEvaluation, res) -> None:
    trial.set_user_attr("aspects", {a: m for a, m in res.aspect_means.items()})
    trial.set_user_attr("coverage", {a: [c.judged, c.total] for a, c in res.coverage.items()})
    trial.set_user_attr("n_queries", len(ev.records))
    trial.set_user_attr("context_tokens", round(ev.mean_context_tokens, 1))
    trial.set_user_attr("mean_words", res.mean_length)
    trial.set_user_attr("per_query", {r.query_id: (r.judgement.overall if r.judgement else None)
                                      for r in ev.records})
    trial.set_user_attr("failed_queries", sum(r.finish_reason == "error" for r in ev.records))


def _artifact_store(path: Path):
    from optuna.artifacts import FileSystemArtifactStore

    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def _save_artifacts(store, study: optuna.Study, trial: optuna.Trial,
                    ev: TrialEvaluation) -> None:
    """Rendered prompts, generations and per-query scores, as one JSONL artifact per trial."""
    from optuna.artifacts import upload_artifact

    fd, tmp = tempfile.mkstemp(prefix=f"trial-{trial.number}-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in ev.records:
                fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        art = upload_artifact(artifact_store=store, file_path=tmp, study_or_trial=trial,
                              mimetype="application/jsonl")
        trial.set_user_attr("artifact_id", art)
    finally:
        os.unlink(tmp)


def load_trial_records(cfg: StudyConfig, trial: optuna.trial.FrozenTrial) -> list[dict]:
    """The per-query artifact of a finished trial (prompts, answers, scores)."""
    from optuna.artifacts import download_artifact

    art = trial.user_attrs.get("artifact_id")
    if not art:
        return []
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "a.jsonl"
        download_artifact(artifact_store=_artifact_store(cfg.artifacts_path),
                          file_path=str(out), artifact_id=art)
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def build_evaluator(cfg: StudyConfig, *, engine=None, judge=None, say=print) -> Evaluator:
    """Load pool, eval set, engine (cached) and judge as the config says."""
    from icl_search.cache import Cache
    from icl_search.engines import CachedEngine, SamplingParams, make_engine
    from icl_search.judge import make_judge
    from icl_search.pool import Pool
    from icl_search.prompt import Template
    from icl_search.study.screening import attach_screen, resolve_spec
    from icl_search.study.splits import embedder_for, load_splits

    pool = Pool.load(cfg.path(cfg.pool.path))
    index_dir = cfg.path(cfg.pool.index_dir)
    if cfg.pool.sources:
        pool, index_dir = _restrict_sources(cfg, pool, index_dir)
    # the search split only: the confirm set stays unseen (icl_search.study.splits)
    queries = load_splits(cfg, embed=embedder_for(cfg) if cfg.eval.has_confirm else None).search
    systems = {name: p.read_text(encoding="utf-8") for name, p in system_choices(cfg).items()}
    cache = Cache(cfg.path(cfg.cache)) if cfg.cache else Cache()
    if engine is None:
        m = cfg.model
        api_key = os.environ.get(m.api_key_env) if m.api_key_env else None
        say(f"loading the base model ({m.engine}) ...")
        engine = make_engine(m.engine, max_model_len=m.max_model_len,
                             kv_cache_memory_bytes=m.kv_cache_memory_bytes,
                             gpu_memory_utilization=m.gpu_memory_utilization, api_key=api_key)
    raw_engine = engine
    engine = CachedEngine(engine, cache)
    if judge is None:
        say(f"loading the judge ({cfg.judge.spec}) ...")
        same = _same_model(cfg.judge.spec, cfg.model.engine)
        opts = {"max_model_len": cfg.judge.max_model_len} if cfg.judge.max_model_len else {}
        judge = make_judge(resolve_spec(cfg, cfg.judge.spec), engine=raw_engine if same else None,
                           cache=cache,
                           rubric=cfg.path(cfg.judge.rubric),
                           safety_rubric=cfg.path(cfg.judge.safety_rubric), **opts)
    d = cfg.decoding
    params = SamplingParams(max_tokens=d.max_tokens, temperature=d.temperature, top_p=d.top_p,
                            repetition_penalty=d.repetition_penalty, seed=d.seed)
    needs_index = any(s != "fixed" for s in cfg.search.strategies) and cfg.search.k[1] > 0
    template = Template.from_dict(cfg.template)
    feedback = baseline = None
    if cfg.feedback is not None:
        from icl_search.feedback import feedback_from_config

        say("loading the feedback sources ...")
        feedback = feedback_from_config(cfg.feedback, judge=judge, cache=cache,
                                        template=template, resolve=cfg.path)
        params_b = baseline_params(cfg, pool.ids)
        baseline = TrialSpec(params_b["system"], params_b["k"], params_b.get("strategy", "none"),
                             tuple(params_b[f"ex_{i}"] for i in range(params_b["k"])))
    evaluator = Evaluator(engine=engine, judge=judge, pool=pool, queries=queries,
                          systems=systems, params=params, template=template, index_dir=index_dir,
                          embedder=cfg.pool.embedder, needs_index=needs_index, feedback=feedback,
                          baseline=baseline)
    attach_screen(evaluator, cfg, cache, say)
    return evaluator


def _restrict_sources(cfg: StudyConfig, pool, index_dir):
    """The pool's examples whose `source` is in `pool.sources`, with an index of their own
    (beside the full pool's, so neither goes stale when a study switches)."""
    from icl_search.index import PoolIndex
    from icl_search.pool import Pool

    keep = set(cfg.pool.sources or ())
    have = sorted({e.source for e in pool})
    sub = Pool([e for e in pool if e.source in keep], pool.path, pool.system)
    if not len(sub):
        raise StudyError(f"{cfg.source}: field 'pool.sources': no example of {pool.path} has "
                         f"a source in {sorted(keep)}; its sources: {have}")
    base = index_dir or PoolIndex.default_dir(pool.path)
    return sub, base.with_name(f"{base.name}-{'+'.join(sorted(keep))}")


def _same_model(judge_spec: str, engine_spec: str) -> bool:
    from icl_search.engines import parse_spec
    from icl_search.judge import parse_judge_spec

    try:
        kind, rest = parse_judge_spec(judge_spec)
    except Exception:
        return False
    if kind not in ("logprob", "sample"):
        return False
    return parse_spec(rest)[:2] == parse_spec(engine_spec)[:2]


def trials_frame(study: optuna.Study):
    """One row per trial: number, state, value, parameters, aspects (a polars DataFrame)."""
    import polars as pl

    rows = []
    for t in study.get_trials(deepcopy=False):
        spec = t.user_attrs.get("spec", {})
        row = {
            "number": t.number, "state": t.state.name,
            # a pruned trial's stored value is its last per-query report: not a score
            "score": t.values[0] if t.values and t.state != TrialState.PRUNED else None,
            "partial": (sum(t.intermediate_values.values()) / len(t.intermediate_values)
                        if t.state == TrialState.PRUNED and t.intermediate_values else None),
            "role": t.user_attrs.get("role", ""),
            "system": spec.get("system_name"), "k": spec.get("k"),
            "strategy": spec.get("strategy"),
            "examples": ",".join(spec.get("fixed_ids") or []),
            "mmr_lambda": spec.get("mmr_lambda"),
            "context_tokens": t.user_attrs.get("context_tokens"),
            "n_queries": t.user_attrs.get("n_queries"),
            "screen_score": t.user_attrs.get("screen_score"),
            "expensive_judge": t.user_attrs.get("expensive_judge"),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
        }
        for a, m in (t.user_attrs.get("aspects") or {}).items():
            row[a] = m
        fb = t.user_attrs.get("feedback") or {}
        for source, v in (fb.get("values") or {}).items():  # each feedback source on its own
            if source != "judge":
                row[f"fb_{source}"] = v
        if fb:
            row["fb_combined"] = fb.get("combined")
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def stderr_say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
