"""`make demo`'s own command sequence on the tiny model: study -> export -> report -> select.

The commands are read from the Makefile's `demo` recipe (the one-time `models prepare` /
`judge prepare` steps aside, which fetch the real default model), so a command added to the
demo is run here too and a main command cannot fail unseen again (issue 11: `make demo` died
when the best trial retrieved its examples per query).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from icl_search.bundle import NO_URIAL_FILE, Bundle
from icl_search.cli import app
from icl_search.study import load_config, open_study
from tests.conftest import REPO

try:  # the tiny-study helpers are moving to tests/helpers.py
    from tests.helpers import POOLS, write_config
except ImportError:
    from tests.test_study import POOLS, write_config

runner = CliRunner()
SETUP_ONLY = {("models", "prepare"), ("judge", "prepare")}
QUERY = "How can I make my mornings less rushed?"


def demo_commands() -> list[list[str]]:
    """The icl-search command lines of the Makefile's `demo` recipe, in order."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("demo:"))
    cmds = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        words = shlex.split(line.strip())
        if words and words[0] == "$(BIN)/icl-search":
            cmds.append(words[1:])
    return cmds


def test_the_demo_recipe_is_what_this_file_runs():
    cmds = demo_commands()
    run = [c for c in cmds if tuple(c[:2]) not in SETUP_ONLY]
    assert [c[:2] for c in run][:1] == [["study", "run"]]
    # every step of the demo after the set-up names the demo config or its bundle
    assert all("studies/demo.toml" in c or "runs/demo/bundle.json" in c for c in run), run


def run_demo(config: Path, runs: Path) -> dict[str, str]:
    """Run the demo's commands with its config and output folder replaced; output per step."""
    outputs = {}
    for cmd in demo_commands():
        if tuple(cmd[:2]) in SETUP_ONLY:
            continue
        args = [str(config) if a == "studies/demo.toml" else
                re.sub(r"^runs/demo", str(runs), a) for a in cmd]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, f"`icl-search {' '.join(args)}` exited {r.exit_code}:\n" \
                                 f"{r.output}{r.exception!r}"
        outputs[" ".join(cmd[:2]) if cmd[0] == "study" else cmd[0]] = r.output
    return outputs


def _tiny_demo_config(tmp_path: Path, model: Path, name: str, **kw) -> Path:
    path = write_config(tmp_path, model, name=name, **kw)
    text = path.read_text().replace("max_model_len = 1024",
                                    f"max_model_len = 1024\nkv_cache_memory_bytes = {64 * 2**20}")
    path.write_text(text)
    return path


def test_demo_when_retrieval_wins(tmp_path, tiny_model_dir, monkeypatch):
    # The baseline's preamble does not fit the 1024-token window, so none of its queries can
    # be generated and it fails on judge coverage; the one other trial, enqueued, retrieves
    # its examples per query (kNN), so the study's best is a retrieval trial.
    long_preamble = tmp_path / "long_preamble.txt"
    long_preamble.write_text("Answer every question carefully and completely. " * 300)
    concise = POOLS / "system_prompts" / "concise.txt"
    path = _tiny_demo_config(
        tmp_path, tiny_model_dir, "retr",
        judge="", optuna="n_trials = 2")
    text = path.read_text()
    text = text.replace("min_coverage = 0.0", "min_coverage = 0.5")
    text = re.sub(r"system_prompts = \[[^\]]*\]",
                  f'system_prompts = ["{long_preamble}", "{concise}"]', text)
    text = text.replace("[search.baseline]", 'enqueue = [{system = "concise.txt", k = 2, '
                        'strategy = "knn"}]\n[search.baseline]\n'
                        f'system = "{long_preamble}"')
    path.write_text(text)
    runs = tmp_path / "runs"
    out = run_demo(path, runs)

    study = open_study(load_config(path))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    bundle = Bundle.load(runs / "bundle.json")
    assert bundle.mode == "retrieval" and bundle.provenance.trial == 1
    assert bundle.retrieval.selection.strategy == "knn"
    # no URIAL file, and one line saying why and what to use instead
    assert not (runs / "bundle.urial.txt").exists()
    note = [line for line in out["export"].splitlines() if line.startswith("no bundle.urial")]
    assert note == [(f"no bundle.urial.txt: {NO_URIAL_FILE}; see its prompt for a query with "
                     f"`icl-search select {runs / 'bundle.json'} \"QUERY\"`")]
    assert "error" not in out["export"]
    # the report was written although the baseline failed; select prints the query's prompt
    assert (runs / "report" / "report.md").is_file()
    ids = [s.example.id for s in bundle.select(QUERY)]
    assert len(ids) == 2 and all(i in out["select"] for i in ids)
    assert bundle.render(QUERY) in out["select"]

    # the other read-only commands on a study whose baseline failed
    r = runner.invoke(app, ["study", "status", str(path)])
    assert r.exit_code == 0, r.output
    assert "1/2 finished (complete 1, fail 1)" in r.output
    assert "best: trial 1 score" in r.output and "k=2, knn" in r.output
    r = runner.invoke(app, ["study", "trials", str(path)])
    assert r.exit_code == 0, r.output

    # a later export of a fixed trial writes the URIAL file; re-exporting the retrieval best
    # then removes it instead of leaving another trial's prompt beside the bundle
    r = runner.invoke(app, ["export", str(path), "--trial", "1", "-o", str(runs / "b.json"),
                            "--format", "urial"])
    assert r.exit_code == 0
    (runs / "b.urial.txt").write_text("from an earlier export")
    r = runner.invoke(app, ["export", str(path), "-o", str(runs / "b.json"), "--format", "urial"])
    assert r.exit_code == 0 and not (runs / "b.urial.txt").exists()
    assert "removed the stale one" in r.output
    # nor a chat template: the bundle is written, with one line saying why and what to use
    r = runner.invoke(app, ["export", str(path), "-o", str(runs / "c.json"),
                            "--format", "chat-template"])
    assert r.exit_code == 0 and Bundle.load(runs / "c.json").mode == "retrieval"
    assert not (runs / "c.jinja").exists()
    assert (f"no c.jinja: a retrieval bundle chooses examples per query, which a static chat "
            f"template cannot do; serve the bundle with `icl-search serve {runs / 'c.json'}`"
            in r.output)

    # --copy-pool: a bundle folder that travels whole answers `select` from anywhere
    r = runner.invoke(app, ["export", str(path), "-o", str(runs / "portable" / "bundle.json"),
                            "--copy-pool"])
    assert r.exit_code == 0, r.output
    assert "copied the pool beside the bundle" in r.output
    retrieval = json.loads((runs / "portable" / "bundle.json").read_text())["retrieval"]
    assert "/" not in retrieval["pool"] and (runs / "portable" / retrieval["pool"]).is_file()
    far = shutil.copytree(runs / "portable", tmp_path / "far" / "portable")
    shutil.rmtree(runs / "portable")
    monkeypatch.chdir(far.parent)
    r = runner.invoke(app, ["select", "portable/bundle.json", QUERY, "--prompt-only"])
    assert r.exit_code == 0, r.output
    assert r.output == bundle.render(QUERY)


