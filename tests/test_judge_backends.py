"""Judge backends against a hostile endpoint: a scripted loopback server (tests/garbage_server)
answering the `openai:` logprob judge and the `dspy:` chat judge with garbage. Every
malformed reply is a recorded miss with a reason, never an exception; the judge stops with one
message only when every request of its first call failed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from icl_search.cache import Cache
from icl_search.judge import JudgeError, JudgeItem, make_judge, parse_judgement
from icl_search.judge.parsing import MAX_REPLY_CHARS
from tests.garbage_server import CHAT_KINDS, HTTP_KINDS, LOGPROB_KINDS, GarbageServer

ASPECTS = ("helpfulness", "clarity")


@pytest.fixture(scope="module")
def garbage():
    with GarbageServer() as server:
        yield server


def items(kinds) -> list[JudgeItem]:
    return [JudgeItem(f"{i}-{k}", "What is 2+2?", f"It is 4. KIND:{k}")
            for i, k in enumerate(kinds)]


def logprob_judge(server, **kw):
    # One prompt per request, so each reply's fault touches one item; a short timeout for
    # the `timeout` kind; no retries of 5xx.
    return make_judge(f"openai:{server.url}", timeout=1.0, max_retries=0, batch_size=1, **kw)


def chat_judge(server, **kw):
    return make_judge(f"dspy:openai/garbage-judge@{server.url}", timeout=1.0, num_retries=0,
                      max_retries=1, **kw)


def test_logprob_judge_turns_every_malformed_reply_into_a_miss_with_a_reason(garbage):
    kinds = ["good", *HTTP_KINDS, *LOGPROB_KINDS, "good"]
    result = logprob_judge(garbage).score(items(kinds))
    by_kind = dict(zip(kinds, result.items, strict=True))
    for kind, it in zip(kinds, result.items, strict=True):
        if kind == "good":
            assert all(3.5 < s < 4.5 for s in it.scores.values()), it
            continue
        assert all(s is None for s in it.scores.values()), (kind, it.scores)
        assert it.missing and all(r.strip() for r in it.missing.values()), kind
    reason = lambda kind: next(iter(by_kind[kind].missing.values()))
    # An impossible log-probability is not read as a near-certain "5".
    assert "impossible" in reason("logprob_plus50") and "impossible" in reason("logprob_nan")
    assert "above 1" in reason("logprob_mass_above_one")
    assert "not a number" in reason("logprob_string")
    assert "not JSON" in reason("html200") and "not an object" in reason("array200")
    assert "HTTP 500" in reason("http500") and "timed out" in reason("timeout").lower()
    assert "no-score-token" in reason("no_digit")
    cov = result.coverage["helpfulness"]
    assert (cov.judged, cov.total) == (2, len(kinds))


def test_chat_judge_reads_garbage_as_misses_and_sends_the_answer_schema(garbage):
    kinds = ["good", *HTTP_KINDS, *CHAT_KINDS, "good"]
    start = len(garbage.requests)
    result = chat_judge(garbage).score(items(kinds))
    for kind, it in zip(kinds, result.items, strict=True):
        if kind == "good":
            assert set(it.scores.values()) == {4.0}
        else:
            assert all(s is None for s in it.scores.values()), (kind, it.scores)
            assert all(r.strip() for r in it.missing.values()), kind
    reasons = {k: next(iter(it.missing.values()), "")
               for k, it in zip(kinds, result.items, strict=True)}
    assert reasons["nested_garbage_56k"].startswith("too-long")
    assert reasons["out_of_range"] == "invalid: 9 is outside 1-5"
    assert "HTTP 200" in reasons["html200"] and "boom" in reasons["http500"]
    # Structured output: every request carried the answer's JSON schema.
    sent = [r["body"] for r in garbage.requests[start:] if r["route"].endswith("chat/completions")]
    formats = [b.get("response_format") for b in sent]
    assert all(f and f["type"] == "json_schema" for f in formats), formats
    schema = formats[0]["json_schema"]["schema"]
    assert set(schema["required"]) >= {"helpfulness", "clarity", "factuality"}
    assert schema["properties"]["clarity"]["properties"]["score"]["enum"] == [1, 2, 3, 4, 5, "N/A"]


def test_an_endpoint_without_structured_output_is_asked_again_without_the_schema(garbage):
    judge = chat_judge(garbage)
    start = len(garbage.requests)
    result = judge.score(items(["rejects_schema", "rejects_schema"]))
    assert all(set(it.scores.values()) == {4.0} for it in result.items)
    assert judge.backend.structured is False
    sent = garbage.requests[start:]
    # At most the concurrent first requests carried the schema; the rest went without.
    assert any(r["body"].get("response_format") is None for r in sent)
    plain = chat_judge(garbage, structured=False)
    start = len(garbage.requests)
    plain.score(items(["good"]))
    assert all("response_format" not in r["body"] for r in garbage.requests[start:])


@pytest.mark.parametrize("build", [logprob_judge, chat_judge], ids=["logprob", "chat"])
def test_fail_fast_only_when_every_request_of_the_first_call_failed(garbage, build, tmp_path):
    with pytest.raises(JudgeError, match="cannot be used"):
        build(garbage).score(items(["http500", "http500", "http404"]))
    # One failure among good answers on the first call: a miss, not the end of the run.
    cache = Cache(tmp_path / "cache.sqlite3")
    judge = build(garbage, cache=cache)
    result = judge.score(items(["http500", "good", "good", "good"]))
    assert [all(s is None for s in it.scores.values()) for it in result.items] == \
        [True, False, False, False]
    assert next(iter(result.items[0].missing.values())).startswith("error:")
    # The transport miss was not cached: the next run asks again (the good ones are cached;
    # a new item answers, so this first call is not all failures).
    fresh = JudgeItem("new", "What is 3+3?", "Six. KIND:good")
    again = build(garbage, cache=cache).score(
        [*items(["http500", "good", "good", "good"]), fresh])
    assert [it.cached for it in again.items] == [False, True, True, True, False]
    assert all(s is None for s in again.items[0].scores.values())


def test_judge_score_writes_good_results_despite_one_http_500(garbage, tmp_path):
    from icl_search.cli import app

    rows = [{"id": f"q{i}", "query": "What is 2+2?", "response": "It is 4. KIND:good"}
            for i in range(6)]
    rows.insert(0, {"id": "bad", "query": "What is 2+2?", "response": "It is 4. KIND:http500"})
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    args = ["judge", "score", str(path), "--out", str(out), "--no-cache", "--timeout", "2",
            "--judge", f"dspy:openai/garbage-judge@{garbage.url}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 7
    # min_coverage decides: the scores are written first, then exit 2 with the reason.
    out.unlink()
    res = CliRunner().invoke(app, [*args, "--min-coverage", "0.95"])
    assert res.exit_code == 2 and out.exists() and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["judge", "score", "--help"])
    assert "--timeout" in res.output


def test_huge_and_nested_garbage_is_refused_or_parsed_in_bounded_work():
    # Over the cap: refused unread, with the limit in the reason.
    huge = parse_judgement("{" + "x" * (MAX_REPLY_CHARS + 1), ASPECTS)
    assert all(p.startswith("too-long") for p in huge.problems.values())
    assert f"{MAX_REPLY_CHARS:,}" in huge.problems["clarity"]
    # Under it: 8,000 braces, deep nesting and nested garbage end as misses, not errors.
    for text in ("{" * 8000, '{"a":' * 3000, ("x{'a': [1, 2, {\"b\": " * 900)[:MAX_REPLY_CHARS]):
        parsed = parse_judgement(text, ASPECTS)
        assert not parsed.scores and set(parsed.problems) == set(ASPECTS)
    # json_repair is the fallback: single quotes, a trailing comma, a missing closing brace.
    repaired = parse_judgement("Scores: {'helpfulness': {'score': 4}, 'clarity': 5,", ASPECTS)
    assert repaired.scores == {"helpfulness": 4.0, "clarity": 5.0}
