"""`icl-search compare`: studies side by side, on two tiny random models (real vLLM, real
judges, real SQLite storages), and the shipped configs of the second CPU model and the GPU
models."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.study import build_evaluator, load_config, open_study, run_study
from icl_search.study.confirm import confirm
from tests.conftest import REPO, TINY_KV_BYTES
from tests.helpers import confirm_config

runner = CliRunner()


def _study(tmp, model, name, *, judge_model=None, confirm_it=True, confirm_limit=10):
    """A tiny study on `model` (its judge: the logprob judge on `judge_model`), run, and
    confirmed unless told not to."""
    path = confirm_config(tmp, model, name)
    text = path.read_text().replace("max_model_len = 1024", "max_model_len = 1024\n"
                                    f"kv_cache_memory_bytes = {TINY_KV_BYTES}")
    text = text.replace("confirm_limit = 10", f"confirm_limit = {confirm_limit}")
    if judge_model is not None:
        text = text.replace(f'spec = "logprob:vllm:{model}"', f'spec = "logprob:vllm:{judge_model}"')
    path.write_text(text)
    cfg = load_config(path)
    ev = build_evaluator(cfg, say=lambda m: None)
    run_study(cfg, ev)
    if confirm_it:
        confirm(open_study(cfg), cfg, ev)
    del ev
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Two tiny random models of different seeds, judged alike; a study left unconfirmed;
    one judged by another model; one confirmed on another confirm set."""
    from icl_search.models import build_tiny_model

    root = tmp_path_factory.mktemp("compare")
    a = build_tiny_model(root / "models" / "tiny-a", seed=1)
    b = build_tiny_model(root / "models" / "tiny-b", seed=2, score_prior=0.3)
    return {
        "a": _study(root, a, "alpha"),
        "b": _study(root, b, "beta", judge_model=a),
        "unconfirmed": _study(root, a, "gamma", confirm_it=False),
        "other-judge": _study(root, a, "delta", judge_model=b),
        "other-set": _study(root, a, "epsilon", confirm_limit=8),
    }


def _panels(md: str) -> list[str]:
    return [p for p in md.split("\n## ")[1:] if p.startswith(("Judge", "Studies without"))]


def test_two_tiny_models_give_a_two_row_table_with_transfer(studies, tmp_path):
    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", str(studies["a"]), str(studies["b"]), "-o", str(out),
                            "--transfer"])
    assert r.exit_code == 0, r.output
    md = (out / "compare.md").read_text()
    (panel,) = _panels(md)  # one judge, one confirm set: one table, two rows
    body = [line for line in panel.splitlines() if line.startswith(("| alpha", "| beta"))]
    assert len(body) == 2
    alpha, beta = body
    # every reference column and the other model's bundle have a score with an interval
    for line in (alpha, beta):
        assert line.count("[") >= 6 and "missing: not" not in line, line
    assert "own bundle" in alpha and "own bundle" in beta
    assert "tiny-a" in alpha and "tiny-b" in beta and "| base |" in alpha

    df = pl.read_csv(out / "compare.csv")
    scored = df.filter(pl.col("judge_role") == "study")
    assert set(scored["study"]) == {"alpha", "beta"}
    assert scored.filter(pl.col("context") == "zero-shot")["score"].null_count() == 0
    tr = scored.filter(pl.col("context") == "transfer:beta", pl.col("study") == "alpha")
    assert tr["score"][0] is not None and tr["low"][0] <= tr["score"][0] <= tr["high"][0]
    # hygiene and length were stored with every context's answers
    assert scored.filter(pl.col("context") == "zero-shot")["hygiene_answers"].min() > 0
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare.html").exists()

    # a second run reads what is stored: the same table, no model loaded
    again = tmp_path / "again"
    r = runner.invoke(app, ["compare", str(studies["a"]), str(studies["b"]), "-o", str(again),
                            "--transfer", "--stored"])
    assert r.exit_code == 0, r.output
    assert (again / "compare.md").read_text() == md