def test_demo_when_the_fixed_baseline_is_best(tmp_path, tiny_model_dir, tiny_engine):
    path = _tiny_demo_config(tmp_path, tiny_model_dir, "fixd", optuna="n_trials = 1")
    runs = tmp_path / "runs"
    out = run_demo(path, runs)
    bundle = Bundle.load(runs / "bundle.json")
    assert bundle.mode == "fixed" and bundle.provenance.trial == 0
    assert [e.id for e in bundle.examples] == ["factual-001", "advice-001"]
    assert (runs / "bundle.urial.txt").read_text(encoding="utf-8") == bundle.to_urial()
    assert "no bundle.urial" not in out["export"]
    report = (runs / "report" / "report.md").read_text(encoding="utf-8")
    assert "baseline" in report.lower()
    # the selected examples are the bundle's fixed set, in its order
    assert out["select"].index("factual-001") < out["select"].index("advice-001")
    # the same bundle as a chat template for `vllm serve --chat-template`
    r = runner.invoke(app, ["export", str(path), "-o", str(runs / "bundle.json"),
                            "--format", "chat-template"])
    assert r.exit_code == 0, r.output
    assert f"--chat-template {runs / 'bundle.jinja'}" in r.output
    _round_trips(Bundle.load(runs / "bundle.json"), runs / "bundle.jinja", tiny_engine)


@pytest.mark.parametrize("mode", ["fixed", "retrieval"])
def test_to_urial_is_an_error_only_for_retrieval_bundles(tmp_path, mode):
    from icl_search.bundle import BundleError
    from icl_search.pool import Pool
    from icl_search.selection import SelectionConfig

    pool_path = POOLS / "default.jsonl"
    if mode == "fixed":
        b = Bundle.create(model="m", system="Be brief.", examples=[Pool.load(pool_path)["factual-001"]])
        assert b.to_urial().strip()
    else:
        b = Bundle.create(model="m", system="Be brief.", selection=SelectionConfig(strategy="knn", k=2),
                          pool_path=pool_path)
        with pytest.raises(BundleError, match=re.escape(NO_URIAL_FILE)):
            b.to_urial()
    assert json.loads(b.model_dump_json())["mode"] == mode


# -- export --format chat-template -----------------------------------------------------------
def _vllm_render(engine, template_path: Path, messages: list[dict]) -> str:
    """The prompt vLLM's own chat path renders (what `vllm serve --chat-template` does)."""
    from vllm.renderers.chat_utils import load_chat_template
    from vllm.renderers.hf import resolve_chat_template_content_format, safe_apply_chat_template

    tpl = load_chat_template(template_path)
    model_config = engine.llm.llm_engine.vllm_config.model_config
    tokenizer = engine.llm.get_tokenizer()
    fmt = resolve_chat_template_content_format(tpl, None, "auto", tokenizer,
                                               model_config=model_config)
    assert fmt == "string"  # message content is passed as text, not as a list of parts
    return safe_apply_chat_template(model_config, tokenizer, messages, chat_template=tpl,
                                    tokenize=False, add_generation_prompt=True)


def _round_trips(bundle: Bundle, path: Path, engine) -> None:
    q = QUERY
    assert _vllm_render(engine, path, [{"role": "user", "content": q}]) == bundle.render(q)
    turns = [("What is 2+2?", "4."), ("And 3+3?", "6.")]
    msgs = [{"role": "system", "content": "Answer in French."}]
    for u, a in turns:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": q})
    want = bundle.prepare(q, system=["Answer in French."], turns=turns).prompt
    assert _vllm_render(engine, path, msgs) == want


def test_chat_template_renders_what_the_bundle_renders(tmp_path, tiny_engine):
    from icl_search.chat_template import to_chat_template
    from icl_search.pool import Pool

    pool = Pool.load(POOLS / "default.jsonl")
    # text that a careless template would read as Jinja, escapes, quotes and non-ASCII
    system = ('Be brief. {{ messages }} {% raw %} "quoted" \\n \\\\ {# not a comment #} '
              "émigré 😀\n\n")
    b = Bundle.create(model="m", system=system, examples=[pool["factual-001"],
                                                          pool["advice-001"]])
    path = tmp_path / "t.jinja"
    path.write_text(to_chat_template(b), encoding="utf-8")
    _round_trips(b, path, tiny_engine)
