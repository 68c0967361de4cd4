"""Every command's `--help`: each argument and option explained, an example, no `<bool>`,
outputs as -o/--out."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.cli.examples import EXAMPLES

runner = CliRunner()


def _commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), cmd


COMMANDS = dict(_commands(typer.main.get_command(app)))


def test_every_command_has_an_example_and_no_stale_one():
    assert set(COMMANDS) == set(EXAMPLES)
    for name, example in EXAMPLES.items():
        assert example.startswith(f"icl-search {name}"), (name, example)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_explains_every_parameter_and_shows_an_example(name):
    cmd = COMMANDS[name]
    for p in cmd.params:
        assert getattr(p, "help", None), f"{name}: {p.name} has no help text"
        if p.name in ("out", "out_opt"):
            assert set(p.opts) == {"--out", "-o"}, f"{name}: output option is {p.opts}"
    r = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert f"Example: {EXAMPLES[name]}" in r.output
    assert "<bool>" not in r.output


def test_root_help_and_version():
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--version" in r.output and "<bool>" not in r.output


def test_pool_import_takes_out_as_an_option_or_an_argument(tmp_path):
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps([{"instruction": "Name a primary colour.", "input": "",
                                "output": "Red is a primary colour."}]))
    r = runner.invoke(app, ["pool", "import", str(src), "--format", "alpaca",
                            "-o", str(tmp_path / "a.jsonl")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.jsonl").read_text().count("\n") == 1
    r = runner.invoke(app, ["pool", "import", str(src), str(tmp_path / "b.jsonl"),
                            "--format", "alpaca"])
    assert r.exit_code == 0 and (tmp_path / "b.jsonl").is_file()
    # neither, or both: a user error, exit 2, nothing written
    for extra in ([], [str(tmp_path / "c.jsonl"), "-o", str(tmp_path / "d.jsonl")]):
        r = runner.invoke(app, ["pool", "import", str(src), *extra, "--format", "alpaca"])
        assert r.exit_code == 2
        assert "give the pool file to write once: -o/--out OUT" in r.output
    assert not (tmp_path / "c.jsonl").exists() and not (tmp_path / "d.jsonl").exists()
