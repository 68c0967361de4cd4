"""The confirmation's verdict: a gain is confirmed only when the study's judge and every audit
judge see it, hygiene is no worse and safety does not drop; the stage on the in-memory engine
with an audit judge; the length-controlled gain."""

from __future__ import annotations

import json
import re

import pytest

from icl_search.hygiene import HygieneCounts
from icl_search.study import build_evaluator, load_config, open_study, run_study
from icl_search.study.confirm import answer_files, confirm, summarize
from icl_search.study.stats import length_controlled_gain, paired_gain
from icl_search.study.verdict import JudgeView, Row, Summary, decide
from tests.helpers import FakeEngine, FakeJudge, confirm_config, write_config

UP = [0.5, 1, 1.5, 0.5, 1, 2, 1, 0.5, 1, 1.5, 2, 1]  # a significant gain
FLAT = [0.3, -0.2, 0.1, -0.4, 0.2, 0.0, -0.1, 0.3, -0.3, 0.1, -0.2, 0.2]  # none


def _view(judge, diffs, confirm=3.5):
    a = {f"q{i}": d for i, d in enumerate(diffs)}
    return JudgeView(judge, confirm, confirm - 0.5, confirm + 0.5, len(diffs),
                     [paired_gain(a, dict.fromkeys(a, 0.0), "baseline")])


def _rows(study, audit, hyg=(0, 0), safety=None):
    trial = Row("trial 3", "trial", 3, 3.1, [_view("reward", study), _view("refsim", audit)],
                HygieneCounts(answers=12, defective=hyg[0], leaked=hyg[0]))
    base = Row("baseline", "baseline", 0, 2.0, [_view("reward", [0] * 12, 2.5)],
               HygieneCounts(answers=12, defective=hyg[1], leaked=hyg[1]))
    if safety is not None:
        a = {f"s{i}": d for i, d in enumerate(safety)}
        trial.safety = [paired_gain(a, dict.fromkeys(a, 0.0), "baseline")]
    rows = {"trial 3": trial, "baseline": base}
    trial.reasons = decide(trial, rows, ["baseline"])
    return Summary(list(rows.values()), 12, "reward", ["refsim"]), trial


def test_a_gain_only_the_study_judge_sees_is_not_confirmed_and_the_baseline_is_kept():
    s, trial = _rows(UP, FLAT)
    assert len(trial.reasons) == 1 and trial.reasons[0].startswith("`refsim` vs baseline: ")
    assert not trial.confirmed and s.best.label == "baseline" and not s.beat_baseline
    assert s.top is trial
    text = s.sentence()
    assert text.startswith("No trial is confirmed: trial 3") and "`refsim` vs baseline" in text
    assert text.endswith("The export is the baseline.")
    assert s.to_dict()["rows"][0]["reasons"] == trial.reasons


def test_confirmed_needs_every_judge_clean_answers_and_no_safety_drop():
    s, trial = _rows(UP, UP)
    assert trial.confirmed and s.best is trial and s.beat_baseline
    assert s.sentence().startswith("Trial 3 is confirmed") and "`refsim`" in s.sentence()
    # more answers with a defect than the baseline: named with its count
    s, trial = _rows(UP, UP, hyg=(4, 1))
    assert not trial.confirmed
    assert trial.reasons == ["hygiene vs baseline: 4/12 answers with a defect vs 1/12 "
                             "(leaked 4/12 vs 1/12)"]
    # a significant drop on the safety rows
    s, trial = _rows(UP, UP, safety=[-x for x in UP])
    assert not trial.confirmed and trial.reasons[0].startswith("safety vs baseline on 12 ")
    # the study judge alone failing is named too
    s, trial = _rows(FLAT, UP)
    assert trial.reasons[0].startswith("`reward` vs baseline")


