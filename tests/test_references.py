"""Reference answers on query rows: the `reference` field in every reader (eval and confirm
sets, pool files, judge inputs), the `refsim` judge that compares an answer with it, and the
check that a study whose judge needs references has them before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icl_search.cache import Cache
from icl_search.cli import app
from icl_search.evalset import QueryFileError, load_queries
from icl_search.judge import JudgeError, JudgeItem, make_judge, needs_reference, to_item
from icl_search.pool.schema import check

REPO = Path(__file__).resolve().parents[1]
POOLS = REPO / "pools"
runner = CliRunner()


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- the field in the readers ---------------------------------------------------------------
def test_eval_rows_read_their_reference(tmp_path):
    path = _jsonl(tmp_path / "q.jsonl", [
        {"id": "a", "query": "What is 2 + 2?", "reference": "2 + 2 = 4."},
        {"id": "b", "query": "Name a prime.", "note": "kept"}])
    a, b = load_queries(path)
    assert (a.reference, b.reference) == ("2 + 2 = 4.", None)
    assert "reference" not in a.meta and b.meta == {"note": "kept"}


@pytest.mark.parametrize("value, why", [
    ("", "field 'reference' is empty"), ("  \n", "field 'reference' is empty"),
    (None, "field 'reference' must be text, got null"),
    (3, "field 'reference' must be text, got number"),
    (["x"], "field 'reference' must be text, got list")])
def test_a_bad_reference_names_the_file_and_line(tmp_path, value, why):
    path = _jsonl(tmp_path / "q.jsonl", [{"id": "a", "query": "Hi?", "reference": "Hello."},
                                         {"id": "b", "query": "Why?", "reference": value}])
    with pytest.raises(QueryFileError) as e:
        load_queries(path)
    assert str(e.value).startswith(f"{path}:2: {why}")


def test_pool_rows_validate_their_reference(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "query": "Q one?", "answer": "A one.", "reference": "R one."},
        {"id": "b", "query": "Q two?", "answer": "A two.", "reference": ""},
        {"id": "c", "query": "Q three?", "answer": "A three.", "reference": 7}])
    v = check(path)
    assert [e.meta for e in v.examples] == [{"reference": "R one."}]
    assert [str(p) for p in v.problems] == [
        f"{path}:2: reference: is empty (leave the field out of a row without one)",
        f"{path}:3: reference: must be text, got number"]
    csv = tmp_path / "p.csv"  # an empty cell is a row without a reference
    csv.write_text("id,query,answer,reference\na,Q one?,A one.,R one.\nb,Q two?,A two.,\n",
                   encoding="utf-8")
    v = check(csv)
    assert v.problems == [] and [e.meta for e in v.examples] == [{"reference": "R one."}, {}]


def test_judge_inputs_read_their_reference():
    item = to_item({"id": "1", "query": "Q?", "response": "A.", "reference": "R."})
    assert item.reference == "R."
    assert to_item({"query": "Q?", "response": "A."}).reference is None
    with pytest.raises(ValueError, match="item 1: field 'reference' is empty"):
        to_item({"id": "1", "query": "Q?", "response": "A.", "reference": ""})


def test_judge_score_cli_names_the_line_of_a_bad_reference(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", [
        {"query": "Q?", "response": "A.", "reference": "R."},
        {"query": "Q2?", "response": "A2.", "reference": 5}])
    res = runner.invoke(app, ["judge", "score", str(path), "--judge", "refsim",
                                 "-o", str(tmp_path / "out.jsonl")])
    assert res.exit_code == 2, res.output
    assert f"{path}:2: item 2: field 'reference' must be text, got number" in \
        " ".join(res.stderr.split())
    assert not (tmp_path / "out.jsonl").exists()


# -- the refsim judge -----------------------------------------------------------------------
REF = ("Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level; at higher "
       "altitudes, where air pressure is lower, it boils at a lower temperature.")


def test_refsim_scores_closeness_to_the_reference_and_marks_rows_without_one_missing(tmp_path):
    judge = make_judge("refsim", cache=Cache(tmp_path / "c.sqlite3"))
    assert judge.id == "refsim:sentence-transformers/all-MiniLM-L6-v2"
    q = "At what temperature does water boil?"
    items = [
        JudgeItem("close", q, "At sea level water boils at 100 C (212 F); lower at altitude.",
                  reference=REF),
        JudgeItem("off", q, "Paris is the capital of France and has many museums.",
                  reference=REF),
        JudgeItem("none", q, "Water boils at 100 C.", category="safety")]
    result = judge.score(items)
    close, off, none = result.items
    assert 1.0 <= off.overall < close.overall <= 5.0
    assert set(close.scores) == {"helpfulness", "clarity", "factuality", "depth", "engagement"}
    assert none.overall is None and none.scores == {"safety": None}
    assert none.missing["safety"].startswith("no-reference")
    assert str(result.coverage["safety"]) == "0/1"
    assert result.missing_reasons() == {"no-reference": 1}
    # the reference is part of the cache key: another reference is judged again
    again = judge.score([JudgeItem("close", q, items[0].response, reference="Paris.")])
    assert not again.items[0].cached and again.items[0].overall < close.overall
    assert judge.score(items[:1]).items[0].cached


def test_refsim_spec_grammar():
    assert needs_reference("refsim") and needs_reference("refsim:all-MiniLM-L6-v2")
    assert not needs_reference("default") and not needs_reference("reward:default")
    with pytest.raises(JudgeError, match="refsim"):
        needs_reference("refsim:")


# -- a study whose judge needs references ---------------------------------------------------
def _config(tmp: Path, judge: str, eval_path: Path, confirm: Path | None = None) -> Path:
    path = tmp / "s.toml"
    confirm_line = f'confirm = "{confirm}"' if confirm else ""
    path.write_text(f"""
