"""Real studies on the tiny model (generator and judge), with SQLite and PostgreSQL storages."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.study import (
    ConfigError,
    build_evaluator,
    load_config,
    load_trial_records,
    open_study,
    run_study,
)
from tests.conftest import REPO, free_port, wait_http
from tests.helpers import FakeEngine, FakeJudge, write_config

runner = CliRunner()


# -- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("edit,message", [
    (("[optuna]", "[optuna]\nn_trails = 3"), "field 'optuna.n_trails': unknown field; accepted "
                                              "fields: batch_trials"),
    (("n_trials = 5", "n_trials = 0"), "field 'optuna.n_trials': Input should be greater than"),
    (("k = [0, 2]", "k = [3, 1]"), "field 'search.k': expected [min, max]"),
    (("k = [0, 2]", 'k = [0, 2]\nstrategies = ["fixed", "random"]'),
     "field 'search.strategies.1': Input should be 'fixed', 'knn', 'mmr', 'hybrid' or 'balanced'"),
    (("limit = 6", "limit = 6\n[template]\nquery_mark = 'Q:'"), "field 'template': template: "
                                                                 "unknown field(s) ['query_mark']"),
    (("dev.jsonl", "nope.jsonl"), "field 'eval.path': file not found"),
    (('name = "t"', 'name = "t"\nname = "u"'), "not valid TOML"),
    (('name = "t"', 'name = "a b"'), "field 'name': String should match pattern"),
])
def test_config_errors_name_the_field(tmp_path, tiny_model_dir, edit, message):
    path = write_config(tmp_path, tiny_model_dir)
    path.write_text(path.read_text().replace(*edit, 1))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value) and message in str(exc.value)
    r = runner.invoke(app, ["study", "validate", str(path)])
    # the CLI prints the same message, brackets included (not taken for rich markup)
    assert r.exit_code == 2 and "error:" in r.output and message in r.output


def test_shipped_configs_validate():
    demo = load_config(REPO / "studies" / "demo.toml")
    assert demo.model.engine == "vllm:default" and demo.storage_url.endswith("studies/demo.db")
    gpu = load_config(REPO / "studies" / "gpu-7b.toml")
    assert gpu.optuna.storage.startswith("postgresql://") and gpu.search.k == (0, 8)
    assert gpu.judge.spec.startswith("dspy:")


# -- running ---------------------------------------------------------------------------------
def test_study_runs_resumes_and_never_pays_twice(tmp_path, tiny_model_dir, tiny_engine):
    cfg = load_config(write_config(tmp_path, tiny_model_dir))
    ev = build_evaluator(cfg, engine=tiny_engine, say=lambda m: None)
    s = run_study(cfg, ev)
    study = open_study(cfg)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 5 and s.finished + s.pruned == 5
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    base = trials[0]
    assert base.user_attrs["role"] == "baseline"
    assert base.params == {"system": "urial_style.txt", "k": 2, "strategy": "fixed",
                           "ex_0": "factual-001", "ex_1": "advice-001"}
    # per-query scores went to the pruner, and the artifacts hold prompts and answers
    assert len(base.intermediate_values) == base.user_attrs["coverage"]["helpfulness"][0]
    recs = load_trial_records(cfg, base)
    # the tiny model's 1024-token window drops examples farthest from the query first
    assert len(recs) == 6
    assert all(r["dropped"] + r["examples"] == ["factual-001", "advice-001"] for r in recs)
    assert recs[0]["prompt"].endswith(f"{recs[0]['query']}\n```\n\n# Answer:\n```\n")
    assert base.value == pytest.approx(
        sum(base.user_attrs["aspects"].values()) / len(base.user_attrs["aspects"]))

    # running again finds the budget spent: no new trial, no model call
    calls = tiny_engine.stats.prompts
    s2 = run_study(cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None))
    assert s2.finished == 0 and len(open_study(cfg).trials) == 5
    assert tiny_engine.stats.prompts == calls
    # a larger budget goes on from where it was
    s3 = run_study(cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None), n_trials=7)
    assert s3.finished + s3.pruned == 2 and len(open_study(cfg).trials) == 7


def test_multi_objective_and_report(tmp_path, tiny_model_dir, tiny_engine):
    path = write_config(tmp_path, tiny_model_dir, name="mo",
                        optuna="multi_objective = true\nstorage = \"sqlite:///"
                               f"{tmp_path / 'mo.db'}\"")
    cfg = load_config(path)
    run_study(cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None))
    study = open_study(cfg)
    assert len(study.directions) == 2 and study.best_trials
    for t in study.best_trials:
        assert t.values[1] == pytest.approx(t.user_attrs["context_tokens"], abs=0.1)
    r = runner.invoke(app, ["study", "report", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| overall |" in md and "baseline" in md
    for name in ("history.png", "pareto.html", "trials.csv", "aspects.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    # the HTML plots work offline: plotly.js sits beside them, no script from the network
    import re

    for page in (tmp_path / "rep").glob("*.html"):
        srcs = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", page.read_text())
        assert srcs == ["plotly.min.js"], (page.name, srcs)
    assert (tmp_path / "rep" / "plotly.min.js").stat().st_size > 1_000_000
    # one trial's prompts, answers and per-query scores as Parquet
    import polars as pl

    r = runner.invoke(app, ["study", "trial", str(path), "0", "--out", str(tmp_path / "t0.parquet")])
    assert r.exit_code == 0, r.output
    df = pl.read_parquet(tmp_path / "t0.parquet")
    assert df.height == 6 and df["trial"].to_list() == [0] * 6
    assert df["prompt"].str.ends_with("# Answer:\n```\n").all()
    assert df["overall"].to_list() == pytest.approx(
        list(study.trials[0].user_attrs["per_query"].values()))
    r = runner.invoke(app, ["study", "trial", str(path), "42", "--out", str(tmp_path / "x.parquet")])
    assert r.exit_code == 2 and "trial 42: no such trial in study mo (trials 0-4)" in r.output
    assert not (tmp_path / "x.parquet").exists()
    r = runner.invoke(app, ["study", "trials", str(path), "--csv", str(tmp_path / "t.csv")])
    assert r.exit_code == 0 and len((tmp_path / "t.csv").read_text().splitlines()) == 6


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "icl_search.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def test_killed_study_resumes_and_retries_the_interrupted_trial(tmp_path, tiny_model_dir,
                                                                tiny_engine):
    path = write_config(tmp_path, tiny_model_dir, name="crash",
                        optuna="heartbeat_seconds = 1\nbatch_trials = 1\nn_trials = 4\n"
                               "chunk_size = 1")
    # a cache of its own: answers cached by earlier tests would finish trials too fast to kill
    path.write_text(path.read_text().replace("seed = 3", f'seed = 3\ncache = "{tmp_path}/c.db"'))
    cfg = load_config(path)
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(_cli("study", "run", str(path)), stdout=log, stderr=log, env=_env())
    storage = cfg.storage_url
    deadline = time.time() + 600
    killed_during = None
    while time.time() < deadline and proc.poll() is None:
        try:
            trials = optuna.load_study(study_name="crash", storage=storage).get_trials()
        except Exception:
            trials = []
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if done and running:
            proc.send_signal(signal.SIGKILL)
            killed_during = running[0].number
            break
        time.sleep(0.2)
    proc.wait()
    assert killed_during is not None, (tmp_path / "run.log").read_text()[-2000:]
    # stderr is a file, not a terminal: plain progress lines instead of a live display
    assert "progress: trials 0/4, batch items 0/6, elapsed" in (tmp_path / "run.log").read_text()
    time.sleep(3.5)  # past the grace period (2 heartbeats; SQLite keeps whole seconds)
    run_study(cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None))
    trials = open_study(cfg).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(finished) == 4
    assert [t.number for t in failed] == [killed_during]
    retried_from = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [t for t in finished if retried_from(t) == killed_during]
    assert len(retried) == 1 and retried[0].params == failed[0].params


def _postgres_url() -> str | None:
    url = os.environ.get("ICL_SEARCH_TEST_POSTGRES") or (
                         "postgresql://icl:icl@127.0.0.1:5432/icl_search_test")
    try:
        import sqlalchemy as sa

        with sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://")).connect():
            return url.replace("postgresql://", "postgresql+psycopg://")
    except Exception:
        return None


@contextlib.contextmanager
def _fresh_database(url: str):
    """A new, empty database on the test server (dropped afterwards): what a user has on day
    one, before any worker created Optuna's tables."""
    import sqlalchemy as sa

    name = f"icl_cold_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"cannot create a database on the test server ({exc.__class__.__name__}): "
                    "scripts/postgres.sh grants the test role CREATEDB")
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def _workers(path: Path, url: str, n: int, tmp_path: Path) -> tuple[list[int], list[str]]:
    """`n` `study worker` processes started together on `url`; their exit codes and logs."""
    logs = [tmp_path / f"w{i}.log" for i in range(n)]
    procs = [subprocess.Popen(_cli("study", "worker", str(path), "--storage", url),
                              stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env())
             for log in logs]
    codes = [p.wait(timeout=900) for p in procs]
    return codes, [log.read_text() for log in logs]