def test_a_study_without_confirmation_shows_its_row_with_missing_cells_named(studies, tmp_path):
    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", str(studies["a"]), str(studies["unconfirmed"]),
                            "-o", str(out), "--stored"])
    assert r.exit_code == 0, r.output
    md = (out / "compare.md").read_text()
    alpha, lost = _panels(md)
    assert "| gamma" not in alpha and lost.startswith("Studies without a confirmation")
    (gamma,) = [line for line in lost.splitlines() if line.startswith("| gamma")]
    # zero-shot, inst_1k, baseline, bundle, search top
    assert gamma.count("missing: not confirmed") == 5
    assert "`gamma` has no confirmation" in md
    df = pl.read_csv(out / "compare.csv").filter(pl.col("study") == "gamma")
    assert df["score"].null_count() == len(df) and df["missing"].null_count() == 0


def test_mismatched_judges_or_confirm_sets_are_not_put_in_one_column(studies, tmp_path):
    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", str(studies["a"]), str(studies["other-judge"]),
                            str(studies["other-set"]), "-o", str(out), "--stored"])
    assert r.exit_code == 0, r.output
    md = (out / "compare.md").read_text()
    panels = _panels(md)
    assert len(panels) == 3  # three (judge, confirm set) pairs: three tables
    for p in panels:
        assert sum(line.startswith("| ") and not line.startswith(("| study", "| ---"))
                   for line in p.splitlines()) == 1, p
    assert "`alpha` and `delta` are not in one column: alpha was judged by" in md
    assert "`alpha` and `epsilon` are not in one column: they were confirmed on different " \
        "confirm sets" in md
    # the judges are named: alpha's is the logprob judge on tiny-a, delta's on tiny-b
    (reason,) = [line for line in md.splitlines() if "`alpha` and `delta`" in line]
    assert "tiny-a" in reason.split("delta by")[0] and "tiny-b" in reason.split("delta by")[1]


def test_bad_input_is_one_clear_message_and_writes_nothing(studies, tmp_path):
    out = tmp_path / "cmp"
    cases = [
        (["compare", str(tmp_path / "nope.toml"), "-o", str(out)], "nope.toml: no such study config"),
        (["compare", "alpha", "-o", str(out)], "a study name needs --storage"),
        (["compare", "nobody", "--storage", load_config(studies["a"]).storage_url, "-o",
          str(out)], "no study named 'nobody'"),
        (["compare", str(studies["a"]), str(studies["a"]), "-o", str(out)],
         "study 'alpha' is given twice"),
        (["compare", str(studies["a"]), "-o", str(out), "--review", "beta=" + str(tmp_path)],
         "no study named 'beta' in the table"),
        (["compare", str(studies["a"]), "-o", str(out), "--review", "alpha=" + str(tmp_path)],
         "--review 'alpha="),
    ]
    for args, message in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "error:" in r.output and message in r.output, r.output
        assert "Traceback" not in r.output
    assert not out.exists()


def test_shipped_second_model_and_gpu_configs_validate_and_share_columns():
    import optuna

    from icl_search.compare.sources import model_info

    small = load_config(REPO / "studies" / "smollm2.toml")
    demo = load_config(REPO / "studies" / "demo.toml")
    assert small.model.engine == "vllm:smollm2"
    # the same judge, eval and confirm set as the demo: one column in `compare`
    assert (small.judge, small.eval, small.decoding) == (demo.judge, demo.eval, demo.decoding)
    empty = optuna.create_study()
    assert model_info(empty, small).label == "smollm2 (135M, instruct)"
    assert model_info(empty, demo).label == "gemma-3-270m (270M, base)"
    gpu = {p.stem: load_config(p) for p in sorted((REPO / "studies").glob("gpu-*.toml"))
           if p.stem != "gpu-7b"}
    assert set(gpu) == {"gpu-llama31-8b", "gpu-mistral-7b-v03", "gpu-qwen25-7b"}
    labels = sorted(model_info(empty, c).label for c in gpu.values())
    assert labels == ["Llama-3.1-8B (8B, base)", "Mistral-7B-v0.3 (7B, base)",
                      "Qwen2.5-7B (7B, base)"]
    first = next(iter(gpu.values()))
    for c in gpu.values():
        assert (c.judge, c.eval, c.decoding) == (first.judge, first.eval, first.decoding)
        assert c.search.baseline.urial and c.eval.has_confirm and c.model.gpu_memory_utilization
        assert c.judge.audit == ["default"]  # another family than the LLM study judge