name = "s"
[model]
engine = "vllm:default"
[judge]
spec = "{judge}"
[pool]
path = "{POOLS / 'default.jsonl'}"
[eval]
path = "{eval_path}"
{confirm_line}
[search]
system_prompts = ["{POOLS / 'system_prompts' / 'urial_style.txt'}"]
""", encoding="utf-8")
    return path


def test_a_study_judged_by_refsim_needs_references_before_any_model_loads(tmp_path):
    with_refs = _jsonl(tmp_path / "ev.jsonl", [
        {"id": f"q{i}", "query": f"Question number {i}?", "reference": f"Answer {i}."}
        for i in range(3)])
    without = _jsonl(tmp_path / "confirm.jsonl", [
        {"id": "c1", "query": "Another question?", "reference": "Yes."},
        {"id": "c2", "query": "A third question?"}])
    cfg = _config(tmp_path, "refsim", with_refs, without)
    res = runner.invoke(app, ["study", "validate", str(cfg)])
    assert res.exit_code == 2, res.output
    assert " ".join(res.stderr.split()) == (
        f"error: {cfg}: {without}: 1 of 2 queries have no 'reference' answer (first: id "
        "'c2'), but the judge 'refsim' (field 'judge.spec') scores an answer by its similarity "
        "to the row's reference; add references (`icl-search references build`) or choose a "
        "judge that needs none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confirm.jsonl", "ev.jsonl", "s.toml"]
    ok = _config(tmp_path, "refsim", with_refs)
    assert runner.invoke(app, ["study", "validate", str(ok)]).exit_code == 0
    # a judge that needs no reference runs on the same files
    assert runner.invoke(app, ["study", "validate",
                               str(_config(tmp_path, "reward:default", with_refs, without))]
                         ).exit_code == 0


@pytest.mark.parametrize("name", ["demo", "dev", "bootstrap"])
def test_the_project_eval_sets_carry_a_reference_on_every_row(name):
    path = POOLS / "eval" / f"{name}.jsonl"
    queries = load_queries(path)
    assert queries and all(q.reference and q.reference == q.reference.strip() for q in queries)
    assert len({q.reference for q in queries}) == len(queries)
    from icl_search.judge import require_references

    require_references("refsim", queries, path)  # a refsim study runs on them


# -- `icl-search references build` ----------------------------------------------------------
class ChatServer:
    """An OpenAI-compatible chat endpoint on loopback: the reference to a query is
    "Reference: <query>", except for queries holding FAIL while `failing` is set (HTTP 500).
    Counts the chat requests it answered."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self
        self.requests, self.failing, self.system = 0, True, None

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                blob = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "ref-model",
                                                             "object": "model"}]})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                msgs = req["messages"]
                owner.system = next((m["content"] for m in msgs if m["role"] == "system"),
                                    None)
                query = msgs[-1]["content"]
                if "FAIL" in query and owner.failing:
                    self._send(500, {"error": {"message": "scripted failure"}})
                    return
                owner.requests += 1
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0,
                                 "model": req["model"], "choices": [{
                                     "index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant",
                                                 "content": f"  Reference: {query}\n"}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                           "total_tokens": 2}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


