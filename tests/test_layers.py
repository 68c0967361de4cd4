"""The import layers (pyproject.toml, `[tool.importlinter]`): the rooms import only downward
and no package has an import circle, as `lint-imports` checks; old import paths live in one
list with a removal version."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from packaging.version import Version

from tests.conftest import REPO


def test_lint_imports_keeps_every_contract():
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, f"lint-imports found an import against the layers:\n{r.stdout}"
    assert "0 broken" in r.stdout


def test_version_lives_on_the_ground_floor():
    import icl_search
    from icl_search.version import __version__

    assert icl_search.__version__ == __version__


def test_every_moved_name_warns_and_names_its_new_home():
    import importlib

    from icl_search._deprecated import MOVED

    for (old, name), (new, removal) in MOVED.items():
        module = importlib.import_module(old)
        with pytest.warns(DeprecationWarning, match=rf"{new}\.{name}.*{re.escape(removal)}"):
            assert getattr(module, name) is getattr(importlib.import_module(new), name)
    import icl_search.study

    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        icl_search.study.no_such_name  # noqa: B018
    # a submodule is still found by the import system past the module __getattr__
    from icl_search.study import confirm  # noqa: F401


def test_deprecated_paths_are_removed_on_time():
    from icl_search._deprecated import MOVED
    from icl_search.version import __version__

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        current = Version(__version__) if __version__ != "0+unknown" else Version("0")
    due = [f"{m}.{n} (removal {v})" for (m, n), (_, v) in MOVED.items() if current >= Version(v)]
    assert not due, f"remove these old import paths (icl_search/_deprecated.py): {due}"