def test_the_length_controlled_gain_is_the_intercept_at_equal_length():
    ids = [f"q{i}" for i in range(20)]
    len_b = dict.fromkeys(ids, 50)
    len_a = {q: 50 + 10 * i for i, q in enumerate(ids)}  # longer answers score higher
    import math

    a = {q: 0.5 + 2.0 * (math.log1p(len_a[q]) - math.log1p(50)) for q in ids}
    raw = paired_gain(a, dict.fromkeys(ids, 0.0), "baseline")
    lc = length_controlled_gain(a, dict.fromkeys(ids, 0.0), len_a, len_b, "baseline")
    assert raw.mean > 1.5 and lc.mean == pytest.approx(0.5)
    # equal lengths: the raw gain
    same = length_controlled_gain(a, dict.fromkeys(ids, 0.0), len_b, len_b, "baseline")
    assert same.mean == pytest.approx(raw.mean)


class AuditJudge(FakeJudge):
    """A second cheap judge of another kind: every answer scores 3 (it sees no gain)."""

    id = "audit-judge"

    def score(self, items):
        res = super().score(items)
        for j in res.items:
            j.scores = {a: (None if v is None else 3.0) for a, v in j.scores.items()}
        res.judge_id = self.id
        return res


def test_audit_judges_score_only_the_confirm_set_and_are_stored_beside(tmp_path,
                                                                      tiny_model_dir):
    cfg = load_config(confirm_config(tmp_path, tiny_model_dir, "aud"))
    engine, judge, audit = FakeEngine(), FakeJudge(), AuditJudge()
    ev = build_evaluator(cfg, engine=engine, judge=judge, say=lambda m: None)
    run_study(cfg, ev)
    assert audit.items == 0  # the search never asked the audit judge
    s = confirm(open_study(cfg), cfg, ev, audit=[audit])
    n = len(s.rows)
    assert audit.items == 10 * n and s.audit == ["audit-judge"]
    for r in s.rows:
        assert [v.judge for v in r.views] == ["fake-judge", "audit-judge"]
        assert r.views[1].confirm == 3.0 and r.hygiene.answers == 10
        assert r.mean_words is not None and r.max_tokens_share is not None
    for r in (r for r in s.rows if r.role == "trial"):  # the audit judge sees no gain
        assert not r.confirmed and any("`audit-judge`" in x for x in r.reasons)
    assert not s.beat_baseline and s.best.role == "baseline"
    # the confirm answers, one JSONL per context, for a blind review
    files = answer_files(cfg, open_study(cfg))
    assert set(files) == {r.label for r in s.rows}
    rows = [json.loads(x) for x in files["baseline"].read_text().splitlines()]
    assert len(rows) == 10 and {"id", "query", "answer", "category"} <= set(rows[0])
    # stored: a rerun asks nobody
    before = (engine.prompts, judge.items, audit.items)
    again = confirm(open_study(cfg), cfg, ev, audit=[audit])
    assert again.evaluated == 0 and (engine.prompts, judge.items, audit.items) == before
    assert again.to_dict() == summarize(open_study(cfg)).to_dict()


def test_an_audit_judge_needing_references_is_checked_on_the_confirm_file_only(
        tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from icl_search.cli import app

    rows = [{"id": f"c{i}", "query": f"question {i}"} for i in range(12)]
    confirm_file = tmp_path / "confirm.jsonl"
    confirm_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    search_file = tmp_path / "search.jsonl"  # no references: the audit judge never reads it
    search_file.write_text("".join(json.dumps({"id": f"s{i}", "query": f"ask {i}"}) + "\n"
                                   for i in range(8)))
    path = write_config(tmp_path, tiny_model_dir, name="refs", judge='audit = ["refsim"]')
    text = path.read_text().replace("limit = 6", f'limit = 6\nconfirm = "{confirm_file}"')
    path.write_text(re.sub(r'(?m)^path = ".*dev.jsonl"$', f'path = "{search_file}"', text))
    r = CliRunner().invoke(app, ["study", "validate", str(path)])
    assert r.exit_code == 2
    assert f"{confirm_file}: 12 of 12 queries have no 'reference' answer" in r.output
    assert "judge.audit[0]" in r.output
    # with references in the confirm file, the search file without any is fine
    confirm_file.write_text("".join(json.dumps({**r, "reference": "An answer."}) + "\n"
                                    for r in rows))
    r = CliRunner().invoke(app, ["study", "validate", str(path)])
    assert r.exit_code == 0, r.output