def _error(res) -> str:
    """The error line of a failed command (stderr also carries the progress bar)."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.stderr.split())
    return text[text.index("error: "):]


def _queries(tmp_path: Path, *extra) -> Path:
    return _jsonl(tmp_path / "q.jsonl", [
        {"id": "a", "query": "What is 2 + 2?", "category": "math", "expect": "kept"},
        {"id": "b", "query": "Name a prime.", "reference": "7 is a prime number."},
        {"id": "c", "query": "Why is the sky blue?"}, *extra])


def test_references_build_writes_the_missing_references_and_keeps_the_rest(chat_server,
                                                                          tmp_path):
    src, out = _queries(tmp_path), tmp_path / "out.jsonl"
    args = ["references", "build", str(src), "--engine", f"openai:{chat_server.url}",
            "-o", str(out), "--cache", str(tmp_path / "c.sqlite3")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"id": "a", "query": "What is 2 + 2?", "category": "math", "expect": "kept",
         "reference": "Reference: What is 2 + 2?"},
        {"id": "b", "query": "Name a prime.", "reference": "7 is a prime number."},
        {"id": "c", "query": "Why is the sky blue?", "reference": "Reference: Why is the sky blue?"}]
    assert [q.reference for q in load_queries(out)][1] == "7 is a prime number."
    assert chat_server.requests == 2 and "reference answers" in chat_server.system
    # cached: a second run asks nothing, and writes the same file
    out.unlink()
    assert runner.invoke(app, args).exit_code == 0
    assert chat_server.requests == 2 and len(load_queries(out)) == 3


def test_references_build_resumes_after_a_failed_row_and_writes_nothing_before(chat_server,
                                                                             tmp_path):
    src = _queries(tmp_path, {"id": "d", "query": "Please FAIL now."})
    out = tmp_path / "out.jsonl"
    args = ["references", "build", str(src), "--engine", f"openai:{chat_server.url}#ref-model",
            "-o", str(out), "--cache", str(tmp_path / "c.sqlite3")]
    res = runner.invoke(app, args)
    assert _error(res).startswith("error: 1 of 3 references could not be written (the 2 written "
                              "are cached: run the command again to resume); first: id 'd': ")
    assert not out.exists() and not list(tmp_path.glob("*out*"))  # not even a temp file
    chat_server.failing = False
    before = chat_server.requests
    assert runner.invoke(app, args).exit_code == 0
    assert chat_server.requests == before + 1  # only the failed row is asked again
    assert load_queries(out)[3].reference == "Reference: Please FAIL now."


def test_references_build_against_a_dead_endpoint_is_one_message(tmp_path):
    from tests.conftest import free_port

    out = tmp_path / "out.jsonl"
    url = f"http://127.0.0.1:{free_port()}/v1"
    res = runner.invoke(app, ["references", "build", str(_queries(tmp_path)), "--engine",
                              f"openai:{url}#m", "-o", str(out), "--timeout", "5",
                              "--cache", str(tmp_path / "c.sqlite3")])
    assert _error(res).startswith(f"error: reference writer openai:{url}#m: the first request "
                              "failed, so the endpoint cannot be used: ")
    assert not out.exists()


def test_references_build_bad_input_fails_before_any_model(tmp_path):
    src = _jsonl(tmp_path / "q.jsonl", [{"id": "a", "query": "Q?", "reference": ""}])
    res = runner.invoke(app, ["references", "build", str(src), "--engine", "vllm:/nope",
                              "-o", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2
    assert " ".join(res.stderr.split()) == (f"error: {src}:1: field 'reference' is empty (leave "
                                            "the field out of a row without one)")
    res = runner.invoke(app, ["references", "build", str(_queries(tmp_path)), "--engine",
                              "ollama:x", "-o", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "--engine 'ollama:x': expected openai:" in res.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_references_build_through_a_dspy_chat_model(chat_server, tmp_path):
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["references", "build", str(_queries(tmp_path)), "--engine",
                              f"dspy:openai/ref-model@{chat_server.url}", "-o", str(out),
                              "--cache", str(tmp_path / "c.sqlite3")])
    assert res.exit_code == 0, res.output
    assert [q.reference for q in load_queries(out)] == [
        "Reference: What is 2 + 2?", "7 is a prime number.", "Reference: Why is the sky blue?"]


def test_references_build_with_a_local_vllm_model(tiny_model_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["references", "build", str(_queries(tmp_path)), "--engine",
                              f"vllm:{tiny_model_dir}", "-o", str(out), "--max-tokens", "16",
                              "--max-model-len", "1024", "--cache", str(tmp_path / "c.sqlite3")])
    # the tiny random model writes nonsense, but every row gets a non-empty reference
    assert res.exit_code == 0, res.output
    refs = [q.reference for q in load_queries(out)]
    assert refs[1] == "7 is a prime number." and all(refs)


def test_a_study_on_the_default_judge_warns_of_rows_without_a_reference(tmp_path):
    rows = _jsonl(tmp_path / "ev.jsonl", [
        {"id": "q1", "query": "First question?", "reference": "First answer."},
        {"id": "q2", "query": "Second question?"}])
    cfg = _config(tmp_path, "default", rows)
    with pytest.warns(UserWarning, match=rf"{rows}: 1 of 2 queries have no 'reference' answer; "
                                         r"the judge 'default' \(judge.spec\) scores"):
        res = runner.invoke(app, ["study", "validate", str(cfg)])
    assert res.exit_code == 0, res.output
