"""The docs site and the README: `mkdocs build --strict` passes (a broken link, a missing
anchor or a docstring page naming a renamed module fails here), and the README stays a front
door that points into the docs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_docs_build_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
         "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    # the API pages were rendered from the docstrings, not left as bare `:::` directives
    bundle_page = (tmp_path / "site" / "api" / "bundle" / "index.html").read_text()
    assert 'id="icl_search.bundle.Bundle.render"' in bundle_page
    assert ":::" not in bundle_page
    # the config reference is generated from the schema: every section and field is there
    from icl_search.study.config import StudyConfig

    config_page = (tmp_path / "site" / "config" / "index.html").read_text()
    assert "CONFIG-REFERENCE" not in config_page
    for section, field in [("optuna", "n_trials"), ("eval", "confirm_fraction"),
                           ("search", "strategies")]:
        assert field in StudyConfig.model_fields[section].annotation.model_fields
        assert f"[{section}]" in config_page and f"<code>{field}</code>" in config_page


def test_readme_is_short_and_its_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets, "the README links into the docs"
    missing = [t for t in targets if not t.startswith("http") and not (REPO / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
