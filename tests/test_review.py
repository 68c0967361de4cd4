"""`icl-search review`: making a blind folder, the page's routes over real HTTP, the LLM rater
against a loopback chat endpoint, and the score on known verdicts. The browser tests are in
tests/test_review_browser.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.review import (
    ReviewError,
    ReviewFolder,
    make_review,
    rate_review,
    read_verdicts,
    score_review,
    verdicts_path,
)
from icl_search.review.verdicts import append_verdicts
from tests.helpers import pairwise_chat_app, serve_in_thread

LEFT, RIGHT = "bundle", "inst_1k"


def answer_rows(side: str, n: int = 12) -> list[dict]:
    """n answers of one context; q11 is the same text on both sides, q8-q10 are safety."""
    rows = []
    for i in range(n):
        text = "the same answer" if i == n - 1 else f"{side} answer {i}"
        row = {"id": f"q{i}", "query": f"Question {i}?", "answer": text}
        if side == LEFT:
            row["category"] = "safety" if 8 <= i <= 10 else "coding"
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def review(tmp_path) -> Path:
    out = tmp_path / "review"
    make_review({LEFT: answer_rows(LEFT), RIGHT: answer_rows(RIGHT)}, [f"{LEFT}:{RIGHT}"], out)
    return out


def verdict_for(key: dict, pair: str, winner: str) -> str:
    """The X / Y / tie verdict that makes `winner` (left, right, tie) win pair `pair`."""
    k = key["pairs"][pair]
    if winner == "tie":
        return "tie"
    side = k["left"] if winner == "left" else k["right"]
    return "X" if k["x"] == side else "Y"


def give(folder: Path, rater: str, wins: dict[str, str]) -> None:
    """Verdicts of `rater`, by query id -> left / right / tie."""
    key = ReviewFolder(folder).key()
    by_qid = {k["query_id"]: pid for pid, k in key["pairs"].items()}
    append_verdicts(folder, rater, [{"pair": by_qid[q], "verdict": verdict_for(key, by_qid[q], w),
                                     "sheet": 1} for q, w in wins.items()])


# -- make ----------------------------------------------------------------------------------
def test_make_shuffles_sides_deals_sheets_and_keeps_the_key_apart(tmp_path):
    out = tmp_path / "r"
    s = make_review({LEFT: answer_rows(LEFT, 40), RIGHT: answer_rows(RIGHT, 40)},
                    [f"{LEFT}:{RIGHT}"], out, readers=3, overlap=6, seed=7)
    assert s.pairs == 39 and s.comparisons[0]["identical"] == 1  # q39 skipped and counted
    rf = ReviewFolder(out)
    sheets = list(rf.sheets.values())
    assert sorted(map(len, sheets)) == [17, 17, 17]  # 6 shared + 33 dealt out in turn
    shared = set.intersection(*map(set, sheets))
    assert len(shared) == 6 and set().union(*map(set, sheets)) == set(rf.pairs)
    key = rf.key()
    assert sorted(key["shared"]) == sorted(shared)
    xs = [k["x"] for k in key["pairs"].values()]
    assert 0 < xs.count(LEFT) < len(xs)  # sides are shuffled, both ways
    for pid, p in rf.pairs.items():  # X is the answer of the context the key says
        qid = key["pairs"][pid]["query_id"]
        assert p.x == f"{key['pairs'][pid]['x']} answer {qid[1:]}"
    # what a rater can be shown holds the query and the two answers, nothing else
    for p in rf.pairs.values():
        assert set(p.to_dict()) == {"pair", "query", "x", "y"}
    assert LEFT not in (out / "review.json").read_text()
    # the same seed, the same folder
    again = tmp_path / "r2"
    make_review({LEFT: answer_rows(LEFT, 40), RIGHT: answer_rows(RIGHT, 40)},
                [f"{LEFT}:{RIGHT}"], again, readers=3, overlap=6, seed=7)
    assert (again / "key.json").read_text() == (out / "key.json").read_text()


@pytest.mark.parametrize("line,message", [
    ('{"id": "q1", "query": "Q?", "answer": "a"}\nnot json\n', r"b\.jsonl:2: not valid JSON"),
    ('{"id": "q1", "query": "Q?"}\n', r"b\.jsonl:1: missing field 'answer'"),
    ('{"id": "q1", "query": "Q?", "answer": 5}\n', r"b\.jsonl:1: field 'answer' must be text"),
    ('{"query": "Q?", "answer": "a"}\n', r"b\.jsonl:1: missing field 'id'"),
    ('{"id": "q1", "query": "Q?", "answer": "a"}\n{"id": "q1", "query": "Q?", "answer": "b"}\n',
     r"b\.jsonl:2: duplicate id 'q1' \(first at .*b\.jsonl:1\)"),
    ('{"id": "q0", "query": "Another question?", "answer": "b"}\n',
     r"id 'q0': the query differs between .*a\.jsonl:1 and .*b\.jsonl:1"),
])
def test_make_bad_answer_file_is_one_message_and_writes_nothing(tmp_path, line, message):
    a = write_jsonl(tmp_path / "a.jsonl", answer_rows(LEFT, 3))
    b = tmp_path / "b.jsonl"
    b.write_text(line, encoding="utf-8")
    out = tmp_path / "review"
    r = CliRunner().invoke(app, ["review", "make", "--answers", f"A={a}", "--answers", f"B={b}",
                                 "--compare", "A:B", "--out", str(out)])
    assert r.exit_code == 2, r.output
    import re

    assert re.search(message, " ".join(r.output.split())), r.output
    assert r.output.count("error:") == 1
    assert not out.exists() and not list(tmp_path.glob(".review*"))


def test_make_argument_errors_name_the_argument(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", answer_rows(LEFT, 3))
    rows = {"A": answer_rows(LEFT, 3), "B": answer_rows(RIGHT, 3)}
    with pytest.raises(ReviewError, match=r"--compare 'A:C': no answers named 'C'"):
        make_review(rows, ["A:C"], tmp_path / "x")
    with pytest.raises(ReviewError, match=r"--overlap 2: shared pairs need --readers 2"):
        make_review(rows, ["A:B"], tmp_path / "x", overlap=2)
    with pytest.raises(ReviewError, match=r"--overlap 9: only 2 pairs"):
        make_review(rows, ["A:B"], tmp_path / "x", readers=2, overlap=9)
    r = CliRunner().invoke(app, ["review", "make", "--answers", f"A{a}", "--compare", "A:B",
                                 "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "expected NAME=FILE" in r.output


def test_make_refuses_to_overwrite_verdicts_unless_forced(tmp_path, review):
    rows = {LEFT: answer_rows(LEFT), RIGHT: answer_rows(RIGHT)}
    make_review(rows, [f"{LEFT}:{RIGHT}"], review, seed=1)  # no verdicts yet: remade
    give(review, "ana", {"q0": "left"})
    with pytest.raises(ReviewError, match=r"verdicts-ana\.jsonl.*refusing to overwrite.*--force"):
        make_review(rows, [f"{LEFT}:{RIGHT}"], review, seed=2)
    assert (review / "verdicts-ana.jsonl").exists()
    make_review(rows, [f"{LEFT}:{RIGHT}"], review, seed=2, force=True)
    assert not (review / "verdicts-ana.jsonl").exists()
    other = review.parent / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("x")
    with pytest.raises(ReviewError, match="not a review folder"):
        make_review(rows, [f"{LEFT}:{RIGHT}"], other)


# -- score ---------------------------------------------------------------------------------
ANA = {"q0": "left", "q1": "left", "q2": "left", "q3": "left", "q4": "left", "q5": "right",
       "q6": "tie", "q7": "tie", "q8": "right", "q9": "right", "q10": "left"}


def test_score_on_known_verdicts_gives_exact_rates_and_intervals(review):
    give(review, "ana", ANA)
    s = score_review(review)
    (row,) = s["comparisons"]
    assert (row["left"], row["right"], row["raters"]) == (LEFT, RIGHT, "people")
    assert (row["pairs"], row["left_wins"], row["right_wins"], row["ties"]) == (11, 6, 3, 2)
    assert row["win_rate"] == pytest.approx(7 / 11)
    assert row["ci95"] == pytest.approx([0.35380, 0.84834], abs=1e-4)  # Wilson, 7 of 11
    assert row["identical_skipped"] == 1
    reg, saf = row["by_category"]["regular"], row["by_category"]["safety"]
    assert (reg["pairs"], reg["win_rate"]) == (8, 0.75)
    assert reg["ci95"] == pytest.approx([0.40928, 0.92852], abs=1e-4)  # 6 of 8
    assert saf["pairs"] == 3 and saf["win_rate"] == pytest.approx(1 / 3)
    assert saf["ci95"] == pytest.approx([0.06149, 0.79234], abs=1e-4)

    # a second person on four of the pairs: each pair counts once, at the mean of its verdicts
    give(review, "bob", {"q0": "left", "q1": "right", "q2": "left", "q3": "tie"})
    s = score_review(review)
    (row,) = s["comparisons"]
    assert (row["pairs"], row["verdicts"]) == (11, 15)
    assert (row["left_wins"], row["right_wins"], row["ties"]) == (8, 4, 3)
    assert row["win_rate"] == pytest.approx(6.25 / 11)
    assert row["ci95"] == pytest.approx([0.29791, 0.80315], abs=1e-4)
    ag = s["agreement"]
    assert ag["people"] == {"pairs": 4, "comparisons": 4, "agree": 2, "share": 0.5}
    assert ag["raters"] == [{"raters": ["ana", "bob"], "pairs": 4, "agree": 2, "share": 0.5}]
    assert s["raters"] == {"ana": 11, "bob": 4}


def test_score_cli_writes_json_and_markdown_and_a_later_verdict_replaces_one(tmp_path, review):
    give(review, "ana", {"q0": "right"})
    give(review, "ana", {"q0": "left"})  # changed mind: the last line counts
    out = tmp_path / "score.json"
    r = CliRunner().invoke(app, ["review", "score", str(review), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "| bundle vs inst_1k | people | 1 | 1 | 0 | 0 | 100.0% |" in r.output
    assert json.loads(out.read_text())["comparisons"][0]["win_rate"] == 1.0
    md = tmp_path / "score.md"
    assert CliRunner().invoke(app, ["review", "score", str(review), "-o", str(md)]).exit_code == 0
    assert md.read_text().startswith("| comparison |")


def test_score_bad_verdict_line_names_file_and_line(review):
    give(review, "ana", {"q0": "left"})
    with (review / "verdicts-ana.jsonl").open("a") as fh:
        fh.write('{"pair": "p01", "verdict": "maybe", "rater": "ana"}\n')
    r = CliRunner().invoke(app, ["review", "score", str(review)])
    assert r.exit_code == 2
    assert "verdicts-ana.jsonl:2: field 'verdict' is 'maybe'" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["review", "score", str(review.parent)])
    assert r.exit_code == 2 and "not a review folder" in r.output


def test_report_lines_for_study_report(review):
    from icl_search.review import report_lines

    give(review, "ana", ANA)
    text = "\n".join(report_lines(review))
    assert "## Blind review" in text and "| bundle vs inst_1k | people | 11 |" in text
    assert "63.6%" in text and "[35.4%, 84.8%]" in text


# -- the page's routes over real HTTP -------------------------------------------------------
def test_page_routes_never_serve_the_folder(review):
    from icl_search.review.web import create_app

    # an LLM rater's verdicts beside: its file name is no person's, and it holds no sheet
    append_verdicts(review, "llm:dspy:openai/some-long-model-name@http://127.0.0.1:9/v1",
                    [{"pair": "p01", "verdict": "X", "sheet": None}])
    with serve_in_thread(create_app(review)) as url, httpx.Client(base_url=url) as c:
        assert c.get("/api/sheets").json() == {"sheets": [{"sheet": 1, "pairs": 11,
                                                           "raters": []}]}
        home = c.get("/")
        assert home.status_code == 200 and "Blind review" in home.text
        assert "script-src 'self'" in home.headers["content-security-policy"]
        for path in ("/key.json", "/review.json", "/pairs.jsonl", "/sheets/sheet-1.jsonl",
                     "/static/../key.json", "/%2e%2e/key.json", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 404, path
        assert c.post("/api/start", json={"rater": "../etc"}).status_code == 400
        assert "rater name" in c.post("/api/start", json={"rater": "a b"}).json()["error"]
        st = c.post("/api/start", json={"rater": "ana"}).json()
        assert (st["position"], st["total"], st["sheet"]) == (1, 11, 1)
        assert set(st) == {"rater", "sheet", "total", "rated", "done", "position", "pair",
                           "query", "x", "y"}  # nothing names a context
        nxt = c.post("/api/verdict", json={"rater": "ana", "pair": st["pair"],
                                           "verdict": "X"}).json()
        assert nxt["position"] == 2 and nxt["pair"] != st["pair"]
        # the same key pressed twice: the second verdict is for a pair already rated
        again = c.post("/api/verdict", json={"rater": "ana", "pair": st["pair"],
                                             "verdict": "Y"}).json()
        assert again["stale"] and again["position"] == 2
        bad = c.post("/api/verdict", json={"rater": "ana", "pair": nxt["pair"], "verdict": "Z"})
        assert bad.status_code == 400
    vs = read_verdicts(verdicts_path(review, "ana"))
    assert [(v.pair, v.verdict, v.sheet) for v in vs] == [(st["pair"], "X", 1)]


# -- the LLM rater against a loopback chat endpoint ------------------------------------------
@pytest.fixture(scope="module")
def chat_judge_url():
    with serve_in_thread(pairwise_chat_app()) as url:
        yield f"{url}/v1"


def test_rate_with_an_llm_judge_in_both_orders(tmp_path, chat_judge_url):
    def rows(side: str) -> list[dict]:
        good = {LEFT: ("q0", "q1", "q2", "q4"), RIGHT: ("q3", "q4")}[side]
        out = []
        for i in range(6):
            text = f"{side} reply {i}" + (" GOOD" if f"q{i}" in good else "")
            query = "<BIASED> question?" if i == 5 else f"Question {i}?"
            out.append({"id": f"q{i}", "query": query, "answer": text})
        return out

    folder = tmp_path / "review"
    make_review({LEFT: rows(LEFT), RIGHT: rows(RIGHT)}, [f"{LEFT}:{RIGHT}"], folder, seed=3)
    spec = f"dspy:openai/s@{chat_judge_url}"
    s = rate_review(folder, spec, num_retries=0)
    assert s.missing == []
    assert (s.rated, s.already) == (6, 0)
    assert s.rater == f"llm:{spec}" and s.path.name.startswith("verdicts-llm_")
    vs = read_verdicts(s.path)
    assert {v.rater for v in vs} == {f"llm:{spec}"}
    # q0-q2: left wins; q3: right wins; q4 (both GOOD) and q5 (always "A") are ties
    (row,) = score_review(folder)["comparisons"]
    assert row["raters"] == f"llm:{spec}"
    assert (row["left_wins"], row["right_wins"], row["ties"]) == (3, 1, 2)
    assert row["win_rate"] == pytest.approx(4 / 6)
    biased = next(json.loads(line) for line in s.path.read_text().splitlines()
                  if ReviewFolder(folder).pairs[json.loads(line)["pair"]].query.startswith("<BIASED>"))
    assert biased["orders"] == ["A", "A"] and biased["verdict"] == "tie"
    # a rerun asks only for what is left: nothing
    again = rate_review(folder, spec, num_retries=0)
    assert (again.rated, again.already) == (0, 6)
    assert len(s.path.read_text().splitlines()) == 6


# -- the whole round through the command line ----------------------------------------------
def test_round_trip_make_serve_rate_score_on_the_command_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO, free_port, wait_http

    a = write_jsonl(tmp_path / "a.jsonl", answer_rows(LEFT, 6))
    b = write_jsonl(tmp_path / "b.jsonl", answer_rows(RIGHT, 6))
    folder = tmp_path / "review"
    r = CliRunner().invoke(app, ["review", "make", "--answers", f"{LEFT}={a}", "--answers",
                                 f"{RIGHT}={b}", "--compare", f"{LEFT}:{RIGHT}", "--out",
                                 str(folder), "--readers", "2", "--overlap", "1"])
    assert r.exit_code == 0, r.output
    assert "5 pairs on 2 sheet(s) of 3, 3 pairs" in r.output
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "icl_search.cli", "review", "serve",
                             str(folder), "--port", str(port)], env=env, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/", proc)
        with httpx.Client(base_url=url) as c:
            st = c.post("/api/start", json={"rater": "ana"}).json()
            while not st["done"]:
                st = c.post("/api/verdict", json={"rater": "ana", "pair": st["pair"],
                                                  "verdict": "tie"}).json()
            assert c.get("/key.json").status_code == 404
    finally:
        proc.terminate()
        proc.wait()
    r = CliRunner().invoke(app, ["review", "score", str(folder)])
    assert r.exit_code == 0, r.output
    assert "| bundle vs inst_1k | people | 3 | 0 | 0 | 3 | 50.0% |" in r.output


def test_study_report_shows_a_review(tmp_path, tiny_model_dir, review):
    from icl_search.study import build_evaluator, load_config, run_study
    from tests.helpers import FakeEngine, FakeJudge, write_config

    path = write_config(tmp_path, tiny_model_dir, name="rev", optuna="n_trials = 2",
                        search='strategies = ["fixed"]')
    cfg = load_config(path)
    run_study(cfg, build_evaluator(cfg, engine=FakeEngine(), judge=FakeJudge(),
                                   say=lambda m: None))
    give(review, "ana", ANA)
    out = tmp_path / "rep"
    r = CliRunner().invoke(app, ["study", "report", str(path), "--out", str(out),
                                 "--review", str(review)])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    assert "## Blind review" in md and "| bundle vs inst_1k | people | 11 | 6 | 3 | 2 | 63.6% |" in md
    r = CliRunner().invoke(app, ["study", "report", str(path), "--out", str(tmp_path / "r2"),
                                 "--review", str(tmp_path)])
    assert r.exit_code == 2 and "not a review folder" in r.output
    assert not (tmp_path / "r2").exists()


def test_study_confirm_review_pairs_the_top_trial_with_each_baseline(tmp_path, tiny_model_dir,
                                                                     tiny_engine):
    from icl_search.study import build_evaluator, load_config, run_study
    from tests.helpers import confirm_config

    path = confirm_config(tmp_path, tiny_model_dir, "conf")
    cfg = load_config(path)
    run_study(cfg, build_evaluator(cfg, engine=tiny_engine, say=lambda m: None))
    out = tmp_path / "review"
    r = CliRunner().invoke(app, ["study", "confirm", str(path), "--review", str(out)])
    assert r.exit_code == 0, r.output
    assert f"next: icl-search review serve {out}" in r.output
    key = ReviewFolder(out).key()
    comps = key["comparisons"]
    (top,) = {c["left"] for c in comps}
    assert top.startswith("trial ")
    assert {c["right"] for c in comps} == {"baseline", "urial:inst_1k.txt"}
    for c in comps:  # every confirm query is a pair, a skipped identical pair or missing
        assert c["pairs"] + c["identical"] + c["missing"] == 10
    assert sum(c["pairs"] for c in comps) == len(ReviewFolder(out).pairs)
    # a review with verdicts is not replaced, and that is said before any model work
    if ReviewFolder(out).pairs:
        append_verdicts(out, "ana", [{"pair": next(iter(ReviewFolder(out).pairs)),
                                      "verdict": "X", "sheet": 1}])
        r = CliRunner().invoke(app, ["study", "confirm", str(path), "--review", str(out)])
        assert r.exit_code == 2 and "refusing to overwrite" in r.output


def test_a_context_in_two_comparisons_is_pointed_out(tmp_path):
    rows = {n: [{"id": f"q{i}", "query": f"Q{i}?", "answer": f"{n} {i}"} for i in range(3)]
            for n in ("A", "B", "C")}
    s = make_review(rows, ["A:B", "A:C"], tmp_path / "r")
    assert s.pairs == 6 and {c["name"] for c in s.comparisons} == {"A:B", "A:C"}
    assert any(line.startswith("note: A is in more than one comparison") for line in s.lines())
    one = make_review(rows, ["A:B"], tmp_path / "r1")
    assert not any(line.startswith("note:") for line in one.lines())


def test_alignment_bench_writes_a_review_of_its_test_answers(tmp_path):
    import importlib.util
    from types import SimpleNamespace

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("alignment_bench_review",
                                                  REPO / "bench" / "alignment.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    queries = [SimpleNamespace(id=f"q{i}", query=f"Q{i}?", category="safety" if i == 0
                               else "regular") for i in range(4)]
    answers = {name: [SimpleNamespace(answer=f"{name} {i}" if i < 3 else "same")
                      for i in range(4)] for name in ("bundle", "urial_inst_1k", "zero_shot")}
    out = bench.write_review(tmp_path / "review", queries, answers, seed=0)
    assert out["pairs"] == 3 and out["comparisons"][0]["identical"] == 1
    key = ReviewFolder(tmp_path / "review").key()
    assert {(k["left"], k["right"]) for k in key["pairs"].values()} == {("bundle",
                                                                         "urial_inst_1k")}
    assert sorted(k["category"] for k in key["pairs"].values()) == ["regular", "regular",
                                                                    "safety"]
