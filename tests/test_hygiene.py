"""Answer hygiene through a study: counts per answer and per trial, and the judge's floor for an
answer still broken after cleaning (on the in-memory engine scripted with the shapes a base
model produced, and the in-memory judge)."""

from __future__ import annotations

from icl_search.hygiene import HygieneCounts, find_loop
from icl_search.study import attrs, build_evaluator, load_config, open_study, run_study
from icl_search.study.space import TrialSpec
from tests.helpers import FakeJudge, ScriptedEngine, write_config

NOTE = "Paris is the capital of France.\n```\n\n**Note:** I am an AI and may be wrong.\n"
INVENTED = "Madrid is in Spain.\n```\n\n# Question:\n```\nAnd Italy?\n```\n\n# Answer:\n```\nRome."
OPEN_CODE = "Use:\n```python\nprint(1)"  # a code block never closed: fails after cleaning
LOOP = "Drink water. " + "I am not a doctor. " * 9
TEXTS = [NOTE, INVENTED, OPEN_CODE, LOOP, "Fine.\n```\n"]


def _study(tmp_path, tiny_model_dir, name, judge="", texts=TEXTS):
    path = write_config(tmp_path, tiny_model_dir, name=name, optuna="n_trials = 2",
                        judge=judge, search='strategies = ["fixed"]')
    path.write_text(path.read_text().replace("max_tokens = 8", "max_tokens = 40"))
    cfg = load_config(path)
    ev = build_evaluator(cfg, engine=ScriptedEngine(texts), judge=FakeJudge(),
                         say=lambda m: None)
    return cfg, ev


def test_each_answer_and_each_trial_count_their_hygiene(tmp_path, tiny_model_dir):
    cfg, ev = _study(tmp_path, tiny_model_dir, "hyg")
    (rows,) = ev.evaluate([TrialSpec("concise.txt", 0, "none", ())], list(range(5)))
    by = {r.answer: r for r in rows}
    assert set(by) == {"Paris is the capital of France.", "Madrid is in Spain.", OPEN_CODE,
                       "Drink water. I am not a doctor.", "Fine."}
    assert by["Madrid is in Spain."].hygiene.leaked == 1
    assert by["Drink water. I am not a doctor."].hygiene.loop == 1
    assert by[OPEN_CODE].hygiene.fails and by[OPEN_CODE].to_dict()["floored"]
    # the answer still broken after cleaning scores the judge's floor (1 on the 1-5 scale)
    assert by[OPEN_CODE].judgement.overall == 1.0
    assert by["Fine."].judgement.overall == 2.0 and not by["Fine."].to_dict()["floored"]

    run_study(cfg, ev)
    for t in open_study(cfg).get_trials():
        h = HygieneCounts.from_dict(t.user_attrs[attrs.HYGIENE])
        assert h.answers == 6 and h.leaked >= 1 and h.failed >= 1
        assert h.failed <= h.defective <= h.answers
        assert set(t.user_attrs[attrs.LENGTHS]) == set(t.user_attrs[attrs.PER_QUERY])


def test_the_floor_can_be_switched_off(tmp_path, tiny_model_dir):
    # the engine answers the one query with the code block that is never closed (no cache from
    # another test can stand in for it: each test has its own ICL_SEARCH_HOME)
    _cfg, ev = _study(tmp_path, tiny_model_dir, "nofloor", judge="hygiene_floor = false",
                      texts=[OPEN_CODE])
    assert ev.hygiene_floor is False
    (rows,) = ev.evaluate([TrialSpec("concise.txt", 0, "none", ())], [2])
    assert rows[0].hygiene.fails and rows[0].judgement.overall == 4.0  # 3 words: as judged


def test_loops_are_found_where_they_repeat_not_in_ordinary_text():
    assert find_loop("A sentence. " + "Again and again we go. " * 4) is not None
    assert find_loop("One, two, three, four, five, six, seven, eight, nine, ten.") is None
    assert find_loop("yes " * 3) is None  # too short to be a loop
