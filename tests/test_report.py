"""Study reports: one best named everywhere (the one `export` takes), one score for a judge
that gives one score, the judges side by side (in-memory engine and judges, real plots)."""

from __future__ import annotations

from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.report import write_report
from icl_search.study import build_evaluator, load_config, open_study, run_study
from icl_search.study.confirm import confirm
from tests.helpers import FakeEngine, FakeJudge, confirm_config

runner = CliRunner()


class AuditJudge(FakeJudge):
    id = "audit-judge"


def test_the_report_names_the_exported_best_and_shows_one_score(tmp_path, tiny_model_dir):
    path = confirm_config(tmp_path, tiny_model_dir, "rep", judge="audit = []",
                          optuna="n_trials = 4")
    cfg = load_config(path)
    ev = build_evaluator(cfg, engine=FakeEngine(), judge=FakeJudge(), say=lambda m: None)
    run_study(cfg, ev)
    study = open_study(cfg)
    s = confirm(study, cfg, ev, audit=[AuditJudge()])
    write_report(cfg, open_study(cfg), tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    best = s.best
    # the first line after the title names the one best, the one the export takes
    first = md.splitlines()[2]
    assert first.startswith(f"Best: trial {best.trial} (")
    assert "best (" in md and f"(trial {best.trial})" in md
    # the fake judge gives one score per answer: one row, not five identical aspects
    assert "| score |" in md and "| helpfulness |" not in md and "| overall |" in md
    assert "(one score per answer, and safety)" in md
    assert (tmp_path / "rep" / "aspects.png").stat().st_size > 0
    # the trials table counts each trial's answer hygiene
    head = (tmp_path / "rep" / "trials.csv").read_text().splitlines()[0].split(",")
    assert {"defects", "hygiene_failed", "at_max_tokens"} <= set(head)
    # the judges side by side, the verdict, hygiene
    assert "`fake-judge` gain (95% CI, p)" in md and "`audit-judge` gain (95% CI, p)" in md
    assert "at equal length" in md and "Answer hygiene on the search split" in md
    assert s.sentence() in md
    r = runner.invoke(app, ["study", "report", str(path), "--out", str(tmp_path / "rep2")])
    assert r.exit_code == 0, r.output
    assert "`audit-judge` gain (95% CI, p)" in r.output and s.sentence() in r.output
    # export says which judges saw what, and when it kept the baseline
    r = runner.invoke(app, ["export", str(path), "--out", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    assert "`audit-judge` gain" in r.output
    if not s.beat_baseline:
        assert "export kept the baseline (trial 0)" in r.output
