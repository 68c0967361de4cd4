"""The confirm split and the confirmation stage, on the tiny model (generator and judge)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from typer.testing import CliRunner

from icl_search.bundle import Bundle
from icl_search.cli import app
from icl_search.evalset import Query
from icl_search.study import ConfigError, build_evaluator, load_config, open_study, run_study
from icl_search.study.confirm import CONFIRM_ATTR, confirm, summarize
from icl_search.study.splits import (
    SmallConfirmSetWarning,
    SplitError,
    check_overlap,
    embedder_for,
    load_splits,
    split_by_id,
)
from tests.conftest import REPO, SHARED_DATA

try:
    from tests.helpers import write_config
except ImportError:  # before the shared helpers module exists
    from tests.test_study import write_config

runner = CliRunner()
DEV = REPO / "pools" / "eval" / "dev.jsonl"
URIAL = SHARED_DATA / "urial" / "inst_1k.txt"


def _queries(n: int) -> list[Query]:
    return [Query(f"q{i:03d}", f"question number {i} about topic {i * 7 % 13}") for i in range(n)]


def _write_queries(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# -- splits ----------------------------------------------------------------------------------
def test_splits_are_disjoint_deterministic_and_independent_of_order():
    qs = _queries(200)
    search, conf = split_by_id(qs, 0.25, seed=0)
    assert {q.id for q in search}.isdisjoint({q.id for q in conf})
    assert len(search) + len(conf) == 200 and 30 < len(conf) < 70
    # the same ids land in the same split whatever the order, and a longer file keeps them
    _, conf2 = split_by_id(list(reversed(qs)) + _queries(300)[200:], 0.25, seed=0)
    assert {q.id for q in conf} == {q.id for q in conf2 if int(q.id[1:]) < 200}
    # another seed is another split
    assert {q.id for q in split_by_id(qs, 0.25, seed=1)[1]} != {q.id for q in conf}


def test_config_fraction_split_and_small_confirm_set_warns(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir)
    path.write_text(path.read_text().replace("limit = 6", "confirm_fraction = 0.3"))
    cfg = load_config(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dev set's confirm share is not small: no warning
        s = load_splits(cfg)
    assert len(s.confirm) >= 10 and {q.id for q in s.search}.isdisjoint(q.id for q in s.confirm)
    assert load_splits(cfg).fingerprint == s.fingerprint
    # a 2-query confirm file: a clear warning naming the count
    conf = tmp_path / "conf.jsonl"
    _write_queries(conf, [{"id": "c1", "query": "Name a prime number above 100."},
                          {"id": "c2", "query": "How do whales sleep?"}])
    path.write_text(path.read_text().replace("confirm_fraction = 0.3",
                                             f'limit = 6\nconfirm = "{conf}"'))
    with pytest.warns(SmallConfirmSetWarning, match="only 2 queries"):
        load_splits(load_config(path))
    # both a file and a fraction: refused, naming the section
    path.write_text(path.read_text().replace("limit = 6", "limit = 6\nconfirm_fraction = 0.2"))
    with pytest.raises(ConfigError, match="field 'eval': .*either confirm"):
        load_config(path)


def test_overlapping_confirm_set_is_refused_naming_both_ids(tmp_path, tiny_model_dir):
    search = [Query("s1", "How do I bake sourdough bread at home?"),
              Query("s2", "What is the capital of Australia?")]
    with pytest.raises(SplitError, match="confirm query 'c9' is search query 's2'"):
        check_overlap(search, [Query("c9", "what is the CAPITAL of australia")], source="x")
    # a paraphrase: the embedder's cosine is over the threshold
    cfg = load_config(write_config(tmp_path, tiny_model_dir))
    embed = embedder_for(cfg)
    with pytest.raises(SplitError, match=r"'c1' is a near-duplicate of search query 's1' "
                                         r"\(cosine 0\.9\d\d >= 0\.95\)"):
        check_overlap(search, [Query("c1", "How can I bake sourdough bread at home?")],
                      source="x", embed=embed)
    check_overlap(search, [Query("c2", "Which whales sing the longest songs?")], source="x",
                  embed=embed)
    # through the CLI: exit 2 and the message, before any model is loaded
    rows = [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]
    conf = tmp_path / "conf.jsonl"
    _write_queries(conf, [{"id": "new-1", "query": rows[1]["query"].upper()}] +
                   [{"id": f"c{i}", "query": f"Tell me a fact about the number {i}."}
                    for i in range(12)])
    path = write_config(tmp_path, tiny_model_dir, name="ov")
    path.write_text(path.read_text().replace("limit = 6", f'limit = 6\nconfirm = "{conf}"'))
    r = runner.invoke(app, ["study", "run", str(path)])
    assert r.exit_code == 2 and "confirm query 'new-1' is search query" in r.output


def test_missing_urial_file_is_one_message_naming_it(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir)
    missing = tmp_path / "nowhere" / "inst_1k.txt"
    path.write_text(path.read_text().replace(
        'example_ids = ["factual-001", "advice-001"]',
        f'example_ids = ["factual-001", "advice-001"]\nurial = "{missing}"'))
    r = runner.invoke(app, ["study", "validate", str(path)])
    assert r.exit_code == 2
    assert r.output.count("error:") == 1
    assert f"field 'search.baseline.urial': file not found: {missing}" in r.output
    # `study confirm` on a config without a confirm set says what to add
    r = runner.invoke(app, ["study", "confirm", str(write_config(tmp_path, tiny_model_dir,
                                                                 name="plain"))])
    assert r.exit_code == 2 and "no confirm set: add eval.confirm" in r.output


# -- the stage -------------------------------------------------------------------------------
def _confirm_config(tmp_path, model, name: str, **kw):
    path = write_config(tmp_path, model, name=name, **kw)
    text = path.read_text().replace("limit = 6", "limit = 6\nconfirm_fraction = 0.3\n"
                                    "confirm_limit = 10\nconfirm_top = 2")
    text = text.replace('example_ids = ["factual-001", "advice-001"]',
                        f'example_ids = ["factual-001", "advice-001"]\nurial = "{URIAL}"')
    path.write_text(text)
    return path


def test_confirmation_is_stored_never_repaid_and_export_takes_the_confirmed_best(
        tmp_path, tiny_model_dir, tiny_engine):
    path = _confirm_config(tmp_path, tiny_model_dir, "conf")
    cfg = load_config(path)
    ev = build_evaluator(cfg, engine=tiny_engine, say=lambda m: None)
    confirm_ids = {q.id for q in load_splits(cfg).confirm}
    assert not confirm_ids & {q.id for q in ev.queries}  # the search never sees them
    s = run_study(cfg, ev).confirm
    study = open_study(cfg)
    for t in study.trials:  # no trial, pruned or not, has a confirm query's score
        assert not confirm_ids & set(t.user_attrs.get("per_query") or {})
    labels = [r.label for r in s.rows]
    assert labels[-2:] == ["baseline", "urial:inst_1k.txt"] and 1 <= len(labels) - 2 <= 2
    assert s.evaluated == len(labels) and s.n_queries == 10
    assert s.stats["prompts"] == 10 * len(labels)
    for r in s.rows:  # n: the queries the (tiny, untrained) judge gave a score
        assert 5 <= r.n <= 10 and r.low <= r.confirm <= r.high
        assert {g.baseline for g in r.gains} == {"baseline", "urial:inst_1k.txt"} - {r.label}
        for g in r.gains:
            assert g.low <= g.mean <= g.high and 0 <= g.p_value <= 1 and 0 < g.n <= r.n
    trials = [r for r in s.rows if r.role == "trial"]
    assert all(r.shrinkage == pytest.approx(r.search - r.confirm) for r in trials)

    # again: everything is stored, nothing is evaluated, no model call
    calls = tiny_engine.stats.prompts
    again = confirm(study, cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None))
    assert again.evaluated == 0 and tiny_engine.stats.prompts == calls
    assert again.to_dict() == summarize(open_study(cfg)).to_dict()

    # export: the confirmed best by default, the search best on request
    best = s.best
    out = tmp_path / "b.json"
    r = runner.invoke(app, ["export", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    b = Bundle.load(out)
    assert b.provenance.trial == best.trial
    c = b.scores.confirm
    assert c.selected_by == "confirm" and c.score == pytest.approx(best.confirm)
    assert c.n == best.n
    assert c.interval == pytest.approx((best.low, best.high))
    assert c.search_score == pytest.approx(best.search) and c.verdict == s.sentence()
    assert [g.baseline for g in c.gains] == [g.baseline for g in best.gains]
    r = runner.invoke(app, ["export", str(path), "--out", str(out), "--search-best"])
    assert r.exit_code == 0 and Bundle.load(out).provenance.trial == study.best_trial.number
    assert Bundle.load(out).scores.confirm.selected_by == "search"

    # report: search vs confirm per candidate and the one-sentence verdict
    r = runner.invoke(app, ["study", "report", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Confirmation" in md and "| candidate | search | confirm (95% CI) |" in md
    assert s.sentence() in md and "Wilcoxon" in md


def test_nothing_beats_the_baseline_exports_the_baseline_and_says_so(
        tmp_path, tiny_model_dir, tiny_engine):
    # the only trial besides the baseline is the baseline's own context again: a tie
    path = write_config(tmp_path, tiny_model_dir, name="tie", optuna="n_trials = 2",
                        search='enqueue = [{system = "urial_style.txt", k = 2, strategy = '
                               '"fixed", ex_0 = "factual-001", ex_1 = "advice-001"}]')
    path.write_text(path.read_text().replace("limit = 6", "limit = 6\nconfirm_fraction = 0.3\n"
                                             "confirm_limit = 10"))
    cfg = load_config(path)
    s = run_study(cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None)).confirm
    assert not s.beat_baseline and s.best.role == "baseline"
    assert s.sentence().startswith("No trial beat the baseline on the confirm set (n=10)")
    out = tmp_path / "b.json"
    r = runner.invoke(app, ["export", str(path), "--out", str(out)])
    assert r.exit_code == 0 and "No trial beat the baseline" in r.output
    b = Bundle.load(out)
    assert b.provenance.trial == 0 and [e.id for e in b.examples] == ["factual-001",
                                                                        "advice-001"]
    assert b.scores.confirm.beat_baseline is False
    r = runner.invoke(app, ["study", "confirm", str(path)])
    assert r.exit_code == 0 and "No trial beat the baseline" in r.output

    # generate with the bundle (as serve renders it), with a URIAL file, and zero-shot
    from icl_search.prompt import Budget, Template

    qs = load_splits(cfg).confirm[:3]
    qfile = tmp_path / "q.jsonl"
    _write_queries(qfile, [{"id": q.id, "query": q.query} for q in qs])
    budget = Budget(tiny_engine.count_tokens, tiny_engine.context_window)
    expect = {
        "--bundle": [b.render(q.query, budget=budget) for q in qs],
        "--zero-shot": [Template().render("", [], q.query) for q in qs],
    }
    for flag, prompts in expect.items():
        ans = tmp_path / f"a{flag}.jsonl"
        args = [flag, str(out)] if flag == "--bundle" else [flag, "--model", str(tiny_model_dir)]
        r = runner.invoke(app, ["generate", str(qfile), "--out", str(ans), "--with-prompts",
                                "--max-model-len", "1024", *args])
        assert r.exit_code == 0, r.output
        rows = [json.loads(line) for line in ans.read_text().splitlines()]
        assert [x["prompt"] for x in rows] == prompts and all(x["answer"] is not None
                                                                 for x in rows)
    # zero-shot is the template's query block alone: no preamble, no example
    assert expect["--zero-shot"][0] == Template().query_block(qs[0].query) == \
        f"\n# Query:\n```\n{qs[0].query}\n```\n\n# Answer:\n```\n"
    r = runner.invoke(app, ["generate", str(qfile), "--out", str(tmp_path / "u.jsonl"),
                            "--urial", str(tmp_path / "no_such.txt")])
    assert r.exit_code == 2 and f"--urial: URIAL prompt file not found: {tmp_path}" in r.output


def test_killed_confirmation_resumes_without_repaying(tmp_path, tiny_model_dir, tiny_engine):
    path = _confirm_config(tmp_path, tiny_model_dir, "kill", optuna="n_trials = 4\nchunk_size = 1")
    # a cache of its own, so the killed process has work left when it is killed
    path.write_text(path.read_text().replace("seed = 3", f'seed = 3\ncache = "{tmp_path}/c.db"')
                    .replace("limit = 6", "limit = 6\nconfirm_after_run = false"))
    cfg = load_config(path)
    run_study(cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None))
    log = (tmp_path / "confirm.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "icl_search.cli", "study", "confirm",
                             str(path)], stdout=log, stderr=log)
    stored: list[str] = []
    while proc.poll() is None:
        attrs = optuna.load_study(study_name="kill", storage=cfg.storage_url).user_attrs
        stored = [k for k in attrs if k.startswith(CONFIRM_ATTR + ":")]
        if stored:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait()
    assert stored, (tmp_path / "confirm.log").read_text()[-2000:]
    plan = open_study(cfg).user_attrs[CONFIRM_ATTR]
    total = len(plan["candidates"])
    assert len(stored) < total
    s = confirm(open_study(cfg), cfg, build_evaluator(cfg, engine=tiny_engine,
                                                      say=lambda m: None))
    # only the candidates not stored before the kill were evaluated
    assert s.evaluated == total - len(stored) and len(s.rows) == total
    assert s.stats["prompts"] == 10 * s.evaluated
    calls = tiny_engine.stats.prompts
    assert confirm(open_study(cfg), cfg, build_evaluator(
        cfg, engine=tiny_engine, say=lambda m: None)).evaluated == 0
    assert tiny_engine.stats.prompts == calls


# -- verdict and bad input -------------------------------------------------------------------
def _gain(diffs):
    from icl_search.study.confirm import paired_gain

    a = {f"q{i}": d for i, d in enumerate(diffs)}
    return paired_gain(a, {q: 0.0 for q in a}, "baseline")


def test_significant_needs_both_the_interval_and_the_p_value_and_says_which_disagreed():
    # every query better, but n=5: the interval excludes 0 while the exact Wilcoxon p is 0.0625
    g = _gain([0.5, 0.6, 0.7, 0.8, 0.9])
    assert g.low > 0 and g.p_value > 0.05
    assert not g.significant
    assert g.verdict == "not significant (the interval excludes 0 but Wilcoxon p=0.062)"
    # 15 small wins and one large loss: the ranks say "better", the mean's interval spans 0
    g = _gain([1.0] * 15 + [-30.0])
    assert g.p_value < 0.05 and g.low < 0 < g.high
    assert not g.significant and g.verdict.startswith("not significant (Wilcoxon p=0.003 but "
                                                      "the interval includes 0)")
    # both agree: significant, and the report dict carries the verdict
    g = _gain([0.5, 1, 1.5, 0.5, 1, 2, 1, 0.5, 1, 1.5, 2, 1])
    assert g.significant and g.verdict == "significant"
    assert g.report()["significant"] is True and g.report()["verdict"] == "significant"
    g = _gain([-x for x in [0.5, 1, 1.5, 0.5, 1, 2, 1, 0.5, 1, 1.5, 2, 1]])
    assert g.significant and g.verdict == "significantly worse"
    assert "verdict" not in g.to_dict()  # the bundle's ConfirmGain fields stay as they are


def test_confirm_on_a_study_that_does_not_exist_creates_nothing(tmp_path, tiny_model_dir):
    db = tmp_path / "studies.db"
    path = _confirm_config(tmp_path, tiny_model_dir, "ghost",
                           optuna=f'storage = "sqlite:///{db}"')
    r = runner.invoke(app, ["study", "confirm", str(path)])
    assert r.exit_code == 2 and r.output.count("error:") == 1
    assert "study run" in r.output and not db.exists()  # no storage file made
    # a storage that holds another study: named, and still no "ghost" study in it
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    r = runner.invoke(app, ["study", "confirm", str(path)])
    assert r.exit_code == 2 and r.output.count("error:") == 1
    assert "no study named 'ghost'" in r.output and "other" in r.output
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["other"]


# -- bench/alignment.py's splits: never a judge's training query ------------------------------
def _alignment_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("alignment_bench",
                                                  REPO / "bench" / "alignment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_alignment_splits_avoid_the_judges_training_queries_and_refuse_when_too_few():
    from icl_search.judge.prepare import split_groups

    bench = _alignment_bench()
    train, held_a, held_s = split_groups(SHARED_DATA)
    manifest = {"split": {"held_out_alpaca_ids": sorted(g.id for g in held_a),
                          "held_out_safety_ids": sorted(g.id for g in held_s)}}
    ids, texts = bench.judge_training([manifest])
    assert len(ids) == len(train)
    n = {"search": 24, "confirm": 24, "test": 40}
    splits, info = bench.draw_queries(n, 0.25, ids, texts)
    norm = bench._norm
    trained = {norm(g.query) for g in train}
    for split, rows in splits.items():
        assert len(rows) == n[split]
        # not by id, and not by text either: just-eval's regular queries repeat AlpacaEval's
        assert not {r["id"] for r in rows} & ids and not {norm(r["query"]) for r in rows} & trained
    all_ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(all_ids) == len(set(all_ids))  # disjoint
    assert info["drawn"]["test"] == {"regular": 30, "safety": 10}
    # AlpacaEval rows carry GPT-4-turbo's reference answer: the audit judge's (refsim) anchor
    ae = [r for rows in splits.values() for r in rows if r["id"].startswith("ae-")]
    assert ae and all(r["reference"] for r in ae)
    assert bench.draw_queries(n, 0.25, ids, texts)[0] == splits  # deterministic
    # only ~40 held-out safety queries exist: asking for more is refused, naming the shortfall
    with pytest.raises(SystemExit, match="just-eval safety needs 100, has 39"):
        bench.draw_queries({"search": 50, "confirm": 50, "test": 100}, 0.5, ids, texts)
