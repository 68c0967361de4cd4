"""`generate_answers` and the `icl-search generate` command on the tiny model."""

import json

import pytest
from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.engines import SamplingParams
from icl_search.evalset import Query
from icl_search.generation import Timing, generate_answers

runner = CliRunner()
EXAMPLES = [("What is 1+1?", "Hi! 1 + 1 = 2."), ("Name a fruit.", "Sure! An apple.")]


def test_generate_answers_budget_and_failures(tiny_engine):
    qs = [Query("a", "What is 2+2?"), Query("huge", "word " * 2000), Query("b", "Name a colour.")]
    timing = Timing()
    answers = generate_answers(tiny_engine, qs, system="Be helpful.", examples=EXAMPLES,
                               params=SamplingParams(max_tokens=8), timing=timing,
                               keep_prompts=True)
    assert [a.id for a in answers] == ["a", "huge", "b"]
    ok = [a for a in answers if a.id != "huge"]
    assert all(a.finish_reason in ("stop", "length") and a.answer is not None for a in ok)
    assert all("# Query" not in a.answer for a in ok)
    assert ok[0].prompt.endswith("# Query:\n```\nWhat is 2+2?\n```\n\n# Answer:\n```\n")
    huge = answers[1]
    assert huge.finish_reason == "error" and huge.answer is None
    assert "exceeds the context window of 1024 tokens" in huge.error
    assert 0 < timing.engine <= timing.total


def test_generate_answers_drops_examples_to_fit(tiny_engine):
    long_examples = [("far " * 300, "x " * 200), ("near", "y")]
    [a] = generate_answers(tiny_engine, [Query("q", "hi")], examples=long_examples,
                           params=SamplingParams(max_tokens=300))
    assert a.finish_reason != "error"
    assert a.dropped == ["ex0"] and a.examples == ["ex1"]


def _write(path, text):
    path.write_text(text)
    return path


def test_cli_generate_writes_one_line_per_query(tiny_model_dir, tmp_path):
    q = _write(tmp_path / "q.jsonl", '{"id": "x", "query": "What is 2+2?"}\n\n'
               '{"instruction": "Name a colour.", "category": "factual"}\n')
    ex = _write(tmp_path / "ex.jsonl", "".join(
        json.dumps({"id": f"e{i}", "query": a, "answer": b}) + "\n"
        for i, (a, b) in enumerate(EXAMPLES)))
    out = tmp_path / "out" / "a.jsonl"
    args = ["generate", str(q), "--out", str(out), "--model", str(tiny_model_dir),
            "--examples", str(ex), "--ids", "e1,e0", "--max-tokens", "8"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["x", "3"]
    assert rows[0]["examples"] == ["e1", "e0"]
    assert {"answer", "prompt_tokens", "completion_tokens", "finish_reason"} <= set(rows[0])
    r = runner.invoke(app, args)
    assert "2 from cache" in " ".join(r.output.split())


@pytest.mark.parametrize("content,message", [
    ('{"query": "ok"}\n{"query": "broken"\n', "q.jsonl:2: not valid JSON"),
    ('{"query": "ok"}\n{"text": "x"}\n', "q.jsonl:2: missing field 'query'"),
    ('{"id": 1, "query": "a"}\n{"id": 1, "query": "b"}\n', "q.jsonl:2: field 'id': duplicate"),
])
def test_cli_generate_bad_query_file_names_the_line(tmp_path, content, message, tiny_model_dir):
    q = _write(tmp_path / "q.jsonl", content)
    out = tmp_path / "a.jsonl"
    r = runner.invoke(app, ["generate", str(q), "--out", str(out), "--model", str(tiny_model_dir)])
    assert r.exit_code == 2 and message in "".join(r.output.split("\n"))
    assert not out.exists() and not list(tmp_path.glob(".a.jsonl*"))


def test_cli_generate_bad_inputs(tmp_path, tiny_model_dir):
    q = _write(tmp_path / "q.jsonl", '{"query": "hi"}\n')
    out = str(tmp_path / "a.jsonl")
    cases = [
        (["--model", "no/such/model"], "unknown model 'no/such/model'"),
        (["--model", str(tiny_model_dir), "--temperature", "9"], "temperature=9.0 is out of range"),
        (["--model", str(tiny_model_dir), "--system", "missing.txt"], "missing.txt: system preamble file not found"),
        (["--engine", "openai:http://127.0.0.1:9/v1#m"], "unreachable after"),
    ]
    for extra, message in cases:
        r = runner.invoke(app, ["generate", str(q), "--out", out, *extra])
        assert r.exit_code == 2, (extra, r.output)
        assert message in r.output.replace("\n", ""), (extra, r.output)
    assert not (tmp_path / "a.jsonl").exists()


@pytest.mark.slow
def test_default_model_answers_in_urial_style(default_model_dir):
    from icl_search.engines.vllm import VLLMEngine

    eng = VLLMEngine(default_model_dir, max_model_len=2048, kv_cache_memory_bytes=256 * 2**20)
    [a] = generate_answers(eng, [Query("q", "What is the capital of France?")],
                           system="You are a helpful assistant.", examples=EXAMPLES,
                           params=SamplingParams(max_tokens=48))
    assert "Paris" in a.answer and "# Query" not in a.answer
