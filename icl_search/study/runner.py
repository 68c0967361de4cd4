"""Running a study: ask a batch of trials, evaluate them together chunk by chunk (reporting
per-query scores to the pruner), decide each trial's outcome (`decide`), tell, and keep every
trial's artifacts. The study's other rooms: storage, locks and heartbeats (`storage`),
artifacts (`artifacts`), building the evaluator (`build`); trial tables live a floor up,
in `icl_search.report`.

Crash safety: trials in flight send heartbeats; a worker that dies leaves RUNNING trials that
`fail_stale_trials` fails after the grace period, and `RetryHeartbeatStaleTrialCallback` re-enqueues
them with the same parameters (the caches make the work already done free). The baseline and
the enqueued reference configurations are re-enqueued past `max_retry` too (`requeue_references`):
the report compares against them. Trial asks are serialised across workers (an advisory lock on
PostgreSQL, a file lock beside a SQLite file), so the number of finished trials is exactly
`n_trials`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from icl_search.study import attrs
from icl_search.study.artifacts import artifact_store, save_artifacts
from icl_search.study.config import StudyConfig
from icl_search.study.evaluate import Evaluator, TrialEvaluation
from icl_search.study.space import baseline_params, suggest
from icl_search.study.storage import (
    Heartbeat,
    StudyError,
    ask_lock,
    feedback_objectives,
    open_study,
)

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
BASELINE_ATTR = "baseline_enqueued"


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
    # reference roles ("baseline", "enqueued-0", ...) with no finished trial at the end: say so
    missing_references: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """What a live display shows (`run_study(monitor=...)` gets one after every chunk)."""

    done: int  # trials finished (complete, pruned, failed by the study) of the budget
    total: int
    batch_items: int  # this batch's (trial, query) items evaluated so far
    batch_total: int
    best: float | None
    elapsed: float


def _count(study: optuna.Study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _spent(study: optuna.Study) -> int:
    """Trials that use up the budget: finished, running, and failed by the study itself (judge
    coverage, rules gate). A trial failed by heartbeat is not spent: its retry is."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in LIVE or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs))


def reference_roles(cfg: StudyConfig) -> list[str]:
    return ["baseline"] + [f"enqueued-{i}" for i in range(len(cfg.search.enqueue))]


def ensure_baseline(study: optuna.Study, cfg: StudyConfig, pool_ids: list[str], url: str) -> None:
    if study.user_attrs.get(BASELINE_ATTR):
        return
    with ask_lock(study, url):
        if study.user_attrs.get(BASELINE_ATTR):
            return
        # a round of icl_search.propose may hold a finished copy of the baseline already
        if not any(t.user_attrs.get("role") == "baseline" for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,))):
            study.enqueue_trial(baseline_params(cfg, pool_ids), user_attrs={"role": "baseline"})
        for i, params in enumerate(cfg.search.enqueue):
            study.enqueue_trial(params, user_attrs={"role": f"enqueued-{i}"})
        study.set_user_attr(BASELINE_ATTR, True)


def missing_references(study: optuna.Study, cfg: StudyConfig) -> list[str]:
    """Reference roles with no complete or pruned trial."""
    done = {t.user_attrs.get("role") for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))}
    return [r for r in reference_roles(cfg) if r not in done]


def requeue_references(study: optuna.Study, cfg: StudyConfig, pool_ids: list[str],
                       url: str) -> list[int]:
    """Enqueue again each reference configuration (baseline, `search.enqueue`) whose every trial
    was failed by a dead worker (stale heartbeat) and that has no retry waiting or running:
    `max_retry` bounds the retries of searched trials, not of the references the report
    compares against. One failed by the study itself (judge coverage, rules gate) is not
    retried: the same context would fail the same way. Returns the failed trials requeued."""
    if not study.user_attrs.get(BASELINE_ATTR):
        return []
    params = {"baseline": baseline_params(cfg, pool_ids),
              **{f"enqueued-{i}": p for i, p in enumerate(cfg.search.enqueue)}}
    requeued = []
    with ask_lock(study, url):
        trials = study.get_trials(deepcopy=False)
        for role in reference_roles(cfg):
            mine = [t for t in trials if t.user_attrs.get("role") == role]
            if not mine or any(t.state != TrialState.FAIL or "fail_reason" in t.user_attrs
                               for t in mine):
                continue
            last = mine[-1]
            study.enqueue_trial(params[role], user_attrs={"role": role,
                                                         "requeued_from": last.number})
            requeued.append(last.number)
    return requeued


