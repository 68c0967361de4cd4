"""Real studies on the tiny model (generator and judge), with SQLite and PostgreSQL storages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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

runner = CliRunner()
POOLS = REPO / "pools"


def write_config(tmp: Path, model: Path, name: str = "t", **sections: str) -> Path:
    """A tiny study config; `optuna=` lines replace the defaults below, `judge=` and `search=`
    lines are added to those sections, other keyword arguments become sections of their own."""
    optuna_extra = sections.pop("optuna", "")
    judge_extra = sections.pop("judge", "")
    search_extra = sections.pop("search", "")
    text = f"""
name = "{name}"
seed = 3
[model]
engine = "vllm:{model}"
max_model_len = 1024
[judge]
spec = "logprob:vllm:{model}"
min_coverage = 0.0
{judge_extra}
[pool]
path = "{POOLS / 'default.jsonl'}"
[eval]
path = "{POOLS / 'eval' / 'dev.jsonl'}"
limit = 6
[decoding]
max_tokens = 8
[search]
system_prompts = ["{POOLS / 'system_prompts' / 'urial_style.txt'}",
                  "{POOLS / 'system_prompts' / 'concise.txt'}"]
k = [0, 2]
{search_extra}
[search.baseline]
example_ids = ["factual-001", "advice-001"]
[optuna]
n_trials = 5
batch_trials = 3
chunk_size = 3
{optuna_extra}
"""
    for line in optuna_extra.splitlines():  # extra optuna keys replace the defaults above
        key = line.split("=")[0].strip()
        text = "\n".join(t for t in text.splitlines()
                         if not (t.startswith(key + " =") and t != line))
    for header, body in sections.items():
        text += f"\n[{header}]\n{body}\n"
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return path


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
    time.sleep(2.5)  # past the grace period (2 heartbeats)
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


@pytest.mark.postgres
def test_two_workers_on_postgresql_share_one_exact_budget(tmp_path, tiny_model_dir):
    url = _postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server (run `make test`, which starts one)")
    name = f"pg{os.getpid()}_{int(time.time())}"
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
