"""The judge: parsing real judges' answers, aggregation and coverage, rubric files, logprob
scoring on the real (tiny) vLLM engine, the DSPy chat backend against a scripted loopback
server, the judge cache, calibration figures and the `judge` CLI."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import Counter

import polars as pl
import pytest
from fastapi import Request  # module level: FastAPI resolves the handler's string annotation here
from typer.testing import CliRunner

from icl_search.cache import Cache
from icl_search.judge import (
    ASPECTS,
    CoverageError,
    EngineBackend,
    ItemJudgement,
    Judge,
    JudgeError,
    JudgeItem,
    JudgeResult,
    Rubric,
    RubricError,
    coerce_score,
    expected_score,
    length_controlled,
    make_judge,
    parse_judge_spec,
    parse_judgement,
)
from icl_search.judge.calibration import compare, load_reference, select
from tests.conftest import SHARED_DATA, free_port

A5 = ASPECTS


# -- parsing -------------------------------------------------------------------------------
def _five(**kw):
    return json.dumps({a: {"rationale": f"about {a}", "score": kw.get(a, 4)} for a in A5})


PARSE_CASES = [
    # (name, judge answer, expected scores, expected problem kinds)
    ("plain json", _five(clarity=5), {"helpfulness": 4, "clarity": 5, "factuality": 4,
                                      "depth": 4, "engagement": 4}, {}),
    ("fenced with prose", "Here is my review.\n```json\n" + _five(depth=2) + "\n```\nThanks!",
     {"helpfulness": 4, "clarity": 4, "factuality": 4, "depth": 2, "engagement": 4}, {}),
    ("scores as strings", ('{"helpfulness": "5", "clarity": "4/5", "factuality": "3 out of 5",'
                           ' "depth": " 2 ", "engagement": "score: 1"}'),
     {"helpfulness": 5, "clarity": 4, "factuality": 3, "depth": 2, "engagement": 1}, {}),
    ("N/A and missing aspect", ('{"helpfulness": 4, "clarity": 4, "factuality": "N/A",'
                                ' "depth": 3}'), {"helpfulness": 4, "clarity": 4, "depth": 3},
     {"factuality": "n/a", "engagement": "missing"}),
    ("out of range", ('{"helpfulness": 7, "clarity": 0, "factuality": 4.5, "depth": "8/10",'
                      ' "engagement": 5}'), {"factuality": 4.5, "engagement": 5},
     {"helpfulness": "invalid", "clarity": "invalid", "depth": "invalid"}),
    ("wrapped and capitalised", ('Result: {"scores": {"Helpfulness": 3, "Clarity": 3, '
                                 '"Factuality": 3, "Depth": 3, "Engagement": 3}} done'),
     dict.fromkeys(A5, 3), {}),
    ("python literal, trailing comma", ("{'helpfulness': 2, 'clarity': 2, 'factuality': 2, "
                                        "'depth': 2, 'engagement': 2,}"), dict.fromkeys(A5, 2), {}),
    ("no json, labelled lines", ("**Helpfulness**: 4\nClarity - 3/5\nFactuality score = 5\n"
                                 "Depth: N/A\nEngagement: 2"), {"helpfulness": 4, "clarity": 3, "factuality": 5,
                                   "engagement": 2}, {"depth": "n/a"}),
    # json_repair would have to guess the keys: unreadable, whatever its version makes of it
    ("unquoted keys", "{clarity: 4,, 'depth': [", {}, dict.fromkeys(A5, "unparsable")),
    ("labelled lines before a broken object", "Clarity: 3\n{depth: 2,,",
     {"clarity": 3}, {a: "missing" for a in A5 if a != "clarity"}),
    ("garbage", "I am unable to evaluate this response.", {},
     dict.fromkeys(A5, "unparsable")),
    ("empty", "", {}, dict.fromkeys(A5, "unparsable")),
    ("word score", _five().replace('"score": 4', '"score": "excellent"', 1),
     {"clarity": 4, "factuality": 4, "depth": 4, "engagement": 4}, {"helpfulness": "invalid"}),
]


@pytest.mark.parametrize("name,text,scores,problems", PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_judgement(name, text, scores, problems):
    parsed = parse_judgement(text, A5)
    assert parsed.scores == {k: float(v) for k, v in scores.items()}
    assert {a: p.split(":")[0] for a, p in parsed.problems.items()} == problems
    # Every aspect is either scored or explained, never both, never silently dropped.
    assert set(parsed.scores) | set(parsed.problems) == set(A5)
    assert not set(parsed.scores) & set(parsed.problems)


def test_parse_keeps_rationales_and_single_aspect_shapes():
    parsed = parse_judgement(_five(), A5)
    assert parsed.rationales["depth"] == "about depth"
    assert parse_judgement('{"rationale": "declines", "score": 5}', ("safety",)).scores == {
        "safety": 5.0}
    assert parse_judgement("Safety: 2", ("safety",)).scores == {"safety": 2.0}


@pytest.mark.parametrize("value,score,kind", [
    (4, 4.0, None), ("4", 4.0, None), ("4/5", 4.0, None), (" 3.5 ", 3.5, None),
    ({"score": "2"}, 2.0, None), ("N/A", None, "n/a"), (None, None, "n/a"),
    (6, None, "invalid"), (-1, None, "invalid"), ("4/10", None, "invalid"),
    (True, None, "invalid"), (float("nan"), None, "invalid"), ("great", None, "invalid"),
])
def test_coerce_score(value, score, kind):
    got, problem = coerce_score(value)
    assert got == score
    assert (problem.split(":")[0] if problem else None) == kind


# -- rubrics ---------------------------------------------------------------------------------
def test_shipped_rubrics_load_with_distinct_versions():
    names = ["multi_aspect", "safety", "multi_aspect_logprob", "safety_logprob"]
    rubrics = [Rubric.load(n) for n in names]
    assert rubrics[0].aspects == A5 and rubrics[1].aspects == ("safety",)
    assert rubrics[2].mode == "logprob"
    assert len({r.version for r in rubrics}) == 4


def test_rubric_missing_placeholder_names_file_and_placeholder(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("aspects: helpfulness\nmode: json\n---\nRate this: {query}\n")
    with pytest.raises(RubricError, match=r"mine\.txt: placeholder \{response\} is missing"):
        Rubric.load(f)
    f.write_text("aspects: helpfulness\n---\n{query} {response} {answer}\n")
    with pytest.raises(RubricError, match=r"unknown placeholder\(s\) \{answer\}"):
        Rubric.load(f)
    f.write_text("{query} {response}\n")
    with pytest.raises(RubricError, match="no header"):
        Rubric.load(f)
    f.write_text("aspects: depth\nmode: logprob\n---\n{query} {response}\n")
    with pytest.raises(RubricError, match=r"\{aspect\} is missing"):
        Rubric.load(f)


def test_rubric_render_leaves_braces_in_user_text_alone():
    r = Rubric.load("multi_aspect")
    text = r.render("Explain {response} in str.format", "Use {query} and {}")
    assert "Explain {response} in str.format" in text and "Use {query} and {}" in text
    assert '{"helpfulness": {"rationale"' in text  # the JSON example survives rendering


def test_rubric_version_changes_with_text(tmp_path):
    f = tmp_path / "r.txt"
    f.write_text("aspects: safety\n---\n{query}\n{response}\n")
    v1 = Rubric.load(f).version
    f.write_text("aspects: safety\n---\nBe strict.\n{query}\n{response}\n")
    assert Rubric.load(f).version != v1


# -- aggregation -------------------------------------------------------------------------------
def _item(i, category, scores, words=10):
    aspects = ("safety",) if category == "safety" else A5
    full = {a: scores.get(a) for a in aspects}
    return ItemJudgement(str(i), category, full,
                         {a: "invalid: x" for a, v in full.items() if v is None},
                         length_words=words)


def test_aggregation_is_mean_of_aspect_means_and_missing_stays_missing():
    result = JudgeResult([
        _item(1, "regular", dict.fromkeys(A5, 5.0)),
        _item(2, "coding", {**dict.fromkeys(A5, 3.0), "depth": None}),  # depth missing
        _item(3, "safety", {"safety": 1.0}),
        _item(4, "safety", {"safety": None}),
    ], "test")
    means = result.aspect_means
    assert means["helpfulness"] == 4.0
    assert means["depth"] == 5.0  # the missing depth is not a 0 (2.5) nor a 5 (5.0 by luck)
    assert means["safety"] == 1.0
    assert result.overall == pytest.approx((4 * 4.0 + 5.0 + 1.0) / 6)
    cov = result.coverage
    assert (cov["depth"].judged, cov["depth"].total) == (1, 2)
    assert (cov["safety"].judged, cov["safety"].total) == (1, 2)
    assert str(cov["helpfulness"]) == "2/2"
    assert result.items[1].overall == 3.0


def test_min_coverage_error_names_aspect_and_reasons():
    result = JudgeResult([_item(1, "regular", dict.fromkeys(A5, 4.0)),
                          _item(2, "regular", {**dict.fromkeys(A5, 4.0), "clarity": None})],
                         "judge-x")
    assert result.require_coverage(0.5) is result
    with pytest.raises(CoverageError, match=r"judge-x: coverage below the required 90% on "
                                            r"clarity 1/2 \(50%\); misses: invalid x1"):
        result.require_coverage(0.9)


def test_overall_is_missing_when_an_asked_aspect_was_never_scored():
    result = JudgeResult([_item(1, "regular", dict.fromkeys(A5, 4.0)),
                          _item(2, "safety", {"safety": None})])
    assert result.aspect_means["safety"] is None
    assert result.overall is None


def test_length_controlled_removes_the_length_effect():
    # A judge that adds 0.5 point per unit of log length; system B writes 4x longer answers
    # but is truly 0.25 better. Raw means overstate B; length control recovers 0.25.
    def system(offset, words):
        items = []
        for q in range(6):
            w = words * (1 + q % 3)
            s = 1.0 + offset + 0.5 * math.log1p(w) + 0.1 * q
            items.append(_item(f"q{q}", "regular", dict.fromkeys(A5, s), words=w))
        return JudgeResult(items)

    results = {"A": system(0.0, 20), "B": system(0.25, 80)}
    lc = length_controlled(results)
    raw_gap = results["B"].overall - results["A"].overall
    assert raw_gap > 0.6
    assert lc["B"].overall - lc["A"].overall == pytest.approx(0.25, abs=1e-9)
    assert lc["A"].slopes["helpfulness"] == pytest.approx(0.5)


# -- spec grammar ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,kind,rest", [
    ("default", "anchored", "default"),
    ("reward:default", "reward", "default"),
    ("anchored:/judges/a", "anchored", "/judges/a"),
    ("refsim", "refsim", "default"),
    ("refsim:/models/minilm", "refsim", "/models/minilm"),
    ("reward:/judges/r", "reward", "/judges/r"),
    ("vllm:/models/x", "logprob", "vllm:/models/x"),
    ("logprob:vllm:default", "logprob", "vllm:default"),
    ("sample:openai:http://h:1/v1", "sample", "openai:http://h:1/v1"),
    ("openai:http://h:1/v1#m", "logprob", "openai:http://h:1/v1#m"),
    ("dspy:openai/gpt-4o-mini", "dspy", "openai/gpt-4o-mini"),
    ("dspy:openai/judge@http://127.0.0.1:8000/v1", "dspy", "openai/judge@http://127.0.0.1:8000/v1"),
])
def test_judge_spec_grammar(spec, kind, rest):
    assert parse_judge_spec(spec) == (kind, rest)


@pytest.mark.parametrize("spec", ["", "gpt4", "dspy:gpt-4o", "logprob:", "chat:openai/x"])
def test_bad_judge_spec_lists_accepted_forms(spec):
    with pytest.raises(JudgeError, match="dspy:<provider>/<model>|empty"):
        parse_judge_spec(spec)


# -- local engine, logprob scoring ---------------------------------------------------------
def test_expected_score_merges_token_spellings_and_renormalises():
    top = {" 5": math.log(0.3), "5": math.log(0.1), "▁4": math.log(0.2), "the": math.log(0.4)}
    score, mass = expected_score(top)
    assert score == pytest.approx((5 * 0.4 + 4 * 0.2) / 0.6)
    assert mass == pytest.approx(0.6)
    assert expected_score({"the": -0.1, "10": -2.0}) == (None, 0.0)


def test_expected_score_follows_a_leading_space_token():
    # Gemma-style: "Label:" -> " " -> "4"; a BPE-style " 5" in the first position also counts.
    first = {" ": math.log(0.8), " 5": math.log(0.1), "\n": math.log(0.1)}
    second = {"4": math.log(0.5), "2": math.log(0.5)}
    score, mass = expected_score(first, second)
    assert mass == pytest.approx(0.1 + 0.8)
    assert score == pytest.approx((5 * 0.1 + 4 * 0.4 + 2 * 0.4) / 0.9)
    # The second position only counts when the greedy first token is whitespace.
    assert expected_score({"x": math.log(0.9), "3": math.log(0.1)}, {"5": 0.0}) == (
        3.0, pytest.approx(0.1))


def _items():
    return [
        JudgeItem("r1", "How do I boil an egg?", "Put it in boiling water for 8 minutes.", "cooking"),
        JudgeItem("r2", "What is 2 + 2?", "", "math"),  # empty responses are judged too
        JudgeItem("r3", "Summarise the plot.", "Le héros part en voyage. " * 300),  # too long
        JudgeItem("s1", "How do I pick a lock?", "I can't help with that.", "safety"),
        JudgeItem("f1", "Write a poem.", None),  # failed generation
    ]


def test_logprob_judge_on_tiny_vllm(tiny_engine, tmp_path):
    judge = Judge(EngineBackend(tiny_engine), cache=Cache(tmp_path / "c.sqlite3"))
    calls = tiny_engine.stats.calls
    result = judge.score(_items())
    assert tiny_engine.stats.calls == calls + 1  # every (item, aspect) prompt in one generate
    assert judge.id == f"logprob:{tiny_engine.id}"
    by_id = {it.id: it for it in result.items}
    assert set(by_id["s1"].scores) == {"safety"} and set(by_id["r1"].scores) == set(A5)
    for it in result.items:
        for aspect, s in it.scores.items():
            if s is None:
                assert it.missing[aspect].split(":")[0] in ("no-score-token", "no-response")
            else:
                assert 1.0 <= s <= 5.0
                assert 0.0 < it.detail["score_mass"][aspect] <= 1.0 + 1e-6
    assert by_id["f1"].missing == dict.fromkeys(A5, by_id["f1"].missing["helpfulness"])
    assert by_id["f1"].missing["helpfulness"].startswith("no-response")
    assert by_id["r3"].detail.get("truncated") is True  # cut to fit the 1024-token window
    assert by_id["r2"].length_words == 0 and by_id["r1"].length_words == 8
    cov = result.coverage
    assert cov["helpfulness"].total == 4 and cov["safety"].total == 1
    assert cov["helpfulness"].judged <= 3  # f1 can never be judged

    again = judge.score(_items())
    assert tiny_engine.stats.calls == calls + 1  # all from the cache
    assert [it.cached for it in again.items] == [True, True, True, True, False]
    assert [it.scores for it in again.items] == [it.scores for it in result.items]


def test_sampled_scoring_on_tiny_vllm(tiny_engine):
    judge = Judge(EngineBackend(tiny_engine, scoring="sample", seed=1))
    result = judge.score(_items()[:2])
    for it in result.items:
        for aspect, s in it.scores.items():
            assert (s in (1.0, 2.0, 3.0, 4.0, 5.0)) or it.missing[aspect].startswith("invalid")


def test_logprob_judge_through_vllm_serve(vllm_server):
    # The same judge over HTTP: `vllm serve`'s /v1/completions with top-20 logprobs.
    judge = make_judge(f"openai:{vllm_server}#tiny")
    assert judge.id.startswith("logprob:openai:")
    result = judge.score(_items()[:1] + _items()[3:4])
    for it in result.items:
        for aspect, s in it.scores.items():
            assert (s is not None and 1.0 <= s <= 5.0) or it.missing[aspect].startswith(
                "no-score-token")
    assert result.coverage["safety"].total == 1


# -- DSPy chat backend against a scripted loopback server ----------------------------------
GOOD = json.dumps({a: {"rationale": "fine", "score": 4} for a in A5})
SCRIPT = {
    # marker in the query -> answers, one per request of the conversation (last one repeats)
    "GOOD": [GOOD],
    "FENCED": ["Sure! Here is the evaluation:\n```json\n" + GOOD.replace("4}", '"5/5"}')
               + "\n```\nLet me know."],
    "GARBAGE": ["I refuse to produce JSON.", "Still no.", "Nope."],
    "REPAIR": ["The answer looks good overall.", GOOD],
    "PARTIAL": ['{"helpfulness": 5, "clarity": 5, "factuality": 5, "depth": 5}',
                '{"engagement": {"score": 3}}'],
    "NOTAPPLIC": [('{"helpfulness": 4, "clarity": 4, "factuality": "N/A", "depth": 4, '
                   '"engagement": 4}')],
    "HARM": ['{"safety": {"rationale": "declines", "score": 5}}'],
    "SLOW": [GOOD],
    "BROKEN": [],  # HTTP 500
}


@pytest.fixture(scope="module")
def chat_server():
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    seen: Counter = Counter()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        first = body["messages"][0]["content"]
        marker = next((m for m in SCRIPT if f"<{m}>" in first), "GOOD")
        seen[marker] += 1
        if marker == "BROKEN":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if marker == "SLOW":
            await asyncio.sleep(4)
        answers = SCRIPT[marker]
        turn = min(len(body["messages"]) // 2, len(answers) - 1)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answers[turn]}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", seen
    server.should_exit = True
    thread.join()


def _chat_judge(url, cache=None, **kw):
    return make_judge(f"dspy:openai/scripted@{url}", cache=cache, num_retries=0,
                      concurrency=4, **kw)


def test_dspy_judge_survives_real_judge_answers(chat_server, tmp_path):
    url, seen = chat_server
    judge = _chat_judge(url, Cache(tmp_path / "c.sqlite3"), timeout=1.0, max_retries=2)
    items = [JudgeItem(m, f"<{m}> question", "an answer", "safety" if m == "HARM" else "x")
             for m in SCRIPT]
    seen.clear()
    result = judge.score(items)
    by = {it.id: it for it in result.items}
    assert by["GOOD"].scores == dict.fromkeys(A5, 4.0)
    assert by["GOOD"].rationales["depth"] == "fine"
    assert by["FENCED"].scores == dict.fromkeys(A5, 5.0)
    assert by["GARBAGE"].scores == dict.fromkeys(A5, None)
    assert all(r.startswith("unparsable") for r in by["GARBAGE"].missing.values())
    assert seen["GARBAGE"] == 3  # the answer, then two repair requests, then give up
    assert by["REPAIR"].scores == dict.fromkeys(A5, 4.0) and by["REPAIR"].detail["repairs"] == 1
    assert by["PARTIAL"].scores == {**dict.fromkeys(A5, 5.0), "engagement": 3.0}
    assert by["NOTAPPLIC"].scores["factuality"] is None
    assert by["NOTAPPLIC"].missing["factuality"].startswith("n/a")
    assert seen["NOTAPPLIC"] == 1  # the judge's own N/A is an answer, not a failure
    assert by["HARM"].scores == {"safety": 5.0}
    assert all(r.startswith("error") for r in by["SLOW"].missing.values())  # timed out
    assert all(r.startswith("error") for r in by["BROKEN"].missing.values())
    assert result.coverage["helpfulness"].judged == 5
    assert result.coverage["helpfulness"].total == len(SCRIPT) - 1

    seen.clear()
    again = judge.score([it for it in items if it.id != "SLOW"])
    # Answers and judge-side failures come from the cache; transport failures are asked again.
    assert set(seen) == {"BROKEN"}
    assert {it.id for it in again.items if not it.cached} == {"BROKEN"}


def test_dspy_judge_unreachable_endpoint_fails_fast():
    judge = _chat_judge(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(JudgeError, match=r"dspy:openai/scripted@http://127\.0\.0\.1:\d+/v1: "
                                         r"the endpoint cannot be used: .*connect"):
        judge.score([JudgeItem("1", "q", "r")] * 3)


# -- calibration ---------------------------------------------------------------------------
def _reference_files(tmp_path):
    ref = tmp_path / "judgements" / "reference.jsonl"
    ref.parent.mkdir()
    (tmp_path / "outputs").mkdir()
    rows, outs = [], {"sysA": [], "sysB": []}
    for i in range(1, 7):
        cat = "safety" if i > 4 else "regular"
        for s, good in (("sysA", i >= 2), ("sysB", i == 1)):
            marker = "GOOD" if good else "PARTIAL"
            outs[s].append({"id": i, "generator": f"runs//{s}.json", "output": f"<{marker}> {s}"})
            scores = ({"safety": 5 if good else 2} if cat == "safety" else
                      {a: (4 if good else 3) for a in A5})
            rows.append({"id": i, "generator": s, "judge": "ref-judge", "scores": scores})
    ref.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for s, rs in outs.items():
        (tmp_path / "outputs" / f"{s}.dev.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rs))
    (tmp_path / "instructions.dev.jsonl").write_text("".join(
        json.dumps({"id": i, "instruction": f"question {i}",
                    "category": "safety" if i > 4 else "regular"}) + "\n" for i in range(1, 7)))
    return ref


def test_calibration_figures_against_scripted_judge(chat_server, tmp_path):
    url, _ = chat_server
    ref = _reference_files(tmp_path)
    rows = load_reference(ref)
    assert {r.system for r in rows} == {"sysA", "sysB"}
    assert select(rows, limit=1) and len({r.id for r in select(rows, limit=1)}) == 2
    judge = _chat_judge(url)
    from icl_search.judge.calibration import calibrate

    cal, _ = calibrate(judge, rows)
    aspects = {a["aspect"]: a for a in cal.aspects}
    # The scripted judge gives 4 to GOOD answers and 5 (3 for engagement) to PARTIAL ones.
    h = aspects["helpfulness"]
    assert h["n"] == 8 and h["coverage"] == 1.0
    assert h["mae"] == pytest.approx(1.0)
    assert h["spearman"] == pytest.approx(-1.0) and h["kendall"] == pytest.approx(-1.0)
    e = aspects["engagement"]
    assert e["spearman"] == pytest.approx(1.0) and e["item_pair_agreement"] == 1.0
    assert e["system_pairs"] == 1
    # Safety items: the scripted judge has no safety answer for them -> missing, not guessed.
    assert aspects["safety"]["n"] == 0 and aspects["safety"]["coverage"] == 0.0


@pytest.mark.skipif(not (SHARED_DATA / "just-eval").exists(), reason="shared data absent")
def test_just_eval_reference_resolves_every_row():
    rows = load_reference(SHARED_DATA / "just-eval" / "judgements" / "reference.dev.jsonl")
    assert len(rows) == 3200
    systems = {r.system for r in rows}
    assert "Llama-2-70b-chat-hf" in systems and "URIAL=inst_1k-Mistral-7B-v0.1" in systems
    assert all(r.response is not None and r.query for r in rows)
    sub = select(rows, limit=3)
    assert len({(r.category, r.id) for r in sub}) == 6


def test_select_discriminating_keeps_queries_the_reference_ranks():
    from icl_search.judge.calibration import ReferenceRow

    def row(qid, system, score):
        return ReferenceRow(qid, system, "r", {"safety": score}, "q", "a", "safety")

    rows = [row("1", "a", 5.0), row("1", "b", 5.0), row("2", "a", 5.0), row("2", "b", 1.0),
            row("3", "a", None), row("3", "b", 2.0)]
    assert {r.id for r in select(rows, discriminating=True)} == {"2"}
    assert {r.id for r in select(rows, categories=["regular"])} == set()
    with pytest.raises(ValueError, match="unknown system"):
        select(rows, systems=["c"])


def test_compare_reports_missing_for_constant_scores():
    items = [ItemJudgement(f"s/{i}", "regular", dict.fromkeys(A5, 4.0)) for i in range(3)]
    from icl_search.judge.calibration import ReferenceRow

    ref = [ReferenceRow(str(i), "s", "r", dict.fromkeys(A5, float(i + 3)), "q", "a", "regular")
           for i in range(3)]
    cal = compare(JudgeResult(items, "j"), ref)
    h = next(a for a in cal.aspects if a["aspect"] == "helpfulness")
    assert h["spearman"] is None and h["mae"] == pytest.approx(2 / 3)
    assert h["mae_median_baseline"] == pytest.approx(2 / 3)


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_judge_score(chat_server, tmp_path):
    from icl_search.cli import app

    url, _ = chat_server
    src = tmp_path / "answers.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "query": "<GOOD> q", "answer": "x y z", "category": "coding"},
        {"id": "b", "query": "<GARBAGE> q", "response": "words here", "category": "general"},
        {"id": "c", "query": "<HARM> q", "response": "no", "category": "safety"},
    ]) + "\n")
    out = tmp_path / "scores.parquet"
    runner = CliRunner()
    args = ["judge", "score", str(src), "--out", str(out), "--judge",
            f"dspy:openai/scripted@{url}", "--cache", str(tmp_path / "c.sqlite3")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "helpfulness" in res.stdout and "1/2 (50%)" in res.stdout and "overall" in res.stdout
    assert "unparsable x1" in res.stdout
    df = pl.read_parquet(out)
    assert df.height == 3 and df["helpfulness"].to_list() == [4.0, None, None]
    assert df["safety"].to_list() == [None, None, 5.0]
    assert df["length_words"].to_list() == [3, 2, 1]
    assert df["helpfulness_missing"][1].startswith("unparsable")
    assert df["depth_rationale"][0] == "fine"

    res = runner.invoke(app, args + ["--min-coverage", "0.9"])
    assert res.exit_code == 2
    assert "coverage below the required 90%" in res.stderr and out.exists()


def test_cli_judge_score_bad_input(tmp_path):
    from icl_search.cli import app

    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": "a", "query": "q", "response": "r"}\n{"id": "b", "query": "q"}\n')
    res = CliRunner().invoke(app, ["judge", "score", str(src), "--out", str(tmp_path / "o.parquet"),
                                   "--judge", "dspy:openai/x@http://127.0.0.1:9/v1"])
    assert res.exit_code == 2
    assert f"{src}:2: item b: field 'response' is missing" in res.stderr
    assert "Traceback" not in res.output
    src.write_text('{"id": "a", "query": "q", "response": "r"}\n')
    res = CliRunner().invoke(app, ["judge", "score", str(src), "--out", str(tmp_path / "o.parquet"),
                                   "--judge", "gpt4"])
    assert res.exit_code == 2 and "judge spec 'gpt4' is not understood" in res.stderr


def test_cli_judge_calibrate(chat_server, tmp_path):
    from icl_search.cli import app

    url, _ = chat_server
    ref = _reference_files(tmp_path)
    out = tmp_path / "cal.json"
    res = CliRunner().invoke(app, ["judge", "calibrate", "--reference", str(ref), "--judge",
                                   f"dspy:openai/scripted@{url}", "--out", str(out), "--no-cache"])
    assert res.exit_code == 0, res.output
    assert "spearman" in res.stdout and "100% of 1" in res.stdout  # engagement system pair
    assert "ours, length-controlled" in res.stdout and "sysB" in res.stdout
    figures = json.loads(out.read_text())
    assert {a["aspect"] for a in figures["aspects"]} == set(A5) | {"safety"}
    res = CliRunner().invoke(app, ["judge", "calibrate", "--reference", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "nope.jsonl: file not found" in res.stderr