@pytest.mark.postgres
def test_four_workers_started_at_once_on_an_empty_postgresql_database_all_succeed(
        tmp_path, tiny_model_dir):
    url = _postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server (run `make test`, which starts one)")
    with _fresh_database(url) as fresh:
        path = write_config(tmp_path, tiny_model_dir, name="cold",
                            optuna="batch_trials = 1\nn_trials = 6")
        # all four open the storage at once, in preflight, before any model loads: without the
        # schema lock all but one died on CREATE TABLE (UniqueViolation, pg_type_typname_nsp)
        codes, logs = _workers(path, fresh, 4, tmp_path)
        assert codes == [0, 0, 0, 0], logs
        trials = optuna.load_study(study_name="cold", storage=fresh).get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert sum(t.user_attrs.get("role") == "baseline" for t in trials) == 1


@pytest.mark.postgres
def test_two_workers_on_postgresql_share_one_exact_budget(tmp_path, tiny_model_dir):
    url = _postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server (run `make test`, which starts one)")
    name = f"pg_{uuid.uuid4().hex[:12]}"
    path = write_config(tmp_path, tiny_model_dir, name=name,
                        optuna="batch_trials = 2\nn_trials = 7")
    procs = []
    for i in range(2):
        log = (tmp_path / f"w{i}.log").open("w")
        procs.append(subprocess.Popen(_cli("study", "worker", str(path), "--storage", url),
                                      stdout=log, stderr=log, env=_env()))
    for p in procs:
        p.wait(timeout=900)
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials()
    assert len(trials) == 7
    assert sorted(t.number for t in trials) == list(range(7))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert sum(t.user_attrs.get("role") == "baseline" for t in trials) == 1
    # both workers did some of the work
    assert all("trial " in log for log in logs), logs