def _best_value(study: optuna.Study) -> float | None:
    vals = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values]
    return max(vals) if vals else None


@dataclass
class Outcome:
    """How a trial ends: the state to tell, its values (COMPLETE only), a line for the log,
    and a `fail_reason` when the study itself failed it."""

    state: TrialState
    line: str
    values: Any = None
    fail_reason: str | None = None


def decide(cfg: StudyConfig, ev: TrialEvaluation, res, fb, *, pruned: bool) -> Outcome:
    """The tell decision for one evaluated trial: pruned, failed (judge coverage below
    `judge.min_coverage`, or the rules gate), or complete with its objective value(s)."""
    if pruned:
        return Outcome(TrialState.PRUNED, f"pruned after {len(ev.records)} queries")
    if res.overall is None or min((c.fraction for c in res.coverage.values()), default=0) < \
            cfg.judge.min_coverage:
        cov = ", ".join(f"{a} {c}" for a, c in res.coverage.items())
        return Outcome(TrialState.FAIL, f"failed (judge coverage {cov})",
                       fail_reason=f"judge coverage below {cfg.judge.min_coverage:.0%}: {cov}")
    if fb is not None and fb.gate_failed:
        return Outcome(TrialState.FAIL, f"failed the rules gate ({fb.gate_failed})",
                       fail_reason=fb.gate_failed)
    score = fb.combined if fb is not None else res.overall
    values = ([res.overall, ev.mean_context_tokens]
              + [fb.values.get(s) or 0.0 for s in feedback_objectives(cfg)]
              if cfg.optuna.multi_objective else score)
    s = ev.spec
    return Outcome(TrialState.COMPLETE, f"score {score:.3f} ({s.system_name}, k={s.k}, "
                   f"{s.strategy})", values=values)


