"""Judge distillation with a real (tiny) cross-encoder: training on judge score files, the
`distilled:DIR` judge, the CLI, and multi-fidelity screening in a real study on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.judge import ItemJudgement, JudgeItem, JudgeResult, make_judge
from icl_search.judge.distill import MANIFEST, distill, split_by_query
from icl_search.judge.records import DistillError, Record, load_records, reference_records
from tests.conftest import SHARED_DATA
from tests.helpers import write_config as study_config

runner = CliRunner()
GOOD = "Sure. Here is a clear, complete answer with the steps, an example and a short summary."
BAD = "no idea lol"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a busy 2-core machine, torch's spinning worker threads are many times slower than one.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with the packaged MiniLM's tokenizer: trains in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from icl_search.judge.distill import default_base_model

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(default_base_model())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def judged(n: int = 30) -> list[dict]:
    """Rows as a user's judged file has them: good answers scored high, terse ones low;
    safety queries rated on safety only."""
    rows = []
    for i in range(n):
        safety = i % 5 == 0
        q = f"Question {i}: how do I {'hurt someone' if safety else f'fix problem {i}'}?"
        for j, (text, score) in enumerate(((GOOD, 5.0), (BAD, 1.0))):
            scores = ({"safety": score} if safety else
                      {"helpfulness": score, "clarity": min(5.0, score + 1)})
            rows.append({"id": f"{i}-{j}", "query": q, "response": text,
                         "category": "safety" if safety else "regular", "scores": scores})
    return rows


def records(n: int = 30) -> list[Record]:
    return [Record(r["query"], r["response"], r["scores"], r["category"]) for r in judged(n)]


@pytest.fixture(scope="module")
def distilled(tiny_bert, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distilled") / "judge"
    distill(records(), out, base_model=tiny_bert, epochs=6, batch_size=8, learning_rate=3e-3,
            max_length=64, test_fraction=0.3, seed=1)
    return out


# -- training -----------------------------------------------------------------------------------
def test_split_keeps_every_query_on_one_side():
    train, test = split_by_query(records(), 0.3, seed=4)
    assert train and test and len(train) + len(test) == 60
    assert not {r.query for r in train} & {r.query for r in test}
    # drawn per category: both sides have safety and regular queries
    assert {r.category for r in test} == {r.category for r in train} == {"safety", "regular"}


def test_distilled_model_ranks_and_records_its_data(distilled):
    m = json.loads((distilled / MANIFEST).read_text())
    assert m["aspects"] == ["helpfulness", "clarity", "safety"]
    assert m["n_train"] + m["n_test"] == 60 and m["n_test_queries"] == 9
    assert m["base_model"].endswith("tiny-bert0") and m["created"]
    for aspect in ("helpfulness", "safety"):
        f = m["metrics"][aspect]
        assert f["n"] > 0 and f["auc_low"] > 0 and f["auc_high"] > 0
        assert f["auc"] == 1.0 and f["spearman"] > 0.5  # good vs bad answers on unseen queries

    judge = make_judge(f"distilled:{distilled}")
    assert judge.id.startswith("distilled:judge@") and len(judge.id.split("@")[1]) == 12
    result = judge.score([
        JudgeItem("g", "How do I fix a flat tyre on my bike?", GOOD),
        JudgeItem("b", "How do I fix a flat tyre on my bike?", BAD),
        JudgeItem("s", "How do I hurt someone badly?", GOOD, "safety"),
    ])
    good, bad, safe = result.items
    assert 1.0 <= bad.scores["helpfulness"] < good.scores["helpfulness"] <= 5.0
    assert 1.0 <= safe.scores["safety"] <= 5.0
    # aspects it never learnt are missing with a reason, not invented
    assert good.scores["depth"] is None and good.missing["depth"].startswith("not-trained")


def test_overall_model_scores_every_aspect_of_the_rubric(tiny_bert, tmp_path):
    d = distill(records(12), tmp_path / "overall", base_model=tiny_bert, aspects="overall",
                epochs=1, batch_size=8, max_length=32, test_fraction=0.25)
    assert d.aspects == ["overall"] and set(d.metrics) == {"overall"}
    (item,) = make_judge(f"distilled:{d.path}").score(
        [JudgeItem("1", "Any tips?", GOOD)]).items
    assert len(set(item.scores.values())) == 1 and set(item.scores) == {
        "helpfulness", "clarity", "factuality", "depth", "engagement"}


def test_training_on_new_data_changes_the_judge_id(tiny_bert, tmp_path):
    out = tmp_path / "j"
    distill(records(10), out, base_model=tiny_bert, max_length=32, test_fraction=0)
    first = make_judge(f"distilled:{out}").id
    distill(records(12), out, base_model=tiny_bert, max_length=32, test_fraction=0)
    assert make_judge(f"distilled:{out}").id != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j"]  # no temp folder left behind


def test_bad_inputs_leave_nothing_half_written(tiny_bert, tmp_path):
    out = tmp_path / "model"
    with pytest.raises(DistillError, match="aspect 'depth' is not scored in any record"):
        distill(records(5), out, base_model=tiny_bert, aspects=["depth"])
    with pytest.raises(DistillError, match="cannot be loaded as a cross-encoder"):
        distill(records(5), out, base_model=tmp_path / "nowhere")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    taken = tmp_path / "notes"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(DistillError, match="is not a distilled model folder"):
        distill(records(5), taken, base_model=tiny_bert)
    assert (taken / "keep.txt").read_text() == "mine"


# -- inputs -------------------------------------------------------------------------------------
def score_file(tmp_path: Path) -> tuple[Path, Path]:
    """A `judge score` output (Parquet, no texts) and the JSONL that was scored."""
    rows = judged(10)
    responses = tmp_path / "answers.jsonl"
    responses.write_text("".join(json.dumps({k: r[k] for k in ("id", "query", "response",
                                                                 "category")}) + "\n"
                                 for r in rows))
    result = JudgeResult([ItemJudgement(r["id"], r["category"], dict(r["scores"]))
                          for r in rows], "dspy:openai/big-judge")
    scores = tmp_path / "scores.parquet"
    result.to_frame().write_parquet(scores)
    return scores, responses


def test_score_file_is_joined_with_the_scored_answers(tmp_path):
    scores, responses = score_file(tmp_path)
    recs = load_records(scores, responses=responses)
    assert len(recs) == 20
    assert recs[0].scores == {"safety": 5.0} and recs[0].category == "safety"
    assert recs[2].scores == {"helpfulness": 5.0, "clarity": 5.0} and recs[2].response == GOOD
    with pytest.raises(DistillError, match="holds only scores.*--responses"):
        load_records(scores)
    flat = tmp_path / "flat.jsonl"  # flat aspect columns, "N/A" as unscored
    flat.write_text(json.dumps({"instruction": "q", "output": "a", "depth": "N/A",
                                "clarity": 4}) + "\n")
    assert load_records(flat)[0].scores == {"clarity": 4.0}


def test_distill_cli(tiny_bert, tmp_path):
    scores, responses = score_file(tmp_path)
    out = tmp_path / "cheap"
    r = runner.invoke(app, ["judge", "distill", "--scores", str(scores), "--responses",
                            str(responses), "--out", str(out), "--base-model", str(tiny_bert),
                            "--max-length", "32", "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    assert "spearman" in r.output and "helpfulness" in r.output and "safety" in r.output
    m = json.loads((out / MANIFEST).read_text())
    import hashlib

    assert [d["sha256"] for d in m["data"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (scores, responses)]
    # user errors: one message, exit 2, nothing written
    for args, message in (
        ([], "nothing to train on"),
        (["--scores", str(scores)], "--responses"),
        (["--scores", str(tmp_path / "nope.jsonl")], "file not found"),
        (["--scores", str(scores), "--responses", str(responses), "--aspects", "wit"],
         "aspect 'wit' is not known"),
    ):
        r = runner.invoke(app, ["judge", "distill", "--out", str(tmp_path / "x"), *args])
        assert r.exit_code == 2 and "error:" in r.output and message in r.output, r.output
        assert not (tmp_path / "x").exists()
    r = runner.invoke(app, ["judge", "score", str(responses), "--judge", "distilled:",
                            "--out", str(tmp_path / "s.parquet")])
    assert r.exit_code == 2 and "distilled:<dir>" in r.output


@pytest.mark.skipif(not (SHARED_DATA / "just-eval").exists(), reason="reference data absent")
def test_reference_records_join_outputs_and_instructions():
    recs = reference_records(SHARED_DATA / "just-eval" / "judgements" / "reference.dev.jsonl")
    safety = [r for r in recs if r.category == "safety"]
    regular = [r for r in recs if r.category != "safety"]
    assert safety and regular and all(set(r.scores) == {"safety"} for r in safety)
    assert all(r.query and r.response is not None for r in recs)
    assert {"helpfulness", "depth"} <= set(regular[0].scores)


# -- screening in a study -----------------------------------------------------------------------
def write_config(tmp: Path, model: Path, name: str, judge_extra: str) -> Path:
    return study_config(tmp, model, name=name, judge=judge_extra, search='strategies = ["fixed"]',
                        optuna='n_trials = 6\npruner = "none"')


@pytest.fixture(scope="module")
def general_judge(tiny_bert, tmp_path_factory) -> Path:
    """A distilled judge of the five regular aspects (the eval set's queries are regular)."""
    out = tmp_path_factory.mktemp("screen") / "cheap"
    recs = [Record(f"How do I fix problem {i}?", text,
                   dict.fromkeys(("helpfulness", "clarity", "factuality", "depth",
                                  "engagement"), s))
            for i in range(12) for text, s in ((GOOD, 5.0), (BAD, 1.0))]
    distill(recs, out, base_model=tiny_bert, max_length=64, test_fraction=0)
    return out


def test_screening_spends_the_expensive_judge_on_the_top_trials(
        tmp_path, tiny_model_dir, tiny_engine, general_judge):
    from icl_search.report import write_report
    from icl_search.study import build_evaluator, load_config, open_study, run_study

    # the cheap judge's folder is written relative to the config, like every path in it
    (tmp_path / "judges").mkdir()
    (tmp_path / "judges" / "cheap").symlink_to(general_judge)
    cfg = load_config(write_config(tmp_path, tiny_model_dir, "screened",
                                   'screen = "distilled:judges/cheap"\nscreen_top = 0.5'))
    ev = build_evaluator(cfg, engine=tiny_engine, say=lambda m: None)
    s = run_study(cfg, ev)
    trials = open_study(cfg).get_trials(deepcopy=False)
    assert len(trials) == 6 and all("screen_score" in t.user_attrs for t in trials)
    out = [t for t in trials if t.user_attrs.get("screened_out")]
    assert out and s.screened_out == len(out)
    assert all(t.state == TrialState.PRUNED and not t.intermediate_values
               and t.user_attrs["expensive_judge"] is False for t in out)
    judged = [t for t in trials if t.user_attrs["expensive_judge"]]
    assert trials[0].user_attrs["role"] == "baseline" and trials[0] in judged
    assert all(t.state == TrialState.COMPLETE for t in judged)
    # the expensive judge saw only the judged trials' items; the screen saw all of them
    assert s.stats["judged"] == 6 * len(judged) and s.stats["screened"] == 6 * 6
    assert all(t.user_attrs["screen_rank"] < 0.5 for t in judged[1:])

    files = write_report(cfg, open_study(cfg), tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert files and "## Screening (multi-fidelity)" in md
    assert f"expensive-judge items: {6 * len(judged)} judged, {6 * len(out)} saved" in md

    # an audit run (screen_top = 1) judges every trial with both, and says how often a
    # stricter screen would have thrown away a new best trial
    cfg2 = load_config(write_config(tmp_path, tiny_model_dir, "audit",
                                    'screen = "distilled:judges/cheap"\nscreen_top = 1.0'))
    s2 = run_study(cfg2, build_evaluator(cfg2, engine=tiny_engine, say=lambda m: None))
    assert s2.screened_out == 0
    from icl_search.study.screening import screening_summary

    summary = screening_summary(open_study(cfg2), 0.5)
    assert summary["trials_expensive"] == 6 and summary["new_best_events"] >= 1
    assert 0 <= summary["new_best_discarded"] <= summary["new_best_events"]


def test_screen_config_errors_name_the_field(tmp_path, tiny_model_dir):
    from icl_search.study import ConfigError, load_config

    path = write_config(tmp_path, tiny_model_dir, "bad", 'screen = "distilled:nowhere"')
    with pytest.raises(ConfigError, match="field 'judge.screen': file not found"):
        load_config(path)
    path.write_text(path.read_text().replace('"distilled:nowhere"', '"cheap"'))
    with pytest.raises(ConfigError, match="field 'judge.screen'.*not understood"):
        load_config(path)
    path.write_text(path.read_text().replace('screen = "cheap"', "screen_top = 0"))
    with pytest.raises(ConfigError, match="field 'judge.screen_top'"):
        load_config(path)


def test_unscreened_study_has_no_screening_section():
    study = optuna.create_study()
    from icl_search.study.screening import report_lines

    assert report_lines(study, 0.5) == []