def test_optuna_dashboard_serves_the_storage(tmp_path, tiny_model_dir, tiny_engine):
    path = write_config(tmp_path, tiny_model_dir, name="dash", optuna="n_trials = 2")
    cfg = load_config(path)
    run_study(cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None))
    port = free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(exe), cfg.storage_url, "--host", "127.0.0.1", "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", proc, timeout=120)
        studies = httpx.get(f"http://127.0.0.1:{port}/api/studies").json()["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash"]
        detail = httpx.get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}").json()
        assert len(detail["trials"]) == 2 and detail["best_trials"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_export_round_trip_renders_what_the_study_evaluated(tmp_path, tiny_model_dir,
                                                            tiny_engine):
    from icl_search.bundle import Bundle
    from icl_search.prompt import Budget

    path = write_config(tmp_path, tiny_model_dir, name="exp", optuna="n_trials = 4")
    cfg = load_config(path)
    run_study(cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None))
    study = open_study(cfg)
    budget = Budget(tiny_engine.count_tokens, tiny_engine.context_window)
    for number in (0, study.best_trial.number):
        out = tmp_path / f"b{number}.json"
        r = runner.invoke(app, ["export", str(path), "--trial", str(number), "--out", str(out),
                                "--format", "urial"])
        assert r.exit_code == 0, r.output
        b = Bundle.load(out)
        trial = study.trials[number]
        assert b.provenance.trial == number and b.scores.overall == pytest.approx(trial.value)
        assert b.provenance.config_hash == cfg.hash
        for rec in load_trial_records(cfg, trial):
            assert b.render(rec["query"], budget=budget, max_tokens=8) == rec["prompt"]
    baseline = Bundle.load(tmp_path / "b0.json")
    assert baseline.mode == "fixed" and [e.id for e in baseline.examples] == ["factual-001",
                                                                                "advice-001"]
    assert (tmp_path / "b0.urial.txt").read_text() == baseline.to_urial()
    # by study name and storage URL, the default is the best trial
    out = tmp_path / "best.json"
    r = runner.invoke(app, ["export", "exp", "--storage", cfg.storage_url, "--out", str(out)])
    assert r.exit_code == 0 and Bundle.load(out).provenance.trial == study.best_trial.number
    r = runner.invoke(app, ["export", str(path), "--trial", "99", "--out", str(out)])
    assert r.exit_code == 2 and "--trial 99: no such trial" in r.output


