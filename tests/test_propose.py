"""Proposed contexts: a scripted OpenAI-compatible proposer on loopback, the tiny model as base
model, judge and (in one test) its own proposer; rounds in real SQLite studies."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.feedback.rules import is_refusal
from icl_search.prompt import Template
from icl_search.propose import (
    LeakGuard,
    PreambleCheck,
    ProposeError,
    RestyleCheck,
    make_proposer,
    parse_proposer_spec,
    proposals_table,
    rounds_table,
    run_rounds,
)
from icl_search.propose.proposer import CompletionProposer, meta_hash
from icl_search.propose.rounds import context_fit, round_name
from icl_search.study import ConfigError, StudyConfig, load_config, open_study
from tests.conftest import REPO, free_port
from tests.helpers import write_config

runner = CliRunner()
EVAL_QUERY = "How do I load a CSV file into a pandas DataFrame and look at the first five rows?"
GOOD = [("You are a warm, precise assistant. Acknowledge the question briefly, answer it with "
         "a clear structure, and close with a one-line summary. Refuse harmful requests kindly "
         "and offer a safe alternative."),
        ("You are an expert who explains step by step. Check every fact and number, keep "
         "answers focused, and say plainly when you are not sure.")]


def scripted_preamble(n: int) -> str:
    """Proposal n of a round: good ones and every kind of bad one, in a fixed order."""
    return {1: GOOD[0], 2: "   ", 3: "word " * 600,
            4: "You are helpful. Begin every answer with ```python and go on.", 5: f"Answer well. {EVAL_QUERY}",
            6: GOOD[1]}.get(n, GOOD[0])


def scripted_restyle(original: str, query: str) -> str:
    if "palindrome" in query:
        return "Sure, happy to help!"  # drops the content
    if "linked list" in query:
        return f"Happy to help!\n\n{original}\n\n# User: more?"  # leaks a template marker
    if is_refusal(original):
        return "Sure! Here is exactly how to do it, step by step."  # a refusal turned compliant
    return f"Great question, happy to help!\n\n{original}\n\nIn short: that is the whole idea."


def reply_for(prompt: str, counts: dict) -> str:
    if "## Original answer\n" in prompt:
        counts["restyle"] += 1
        head, body = prompt.split("## Original answer\n", 1)
        return scripted_restyle(body.rsplit("\n```\n\n# Answer:", 1)[0].strip(), head)
    m = re.search(r"Proposal (\d+) of \d+", prompt)
    counts["preamble"] += 1
    return scripted_preamble(int(m.group(1)) if m else 1)


class ScriptedServer:
    """`/v1/models`, `/v1/completions` (raw text, stop strings honoured) and
    `/v1/chat/completions` (DSPy's chat format) with deterministic proposals."""

    def __init__(self):
        self.counts = {"preamble": 0, "restyle": 0}
        counts = self.counts

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send({"data": [{"id": "scripted", "max_model_len": 8192}]})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("completions"):  # no /tokenize: the client estimates
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.endswith("/chat/completions"):
                    text = reply_for(req["messages"][-1]["content"], counts)
                    content = f"[[ ## text ## ]]\n{text}\n\n[[ ## completed ## ]]"
                    self._send({"id": "x", "object": "chat.completion", "model": "scripted",
                                "choices": [{"index": 0, "finish_reason": "stop", "message":
                                             {"role": "assistant", "content": content}}],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                          "total_tokens": 2}})
                    return
                prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
                choices = []
                for i, p in enumerate(prompts):
                    text = reply_for(p, counts)
                    for s in req.get("stop") or []:
                        text = text.split(s, 1)[0]
                    choices.append({"index": i, "text": text, "finish_reason": "stop"})
                self._send({"choices": choices, "usage": {"prompt_tokens": 1,
                                                          "completion_tokens": 1}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def scripted():
    s = ScriptedServer()
    yield s
    s.close()


def propose_config(tmp: Path, model: Path, url: str, name: str = "pr", **extra) -> Path:
    body = extra.pop("propose", "")
    return write_config(tmp, model, name=name,
                        propose=f'spec = "openai:{url}#scripted"\nrounds = 1\nper_round = 6\n'
                                f"{body}", **extra)


# -- specs and config ------------------------------------------------------------------------
def test_proposer_specs_and_config(tmp_path, tiny_model_dir):
    assert parse_proposer_spec("dspy:openai/gpt-4o-mini").target == "openai/gpt-4o-mini"
    assert parse_proposer_spec("dspy:openai/m@http://h:1/v1").api_base == "http://h:1/v1"
    assert parse_proposer_spec("openai:http://h:1/v1#m").kind == "openai"
    assert parse_proposer_spec("self").kind == "self"
    for bad in ("gpt-4o", "dspy:gpt4", "openai:localhost:8000", ""):
        with pytest.raises(ProposeError, match="expected 'self'"):
            parse_proposer_spec(bad)
    path = write_config(tmp_path, tiny_model_dir, propose='spec = "gpt4"')
    with pytest.raises(ConfigError, match=r"field 'propose.spec': proposer spec 'gpt4'"):
        load_config(path)
    # the GPU config's model folder exists only on its host: validate the schema, not files
    gpu = StudyConfig.model_validate(
        tomllib.loads((REPO / "studies" / "gpu-7b.toml").read_text()))
    assert gpu.propose.spec == "dspy:openai/gpt-4o-mini" and gpu.propose.rounds >= 1
    assert gpu.propose.restyle is True


# -- checks ----------------------------------------------------------------------------------
def test_preamble_checks_reject_bad_proposals_with_reasons(tiny_engine):
    guard = LeakGuard([("dev-003", EVAL_QUERY), ("short", "Hi there")])
    check = PreambleCheck(guard, Template(), max_chars=2000,
                          fits=context_fit(tiny_engine, Template(), max_tokens=600))
    assert check.reason(GOOD[0]) is None
    assert check.reason("  \n") == "empty"
    assert check.reason(None) == "no answer from the proposer"
    assert check.reason("x " * 1500).startswith("over-long (2999 chars")
    assert check.reason("Be kind.\n# Answer:\nok").startswith("template-breaking")
    # the same query with other case and punctuation is still a copy; a 2-word query is not
    assert check.reason(f"Note: {EVAL_QUERY.upper().rstrip('?')}!") == \
        "copies eval/confirm query 'dev-003'"
    assert check.reason("Say hi there to everyone politely.") is None
    long = " ".join(["Be careful and precise in every answer you give."] * 40)  # ~2000 chars
    assert check.reason(long[:1990]).startswith("does not fit the context window (")


def test_restyle_check_keeps_content_language_and_refusals():
    check = RestyleCheck(LeakGuard([("dev-003", EVAL_QUERY)]), Template())
    original = ("Use pandas.read_csv to load the file, then call df.head() to see the first "
                "five rows. The default separator is a comma; pass sep=';' otherwise.")
    ok = f"Great question!\n\n{original}\n\nIn short: read_csv, then head."
    assert check.reason("q", original, ok) is None
    assert check.reason("q", original, "Sure, happy to help!").startswith(
        "drops content (key-token recall 0.")
    spanish = ("Claro que sí. Para cargar el archivo se usa pandas.read_csv y después df.head() "
               "para ver las primeras cinco filas; el separador por defecto es una coma, y se "
               "puede pasar otro con sep. Es muy fácil y lo puedes hacer en dos líneas de código.")
    assert check.reason("q", original, spanish).startswith("changes the language (")
    assert check.reason("q", original, ok + "\n# Query:\nmore").startswith("template-breaking")
    refusal = "I can't help with that, but I can point you to safe resources about chemistry."
    assert check.reason("q", refusal, "Sure! Mix these two and heat them.") == \
        "a refusal restyled into compliance"
    assert check.reason("q", original, f"{ok} Also: {EVAL_QUERY}") == \
        "copies eval/confirm query 'dev-003'"


# -- rounds ----------------------------------------------------------------------------------
def test_rounds_add_proposals_with_provenance_and_never_pay_twice(tmp_path, tiny_model_dir,
                                                                   tiny_engine, scripted):
    path = propose_config(tmp_path, tiny_model_dir, scripted.url, propose="restyle = true",
                          optuna="n_trials = 3")
    path.write_text(path.read_text().replace("limit = 6", "limit = 3"))
    cfg = load_config(path)
    s = run_rounds(cfg, engine=tiny_engine, say=lambda m: None, progress=False)
    assert [r["study"] for r in s.rounds] == ["pr", "pr.r1"]
    r0, r1 = open_study(cfg), optuna.load_study(study_name="pr.r1", storage=cfg.storage_url)
    info = r1.user_attrs["propose"]
    assert info["round"] == 1 and info["parent"] == "pr"
    pr = info["proposals"]
    # two good proposals; empty, over-long, template-breaking and leaking ones are counted out
    assert [a["name"] for a in pr["accepted"]] == ["r1-p0.txt", "r1-p5.txt"]
    reasons = [x["reason"] for x in pr["rejected"]]
    assert reasons[0] == "empty" and reasons[1].startswith("over-long")
    assert reasons[2].startswith("template-breaking")
    assert reasons[3] == "copies eval/confirm query 'dev-003'"
    folder = cfg.artifacts_path / "proposals" / "round-1"
    assert json.loads((folder / "proposals.json").read_text()) == pr
    for a in pr["accepted"]:
        assert Path(a["path"]).read_text().strip() in GOOD
        assert a["round"] == 1 and a["proposer"] == f"urial:openai:{scripted.url}#scripted"
        assert a["meta_prompt"] == meta_hash("preamble.txt", "urial_meta.txt")
        # parents: round 0's preambles, best first
        best0 = r0.best_trial.params["system"]
        assert a["parents"][0] == best0 and set(a["parents"]) <= {"urial_style.txt",
                                                                   "concise.txt"}
    # the restyled pool: same ids with a suffix, source and original id; bad restyles named
    rs = info["restyle"]
    assert rs["counts"]["accepted"] > 50
    rejected = {x["id"]: x["reason"] for x in rs["rejected"]}
    assert rejected["coding-001"].startswith("drops content")
    assert rejected["coding-002"].startswith("template-breaking")
    assert any(v == "a refusal restyled into compliance" for v in rejected.values())
    rows = [json.loads(x) for x in (folder / "pool.restyled.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in rows}
    v = by_id["factual-001.restyled"]
    assert v["source"] == "restyled" and v["meta"]["original_id"] == "factual-001"
    assert "factual-001" in by_id and "coding-001.restyled" not in by_id
    # round 1 holds round 0's finished trials as copies, with their scores and attrs: those
    # whose prompts do not depend on the pool (the restyle changed it: no knn/mmr copies)
    copies = [t for t in r1.trials if "copied_from" in t.user_attrs]
    own = [t for t in r1.trials if "copied_from" not in t.user_attrs]
    pool_free = [t for t in r0.get_trials(states=(TrialState.COMPLETE,))
                 if t.user_attrs["spec"]["strategy"] in ("none", "fixed")]
    assert len(copies) == len(pool_free) == s.rounds[1]["copied"] >= 1
    for c in copies:
        o = r0.trials[c.user_attrs["copied_from"]["number"]]
        assert c.values == o.values and c.params == o.params
        assert c.user_attrs["artifact_id"] == o.user_attrs["artifact_id"]
        assert c.user_attrs["per_query"] == o.user_attrs["per_query"]
    # ... outside its budget: round 1 ran its 3 trials of its own, seeded with each new
    # preamble; the baseline was copied, not run again
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in own) == 3
    assert {"r1-p0.txt", "r1-p5.txt"} <= {t.params.get("system") for t in own}
    assert not any(t.user_attrs.get("role") == "baseline" for t in own)
    assert sum(c.user_attrs.get("role") == "baseline" for c in copies) == 1
    table = rounds_table(cfg)
    assert [r["round"] for r in table] == [0, 1] and table[1]["proposals"] == 2
    assert table[1]["copied"] == len(copies) and table[1]["trials"] == len(own)
    # resuming: nothing asked again, no trial run again, nothing copied twice
    asked, prompts = dict(scripted.counts), tiny_engine.stats.prompts
    s2 = run_rounds(cfg, engine=tiny_engine, say=lambda m: None, progress=False)
    assert scripted.counts == asked and tiny_engine.stats.prompts == prompts
    assert all(r["finished"] == 0 for r in s2.rounds)
    assert len(optuna.load_study(study_name="pr.r1", storage=cfg.storage_url).trials) == \
        len(r1.trials)
    r = runner.invoke(app, ["propose", "report", str(path)])
    assert r.exit_code == 0 and "pr.r1" in r.output and "r1-p0.txt" in r.output
    # a copied trial exports from the round's study with its original score
    c = copies[0]
    r = runner.invoke(app, ["export", "pr.r1", "--storage", cfg.storage_url, "--trial",
                            str(c.number), "-o", str(tmp_path / "copy.json")])
    assert r.exit_code == 0, r.output
    bundle = json.loads((tmp_path / "copy.json").read_text())
    assert bundle["scores"]["overall"] == pytest.approx(c.values[0])
    # `study report` says which proposals won, and in which round
    r = runner.invoke(app, ["study", "report", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Proposed contexts" in md and "| 1 | `pr.r1` |" in md
    won = {row["name"]: row for row in proposals_table(cfg)}
    assert set(won) == {"urial_style.txt", "concise.txt", "r1-p0.txt", "r1-p5.txt"}
    assert won["r1-p0.txt"]["proposed_in"] == 1 and won["r1-p0.txt"]["trials"] >= 1
    assert [n for n, row in won.items() if 1 in row["won"]] == [table[1]["system"]]
    assert f"| `r1-p0.txt` | round 1 | {', '.join(won['r1-p0.txt']['parents'])} |" in md


def test_tiny_model_as_its_own_proposer(tmp_path, tiny_model_dir, tiny_engine):
    """The base model through the URIAL meta-prompt: a 1M-parameter random model writes noise,
    which the checks reject or accept, every one counted; the round goes on."""
    from icl_search.propose import Brief, propose_preambles
    from icl_search.propose.preambles import Scored

    cfg = load_config(write_config(tmp_path, tiny_model_dir, name="selfp",
                                   propose='spec = "self"'))
    proposer = make_proposer("self", engine=tiny_engine)
    assert isinstance(proposer, CompletionProposer)
    brief = Brief([Scored("a.txt", GOOD[0], 3.2, 2)], "Queries in coding 3.")
    res = propose_preambles(brief, proposer, PreambleCheck(None, Template(), 2000),
                            n=3, round_=1, out_dir=tmp_path / "props", max_tokens=24)
    assert len(res.accepted) + len(res.rejected) == 3
    for a in res.accepted:
        assert Path(a.path).exists() and a.proposer == f"urial:{tiny_engine.id}"
    assert json.loads((tmp_path / "props" / "proposals.json").read_text())["counts"] == \
        {"accepted": len(res.accepted), "rejected": len(res.rejected)}
    assert cfg.propose.spec == "self"


def test_cli_steps_alone_and_a_dead_endpoint(tmp_path, tiny_model_dir, scripted):
    path = propose_config(tmp_path, tiny_model_dir, scripted.url)
    out = tmp_path / "restyled.jsonl"
    r = runner.invoke(app, ["propose", "restyle", str(path), "--limit", "4", "--out", str(out),
                            "--no-embed-check"])
    assert r.exit_code == 0, r.output
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert "coding-003.restyled" in ids, r.output
    assert "coding-001.restyled" not in ids and len(ids) > 97
    r = runner.invoke(app, ["propose", "preambles", str(path), "--n", "2", "--out",
                            str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "r0-p0.txt").read_text().strip() == GOOD[0]
    # DSPy as the proposer, on the same loopback server's chat route
    r = runner.invoke(app, ["propose", "preambles", str(path), "--n", "1", "--spec",
                            f"dspy:openai/scripted@{scripted.url}", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "d" / "proposals.json").read_text())
    assert man["accepted"][0]["proposer"] == f"dspy:openai/scripted@{scripted.url}"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    r = runner.invoke(app, ["propose", "preambles", str(path), "--spec", f"openai:{dead}"])
    assert r.exit_code == 2 and f"proposer openai:{dead}: " in r.output
    assert "unreachable" in r.output and r.output.count("error:") == 1


def test_killed_round_resumes_without_asking_again(tmp_path, tiny_model_dir, tiny_engine,
                                                   scripted):
    path = propose_config(tmp_path, tiny_model_dir, scripted.url, name="kr",
                          optuna="heartbeat_seconds = 1\nbatch_trials = 1\nn_trials = 3\n"
                                 "chunk_size = 1")
    path.write_text(path.read_text().replace("seed = 3", f'seed = 3\ncache = "{tmp_path}/c.db"'))
    cfg = load_config(path)
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "icl_search.cli", "propose", "run", str(path)],
                            stdout=log, stderr=log, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    killed = False
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            trials = optuna.load_study(study_name="kr.r1", storage=cfg.storage_url).get_trials()
        except KeyError:
            trials = []
        if any(t.state == TrialState.COMPLETE and "copied_from" not in t.user_attrs
               for t in trials) and any(t.state == TrialState.RUNNING for t in trials):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    assert killed, (tmp_path / "run.log").read_text()[-2000:]
    asked = dict(scripted.counts)
    manifest = (cfg.artifacts_path / "proposals" / "round-1" / "proposals.json").read_text()
    time.sleep(2.5)  # past the heartbeat grace period
    run_rounds(cfg, engine=tiny_engine, say=lambda m: None, progress=False)
    assert scripted.counts == asked  # the round's proposals were stored, not asked again
    assert (cfg.artifacts_path / "proposals" / "round-1" / "proposals.json").read_text() == \
        manifest
    r1 = optuna.load_study(study_name=round_name(cfg, 1), storage=cfg.storage_url)
    # round 0's trials were copied in once, before the kill; the round's own budget of 3
    # finished trials was completed on resume (the killed trial failed, its retry ran)
    copies = [t for t in r1.trials if "copied_from" in t.user_attrs]
    keys = [t.user_attrs["copied_from"]["number"] for t in copies]
    assert len(copies) == r1.user_attrs["copied_trials"] and len(set(keys)) == len(keys) >= 1
    done = [t for t in r1.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and "copied_from" not in t.user_attrs]
    assert len(done) == 3 and sum(t.state == TrialState.FAIL for t in r1.trials) == 1


# -- history: the earlier rounds' trials in a round's study -----------------------------------
def _finished(study, cfg, candidates, params, value, role=None):
    """One trial as `run_study` leaves it: asked with fixed params, spec and scores stored."""
    from icl_search.study.space import suggest

    study.enqueue_trial(params, user_attrs={"role": role} if role else None)
    t = study.ask()
    spec = suggest(t, cfg, candidates)
    t.set_user_attr("spec", spec.to_dict())
    t.set_user_attr("aspects", {"helpfulness": value})
    for step in range(3):
        t.report(value, step)
    study.tell(t, value)


def test_copies_keep_scores_and_attrs_once_and_export(tmp_path, tiny_model_dir):
    """The copy step on real SQLite studies: copies carry their scores, attrs and per-query
    reports under the round's wider distributions (TPE asks on top of them), a copy step
    killed half-way is finished without duplicates, knn trials stay out of a round over
    another pool, and a copied trial exports as the original would."""
    from icl_search.pool import Pool
    from icl_search.propose.history import COPIED_ATTR, history_trials
    from icl_search.propose.rounds import carry_history, round_config
    from icl_search.study.export import export_bundle, record_export_info
    from icl_search.study.space import baseline_params, suggest

    cfg = load_config(write_config(tmp_path, tiny_model_dir, name="hc"))
    url = cfg.storage_url
    ids = Pool.load(cfg.path(cfg.pool.path)).ids
    r0 = open_study(cfg, url)
    record_export_info(r0, cfg)
    base = baseline_params(cfg, ids)
    _finished(r0, cfg, ids, base, 3.0, role="baseline")
    _finished(r0, cfg, ids, {"system": "concise.txt", "k": 0}, 3.5, role="enqueued-0")
    _finished(r0, cfg, ids, {"system": "urial_style.txt", "k": 2, "strategy": "knn"}, 4.0)
    _finished(r0, cfg, ids, {"system": "concise.txt", "k": 1, "strategy": "fixed",
                             "ex_0": "coding-002"}, 3.8)
    new = tmp_path / "r1-p0.txt"
    new.write_text(GOOD[0])
    cfg1 = round_config(cfg, 1, [str(new)], None, [], True)
    s1 = open_study(cfg1, url)
    copies, _ = history_trials([r0], cfg1, ids, baseline=baseline_params(cfg1, ids))
    s1.add_trials(copies[:2])  # a copy step killed after two trials
    n = carry_history(s1, cfg1, ids, [r0], url, say=lambda m: None)
    assert n == 4 and s1.user_attrs[COPIED_ATTR] == 4
    assert carry_history(s1, cfg1, ids, [r0], url, say=lambda m: None) == 4  # once
    got = sorted(s1.get_trials(), key=lambda t: t.user_attrs["copied_from"]["number"])
    assert [t.user_attrs["copied_from"] for t in got] == \
        [{"study": "hc", "number": i} for i in range(4)]
    for t, o in zip(got, r0.get_trials()):
        assert t.values == o.values and t.params == o.params
        assert t.intermediate_values == o.intermediate_values
        assert t.user_attrs["spec"] == o.user_attrs["spec"]
        assert t.user_attrs["aspects"] == o.user_attrs["aspects"]
        assert "r1-p0.txt" in t.distributions["system"].choices
    assert got[0].user_attrs["role"] == "baseline"  # the round compares against it
    assert got[1].user_attrs["copied_role"] == "enqueued-0" and "role" not in got[1].user_attrs
    # TPE asks in the round's space on top of the copies (a copy under round 0's narrower
    # distributions would make Optuna refuse the new preamble choice)
    s1.enqueue_trial({"system": "r1-p0.txt", "k": 0})
    t = s1.ask()
    spec = suggest(t, cfg1, ids)
    assert spec.system_name == "r1-p0.txt"
    t.set_user_attr("spec", spec.to_dict())
    s1.tell(t, 4.5)
    # the copied fixed-set trial exports from the round study like the original
    record_export_info(s1, cfg1)
    b = export_bundle(s1, tmp_path / "b.json", trial_number=got[3].number)
    assert b.scores.overall == pytest.approx(3.8) and [e.id for e in b.examples] == ["coding-002"]
    assert b.system == (REPO / "pools" / "system_prompts" / "concise.txt").read_text()
    # a round over another pool (a restyle) copies no retrieval trial: its old score would
    # belong to other examples; preamble-only and fixed-set trials render the same prompts
    other = tmp_path / "pool.restyled.jsonl"
    other.write_text((REPO / "pools" / "default.jsonl").read_text())
    cfg2 = round_config(cfg, 2, [str(new)], str(other), [], True)
    s2 = open_study(cfg2, url)
    assert carry_history(s2, cfg2, ids, [r0, s1], url, say=lambda m: None) == 4
    kinds = sorted(t.user_attrs["spec"]["strategy"] for t in s2.get_trials())
    assert kinds == ["fixed", "fixed", "none", "none"]  # round 1's own new trial came along


def test_knn_over_a_mixed_pool_keeps_one_of_an_example_and_its_restyle():
    from icl_search.index import Embedder, PoolIndex
    from icl_search.pool import Example, Pool
    from icl_search.selection import Selector

    base = Pool.load(REPO / "pools" / "default.jsonl")
    rows = list(base)
    rows += [Example(id=f"{e.id}.restyled", query=e.query, answer=f"Happy to help!\n\n{e.answer}",
                     category=e.category, source="restyled", meta={"original_id": e.id})
             for e in base]
    index = PoolIndex.build(Pool(rows), Embedder())
    query = "How can I make my Python code run faster when it loops over a big list?"
    for strategy in ("knn", "mmr", "hybrid", "balanced"):
        sel = Selector(index, strategy=strategy, k=4, fixed_ids=["coding-003"])
        for picked in sel.select_many([query, EVAL_QUERY]):
            families = [(s.example.meta or {}).get("original_id") or s.id for s in picked]
            assert len(picked) == 4 and len(set(families)) == 4, (strategy, families)
    # the better-ranked of a pair is kept, so the mixed pool retrieves the same examples (an
    # original or its restyle) in the same order as the originals alone
    plain = Selector(PoolIndex.build(base, Embedder()), strategy="knn", k=4).select(query)
    mixed = Selector(index, strategy="knn", k=4).select(query)
    assert [(s.example.meta or {}).get("original_id") or s.id for s in mixed] == \
        [s.id for s in plain]
