"""The public Python API: `import icl_search` re-exports what a notebook needs, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import icl_search
from tests.conftest import REPO

PUBLIC = ["load_config", "build_evaluator", "run_study", "Bundle", "Pool", "Selector",
          "make_judge", "make_engine"]


def test_import_is_lazy():
    # a fresh interpreter: importing the package loads none of the heavy libraries
    code = ("import sys, icl_search; heavy = [m for m in ('torch', 'vllm', 'optuna', "
            "'sentence_transformers', 'icl_search.study') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves_with_an_example(name):
    obj = getattr(icl_search, name)
    assert name in icl_search.__all__ and name in dir(icl_search)
    assert obj.__name__ == name
    assert ">>>" in (obj.__doc__ or ""), f"{name}'s docstring has no example"
    # the same object as from its owning module
    assert getattr(sys.modules[icl_search._EXPORTS[name]], name) is obj


def test_all_lists_exactly_the_exports():
    assert sorted(icl_search.__all__) == sorted(["__version__", *icl_search._EXPORTS])


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        icl_search.nope  # noqa: B018


def _dict_config(model) -> dict:
    return {
        "name": "nb",
        "model": {"engine": f"vllm:{model}", "max_model_len": 1024},
        "judge": {"spec": f"logprob:vllm:{model}"},
        "pool": {"path": "pools/default.jsonl"},
        "eval": {"path": "pools/eval/dev.jsonl", "limit": 4},
        "search": {"system_prompts": ["pools/system_prompts/concise.txt"], "k": [0, 2]},
        "optuna": {"n_trials": 2},
    }


def test_load_config_from_a_dict_and_a_base_folder(tiny_model_dir, tmp_path):
    data = _dict_config(tiny_model_dir)
    cfg = icl_search.load_config(data, base=REPO, **{"optuna.n_trials": 3})
    assert cfg.path(cfg.pool.path) == REPO / "pools" / "default.jsonl"
    assert cfg.optuna.n_trials == 3 and cfg.search.k == (0, 2)
    assert cfg.storage_url == f"sqlite:///{REPO / 'nb.db'}"
    assert data["optuna"] == {"n_trials": 2}  # the caller's dict is not changed
    # relative paths resolve against the base: elsewhere the pool is missing, and the error
    # names the field as for a file
    with pytest.raises(icl_search.IclSearchError, match=r"<dict>: field 'pool.path': file "
                                                        r"not found"):
        icl_search.load_config(data, base=tmp_path)
    bad = _dict_config(tiny_model_dir) | {"optuna": {"n_trails": 2}}
    with pytest.raises(icl_search.IclSearchError, match=r"field 'optuna.n_trails': unknown field"):
        icl_search.load_config(bad, base=REPO)


def test_readme_python_example_uses_only_public_names():
    import ast
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    used = {n.attr for n in ast.walk(ast.parse(code))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "ic"}
    assert used and used <= set(icl_search.__all__), used