# -- fast: the evaluator and the ask/tell loop on the in-memory engine and judge --------------
def _fake_study(tmp_path, tiny_model_dir, name="fake", **sections):
    sections["search"] = 'strategies = ["fixed"]\n' + sections.get("search", "")
    cfg = load_config(write_config(tmp_path, tiny_model_dir, name=name, **sections))
    engine, judge = FakeEngine(), FakeJudge()
    return cfg, engine, judge, build_evaluator(cfg, engine=engine, judge=judge,
                                               say=lambda m: None)


def test_evaluator_batches_generation_and_judges_with_the_judge_it_is_given(tmp_path,
                                                                            tiny_model_dir):
    from icl_search.study import TrialSpec

    _cfg, engine, judge, ev = _fake_study(tmp_path, tiny_model_dir)
    specs = [TrialSpec("urial_style.txt", 2, "fixed", ("factual-001", "advice-001")),
             TrialSpec("concise.txt", 0, "none", ())]
    recs = ev.evaluate(specs, [0, 1, 2])
    # one engine call for the whole batch (one decoding setting), one judge call
    assert engine.calls == 1 and engine.prompts == 6 and judge.items == 6
    assert [len(r) for r in recs] == [3, 3]
    assert recs[0][0].examples == ["factual-001", "advice-001"] and recs[1][0].examples == []
    assert all(r.judgement is not None and r.judgement.overall is not None
               for rows in recs for r in rows)
    assert recs[0][0].prompt.startswith(ev.systems["urial_style.txt"].rstrip("\n"))
    assert ev.stats.judged == 6 and ev.stats.generated == 6
    # the screen pass judges with the cheap judge only and counts apart
    screen = FakeJudge()
    from icl_search.study.evaluate import Evaluator

    ev2 = Evaluator(engine=engine, judge=judge, screen=screen, pool=ev.pool,
                    queries=ev.queries, systems=ev.systems, params=ev.params,
                    needs_index=False)
    ev2.evaluate(specs[:1], [0, 1], screen=True)
    assert screen.items == 2 and judge.items == 6
    assert ev2.stats.judged == 0 and ev2.screen_stats.screened == 2
    with pytest.raises(ValueError, match="no screening judge"):
        ev.evaluate(specs, [0], screen=True)


