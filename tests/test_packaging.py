"""Packaging: the declared dependencies, the extras, `--version`."""

from __future__ import annotations

import tomllib

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