def run_study(
    cfg: StudyConfig,
    evaluator: Evaluator,
    *,
    storage_url: str | None = None,
    n_trials: int | None = None,
    progress: Callable[[str], None] | None = None,
    artifact_dir: Path | None = None,
    monitor: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Run (or resume, or join as a worker) until the study has `n_trials` finished trials.
    `progress` gets one line per event; `monitor` a `Progress` after every chunk.

    >>> cfg = load_config("studies/demo.toml")
    >>> summary = run_study(cfg, build_evaluator(cfg), n_trials=4)
    """
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
    store = artifact_store(artifact_dir or cfg.artifacts_path)
    summary = RunSummary()
    t_start = time.time()
    consecutive_fail = 0
    say = progress or (lambda m: None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_queries = len(evaluator.queries)
    chunk = min(cfg.optuna.chunk_size, n_queries)
    adopted: set[int] = set()
    with Heartbeat(study, cfg.optuna.heartbeat_seconds) as hb:
        while True:
            optuna.storages.fail_stale_trials(study)
            for number in requeue_references(study, cfg, pool_ids, url):
                say(f"trial {number} (a reference configuration) was lost with its worker: "
                    "enqueued again")
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
                    _adopt_orphans(study, hb, adopted, 2 * cfg.optuna.heartbeat_seconds)
                    say(f"waiting for {running} running trial(s) of other workers")
                    time.sleep(min(cfg.optuna.heartbeat_seconds, 10))
                    continue
                break
            summary.batches += 1
            specs = [suggest(t, cfg, candidates) for t in trials]
            for t, s in zip(trials, specs):
                t.set_user_attr("spec", s.to_dict())
            evals = [TrialEvaluation(s) for s in specs]

            def tick(items: int, total: int) -> None:
                if monitor is not None:
                    done = _spent(study) - _count(study, (TrialState.RUNNING,))
                    monitor(Progress(done, target, items, total,
                                     _best_value(study), time.time() - t_start))

            skip: dict[int, list] = {}
            if evaluator.screen is not None:
                from icl_search.study.screening import screen_trials

                skip = screen_trials(study, cfg, evaluator, trials, specs)
                for i, rows in skip.items():
                    evals[i].records.extend(rows)
            active = [i for i in range(len(trials)) if i not in skip]
            batch_total, batch_done = len(active) * n_queries, 0
            tick(0, batch_total)
            pruned: set[int] = set()
            for start in range(0, n_queries, chunk):
                positions = list(range(start, min(start + chunk, n_queries)))
                recs = evaluator.evaluate([specs[i] for i in active], positions)
                batch_done += len(active) * len(positions)
                for i, rows in zip(list(active), recs):
                    evals[i].records.extend(rows)
                    last = start + chunk >= n_queries  # fully evaluated: complete, not prune
                    if _report(trials[i], cfg, rows, evals[i], start // chunk) and not last:
                        pruned.add(i)
                        active.remove(i)
                        batch_total -= n_queries - start - len(positions)
                tick(batch_done, batch_total)
                if not active:
                    break
            for i, (t, ev) in enumerate(zip(trials, evals)):
                save_artifacts(store, t, ev)
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
                out = decide(cfg, ev, res, fb, pruned=i in pruned)
                if out.fail_reason is not None:
                    t.set_user_attr("fail_reason", out.fail_reason)
                study.tell(t, out.values, state=out.state)
                if out.state == TrialState.FAIL:
                    summary.failed += 1
                    consecutive_fail += 1
                else:
                    consecutive_fail = 0
                    if out.state == TrialState.PRUNED:
                        summary.pruned += 1
                    else:
                        summary.finished += 1
                say(f"trial {t.number}: {out.line}")
                hb.discard(t._trial_id)
            tick(batch_done, batch_total)
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
    summary.missing_references = missing_references(study, cfg)
    for role in summary.missing_references:
        say(f"warning: the study has no finished {role} trial: the report cannot compare "
            "against it")
    summary.seconds = time.time() - t_start
    summary.stats = vars(evaluator.stats).copy()
    summary.stats.update(vars(evaluator.screen_stats))
    return summary


def _adopt_orphans(study: optuna.Study, hb: Heartbeat, adopted: set[int], grace: float) -> None:
    """A worker killed between `ask` and its first heartbeat leaves a RUNNING trial that
    Optuna never fails (it fails only trials whose last heartbeat is old, and this one has
    none), so the study would wait for it forever. Give each such trial (running longer than
    the grace period, not ours) one heartbeat, once: a dead one then goes stale after the grace
    period and is retried; a live one is only refreshed once by it."""
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t._trial_id in hb.trial_ids or t._trial_id in adopted or t.datetime_start is None:
            continue
        if (now - t.datetime_start).total_seconds() > grace:
            study._storage.record_heartbeat(t._trial_id)
            adopted.add(t._trial_id)


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


def _attrs(trial: optuna.Trial, ev: TrialEvaluation, res) -> None:
    trial.set_user_attr("aspects", {a: m for a, m in res.aspect_means.items()})
    trial.set_user_attr("coverage", {a: [c.judged, c.total] for a, c in res.coverage.items()})
    trial.set_user_attr("n_queries", len(ev.records))
    trial.set_user_attr("context_tokens", round(ev.mean_context_tokens, 1))
    trial.set_user_attr("mean_words", res.mean_length)
    trial.set_user_attr(attrs.PER_QUERY, {r.query_id: (r.judgement.overall if r.judgement
                                                       else None) for r in ev.records})
    trial.set_user_attr(attrs.LENGTHS, {r.query_id: r.judgement.length_words
                                        for r in ev.records if r.judgement})
    trial.set_user_attr(attrs.HYGIENE, ev.hygiene.to_dict())
    trial.set_user_attr("failed_queries", sum(r.finish_reason == "error" for r in ev.records))