def test_a_prompt_too_long_for_the_window_is_an_error_record_not_a_crash(tmp_path,
                                                                          tiny_model_dir):
    from icl_search.study import TrialSpec
    from icl_search.study.evaluate import Evaluator

    _cfg, _engine, judge, ev = _fake_study(tmp_path, tiny_model_dir)
    small = Evaluator(engine=FakeEngine(context_window=12), judge=judge, pool=ev.pool,
                      queries=ev.queries, systems=ev.systems, params=ev.params,
                      needs_index=False)
    (rows,) = small.evaluate([TrialSpec("urial_style.txt", 0, "none", ())], [0])
    assert rows[0].finish_reason == "error" and "does not fit" in rows[0].error
    assert rows[0].answer is None and rows[0].judgement.overall is None


def test_ask_tell_loop_on_the_fake_engine(tmp_path, tiny_model_dir):
    from icl_search.study.runner import decide

    cfg, _engine, _judge, ev = _fake_study(tmp_path, tiny_model_dir)
    seen = []
    lines = []
    s = run_study(cfg, ev, progress=lines.append, monitor=seen.append)
    trials = open_study(cfg).get_trials()
    assert len(trials) == 5 and s.finished + s.pruned == 5 and s.missing_references == []
    assert trials[0].user_attrs["role"] == "baseline" and trials[0].state == TrialState.COMPLETE
    # the live display saw the budget fill up and the best score so far
    assert seen[-1].done == 5 and seen[-1].total == 5 and seen[-1].best is not None
    assert any(0 < p.batch_items < p.batch_total for p in seen)
    assert sum(line.startswith("trial ") for line in lines) == 5
    # the tell decision: coverage below the minimum fails the trial with a reason
    from icl_search.study.evaluate import TrialEvaluation

    te = TrialEvaluation(_baseline_spec(cfg, ev.pool.ids))
    te.records = ev.evaluate([te.spec], [0, 1])[0]
    from icl_search.judge import JudgeItem

    r0 = te.records[0]  # as if the judge could not score the first answer
    (r0.judgement,) = FakeJudge().score([JudgeItem("0", r0.query, None, r0.category)]).items
    strict = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"min_coverage": 1.0})})
    out = decide(strict, te, te.result(), None, pruned=False)
    assert out.state == TrialState.FAIL and "judge coverage below 100%" in out.fail_reason
    assert decide(cfg, te, te.result(), None, pruned=True).state == TrialState.PRUNED
    ok = decide(cfg, te, te.result(), None, pruned=False)
    assert ok.state == TrialState.COMPLETE and ok.values == pytest.approx(te.result().overall)


def _baseline_spec(cfg, pool_ids):
    from icl_search.study import TrialSpec, baseline_params

    p = baseline_params(cfg, pool_ids)
    return TrialSpec(p["system"], p["k"], p.get("strategy", "none"),
                     tuple(p[f"ex_{i}"] for i in range(p["k"])))


def _lose_the_baseline(cfg, pool_ids, times: int) -> None:
    """Ask the baseline trial and let its 'worker' die `times` times (no heartbeat after the
    first, so it goes stale), past max_retry."""
    from icl_search.study.runner import ensure_baseline

    study = open_study(cfg)
    ensure_baseline(study, cfg, pool_ids, cfg.storage_url)
    for _ in range(times):
        t = study.ask()
        assert t.user_attrs.get("role") == "baseline"
        study._storage.record_heartbeat(t._trial_id)
        time.sleep(3.5)  # past the grace period (2 heartbeats of 1 s; SQLite keeps seconds)
        optuna.storages.fail_stale_trials(study)


