"""Bad inputs a user (or a hostile file) gives the CLI: each ends in one message naming the
file and field, exit code 2, and nothing created (issues 15 and 16)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from icl_search.bundle import Bundle
from icl_search.cli import app
from icl_search.pool import Example

REPO = Path(__file__).resolve().parents[1]
POOLS = REPO / "pools"
runner = CliRunner()


def write_config(tmp: Path, engine: str = "vllm:default") -> Path:
    path = tmp / "s.toml"
    path.write_text(f"""
name = "s"
[model]
engine = "{engine}"
[pool]
path = "{POOLS / 'default.jsonl'}"
[eval]
path = "{POOLS / 'eval' / 'dev.jsonl'}"
[search]
system_prompts = ["{POOLS / 'system_prompts' / 'urial_style.txt'}"]
""", encoding="utf-8")
    return path


def error_of(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.stderr.split())


def test_a_binary_config_file_is_one_message_naming_the_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    result = runner.invoke(app, ["study", "validate", str(path)])
    assert error_of(result) == (f"error: {path}: not UTF-8 text (byte 1); a study config is a "
                                "TOML text file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]  # no study created
    latin1 = write_config(tmp_path)
    latin1.write_bytes(latin1.read_bytes().replace(b'name = "s"', b'name = "s"\n# caf\xe9'))
    result = runner.invoke(app, ["study", "validate", str(latin1)])
    assert error_of(result).startswith(f"error: {latin1}: not UTF-8 text (byte ")


def test_a_missing_engine_folder_names_the_config_and_model_engine(tmp_path):
    missing = tmp_path / "models" / "nope"
    path = write_config(tmp_path, f"vllm:{missing}")
    result = runner.invoke(app, ["study", "validate", str(path)])
    assert error_of(result) == (f"error: {path}: field 'model.engine': model folder not found: "
                                f"{missing}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_a_bundle_without_its_template_is_an_error_naming_the_field(tmp_path):
    bundle = Bundle.create(model="gemma-3-270m", system="Be helpful.",
                           examples=[Example("a", "What is 2 + 2?", "2 + 2 = 4.")])
    path = bundle.save(tmp_path / "b.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["template"]
    path.write_text(json.dumps(data), encoding="utf-8")
    result = runner.invoke(app, ["select", str(path), "What is 3 + 3?"])
    assert error_of(result) == (f"error: {path}: template: missing (every exported bundle "
                                "records the template its prompts were searched with)")