def test_a_baseline_lost_past_max_retry_is_retried_until_it_completes(tmp_path,
                                                                      tiny_model_dir):
    cfg, _engine, _judge, ev = _fake_study(tmp_path, tiny_model_dir, name="lost",
                                         optuna="heartbeat_seconds = 1\nmax_retry = 1")
    _lose_the_baseline(cfg, ev.pool.ids, times=2)  # the first retry is Optuna's, the second is not
    study = open_study(cfg)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 2
    lines = []
    s = run_study(cfg, ev, progress=lines.append)
    trials = open_study(cfg).get_trials()
    base = [t for t in trials if t.user_attrs.get("role") == "baseline"]
    assert [t.state for t in base] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    from icl_search.study import baseline_params

    assert base[-1].params == baseline_params(cfg, ev.pool.ids) and s.missing_references == []
    assert any("enqueued again" in line for line in lines)
    assert s.finished + s.pruned == 5  # the lost attempts did not use up the budget


def test_a_study_without_a_baseline_says_so(tmp_path, tiny_model_dir):
    from icl_search.study.runner import ensure_baseline

    cfg, _engine, _judge, ev = _fake_study(tmp_path, tiny_model_dir, name="nobase",
                                         optuna="n_trials = 3")
    study = open_study(cfg)
    ensure_baseline(study, cfg, ev.pool.ids, cfg.storage_url)
    t = study.ask()  # the baseline, failed by the study itself: not retried
    t.set_user_attr("fail_reason", "judge coverage below 50%: helpfulness 0/6")
    study.tell(t, state=TrialState.FAIL)
    lines = []
    s = run_study(cfg, ev, progress=lines.append)
    assert s.missing_references == ["baseline"]
    assert any(line.startswith("warning: the study has no finished baseline trial")
               for line in lines)
    r = runner.invoke(app, ["study", "status", str(cfg.source)])
    assert r.exit_code == 0 and "no finished baseline trial" in r.output


# -- bad inputs and read-only commands (no model loads, nothing is created) ------------------
def test_read_only_commands_never_create_a_study(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir, name="ro")
    db = tmp_path / "ro.db"
    for cmd in (["status"], ["trials"], ["report", "--out", str(tmp_path / "rep")],
                ["trial", "--out", str(tmp_path / "t.parquet")]):
        args = ["study", cmd[0], str(path)] + (["0"] if cmd[0] == "trial" else []) + cmd[1:]
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (cmd, r.output)
        assert f"no study storage at {db} (from {path}): run `icl-search study run" in r.output
    r = runner.invoke(app, ["study", "trial", str(path), "0", "--out", str(tmp_path / "t.csv")])
    assert r.exit_code == 2 and f"--out {tmp_path / 't.csv'}: expected a .parquet file" in \
        " ".join(r.output.split())
    r = runner.invoke(app, ["export", str(path), "--out", str(tmp_path / "b.json")])
    assert r.exit_code == 2 and f"no study storage at {db}" in r.output
    r = runner.invoke(app, ["export", "ro", "--storage", f"sqlite:///{db}",
                            "--out", str(tmp_path / "b.json")])
    assert r.exit_code == 2 and f"no study storage at {db}" in r.output
    assert not db.exists() and not (tmp_path / "rep").exists()
    assert not (tmp_path / "t.parquet").exists() and not (tmp_path / "b.json").exists()
    assert not (tmp_path / "t.csv").exists()
    # a storage that holds other studies: their names are listed, no study is added
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    r = runner.invoke(app, ["study", "status", str(path)])
    assert r.exit_code == 2
    assert f"no study named 'ro' in sqlite:///{db}; studies there: other" in r.output
    r = runner.invoke(app, ["export", "ro", "--storage", f"sqlite:///{db}",
                            "--out", str(tmp_path / "b.json")])
    assert r.exit_code == 2
    assert f"no study named 'ro' in sqlite:///{db}; studies there: other" in r.output
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["other"]


@pytest.mark.parametrize("url, message", [
    ("mysql://root:hunter2@127.0.0.1:1/optuna",
     "cannot open the study storage mysql://127.0.0.1:1/optuna: "),
    ("not a url", "cannot open the study storage not a url: ArgumentError"),
    # a one-letter password is removed as a token, not from every word that holds the letter
    ("postgresql://u:p@127.0.0.1:1/x",
     "cannot open the study storage postgresql://127.0.0.1:1/x: OperationalError: (psycopg"),
])
def test_a_storage_that_cannot_open_is_one_message_before_any_model_loads(
        tmp_path, tiny_model_dir, url, message):
    path = write_config(tmp_path, tiny_model_dir, name="st")
    for cmd in ("run", "validate"):
        r = runner.invoke(app, ["study", cmd, str(path), "--storage", url])
        assert r.exit_code == 2, r.output
        assert message in r.output and "hunter2" not in r.output and "u:p@" not in r.output
        assert "Traceback" not in r.output and "loading the base model" not in r.output
    assert not list(tmp_path.glob("*.db"))


@pytest.mark.parametrize("edit, message", [
    (('example_ids = ["factual-001", "advice-001"]', 'example_ids = ["factual-001", "nope-9"]'),
     "field 'search.baseline.example_ids': not in the pool"),
    (("k = [0, 2]", 'k = [0, 2]\nfixed_candidates = ["advice-001", "gone-1"]'),
     "field 'search.fixed_candidates': not in the pool"),
    (('spec = "logprob:vllm:', 'spec = "logprob:vllm:/no/such/judge'),
     "field 'judge.spec': model folder not found: /no/such/judge"),
])
def test_preflight_names_the_field_before_any_model_loads(tmp_path, tiny_model_dir, edit,
                                                          message):
    path = write_config(tmp_path, tiny_model_dir, name="pf")
    text = path.read_text()
    if edit[0].startswith('spec = "logprob'):  # the whole judge path
        text = text.replace(f'spec = "logprob:vllm:{tiny_model_dir}"',
                            'spec = "logprob:vllm:/no/such/judge"')
    else:
        text = text.replace(*edit, 1)
    path.write_text(text)
    for cmd in ("validate", "run"):
        r = runner.invoke(app, ["study", cmd, str(path)])
        assert r.exit_code == 2, r.output
        assert f"{path}: {message}" in " ".join(r.output.split())
        assert "loading the base model" not in r.output
    assert not (tmp_path / "pf.db").exists()


@pytest.mark.parametrize("uptime", [5.0, 1e6], ids=["machine-up-5s", "machine-up-11-days"])
def test_plain_progress_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch, uptime):
    from icl_search.cli import study as cli_study
    from icl_search.cli.study import _Live
    from icl_search.study.runner import Progress

    # time.monotonic() counts from an arbitrary point (boot, on Linux): the first line must
    # print whatever it reads, on a machine booted seconds ago too
    monkeypatch.setattr(cli_study.time, "monotonic", lambda: uptime)
    with _Live(every=3600) as live:
        assert not live.tty  # pytest captures stderr: not a terminal
        live(Progress(0, 4, 0, 6, None, 0.0))
        live(Progress(1, 4, 3, 6, 3.5, 10.0))  # within `every`: not printed
        live(Progress(4, 4, 6, 6, 3.75, 40.0))  # the end is always printed
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "progress: trials 0/4, batch items 0/6, elapsed 0s, ETA -, best -",
        "progress: trials 4/4, batch items 6/6, elapsed 40s, ETA 0s, best 3.750",
    ]


def test_a_worker_killed_before_its_first_heartbeat_does_not_stall_the_study(tmp_path,
                                                                             tiny_model_dir):
    cfg, _engine, _judge, ev = _fake_study(tmp_path, tiny_model_dir, name="orphan",
                                         optuna="heartbeat_seconds = 1\nn_trials = 3")
    from icl_search.study.runner import ensure_baseline

    study = open_study(cfg)
    ensure_baseline(study, cfg, ev.pool.ids, cfg.storage_url)
    orphan = study.ask()  # RUNNING, and its worker died before recording any heartbeat
    s = run_study(cfg, ev)
    trials = open_study(cfg).get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert s.finished + s.pruned == 3 and s.missing_references == []
    assert [t.state for t in trials if t.user_attrs.get("role") == "baseline"] == [
        TrialState.FAIL, TrialState.COMPLETE]
