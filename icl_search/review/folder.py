"""A review folder on disk: its file names, its manifest, its key and its sheets.

    DIR/review.json           the manifest: pair and sheet counts, nothing that names a context
    DIR/pairs.jsonl           every pair: {pair, query, x, y} in a shuffled order
    DIR/sheets/sheet-N.jsonl  one reader's pairs, in that reader's order (same rows)
    DIR/key.json              which context is X and which is Y, per pair (never served)
    DIR/verdicts-RATER.jsonl  one line per verdict: {pair, verdict: X | Y | tie, rater, sheet}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl_search.errors import IclSearchError
from icl_search.io import read_jsonl_objects

MANIFEST = "review.json"
PAIRS = "pairs.jsonl"
KEY = "key.json"
SHEETS = "sheets"
VERDICTS_GLOB = "verdicts-*.jsonl"
FORMAT_VERSION = 1
VERDICTS = ("X", "Y", "tie")
#: A rater name a person types: it becomes part of a file name.
_RATER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
LLM_PREFIX = "llm:"


class ReviewError(IclSearchError, ValueError):
    """A review input or folder is wrong; the message names the file, line or field."""


def check_rater(name: str) -> str:
    """A person's rater name, checked: 1-40 letters, digits, `_`, `.` or `-`, starting with a
    letter or digit (it is part of the verdict file's name)."""
    name = (name or "").strip()
    if not _RATER.fullmatch(name):
        raise ReviewError(f"rater name {name!r}: use 1-40 letters, digits, '_', '.' or '-', "
                          "starting with a letter or digit")
    return name


def verdicts_path(folder: Path, rater: str) -> Path:
    """The verdict file of `rater`. A person's name is the file name as given; an LLM rater's
    name (`llm:SPEC`, holding ':' and '/') is made safe and given a short hash of the spec."""
    if rater.startswith(LLM_PREFIX):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", rater[len(LLM_PREFIX):]).strip("_.")[:40]
        digest = hashlib.sha256(rater.encode()).hexdigest()[:8]
        return Path(folder) / f"verdicts-llm_{safe}_{digest}.jsonl"
    return Path(folder) / f"verdicts-{check_rater(rater)}.jsonl"


@dataclass(frozen=True)
class Pair:
    """What a rater sees: the query and two answers, X and Y; nothing names their contexts."""

    pair: str
    query: str
    x: str
    y: str

    def to_dict(self) -> dict[str, str]:
        return {"pair": self.pair, "query": self.query, "x": self.x, "y": self.y}


def _pairs_from(path: Path) -> list[Pair]:
    out = []
    for lineno, row in read_jsonl_objects(path, ReviewError, "review pair file"):
        try:
            out.append(Pair(str(row["pair"]), row["query"], row["x"], row["y"]))
        except KeyError as exc:
            raise ReviewError(f"{path}:{lineno}: missing field {exc.args[0]!r}") from None
    return out


class ReviewFolder:
    """A review folder read back: pairs, sheets and, on request, the key."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise ReviewError(f"{self.path}: not a review folder (no {MANIFEST}; make one with "
                              "`icl-search review make`)")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReviewError(f"{manifest}: not valid JSON ({exc})") from None
        self.pairs = {p.pair: p for p in _pairs_from(self.path / PAIRS)}
        self.sheets: dict[int, list[str]] = {}
        for s in self.manifest.get("sheets", []):
            n = int(s["sheet"])
            rows = _pairs_from(self.path / SHEETS / f"sheet-{n}.jsonl")
            unknown = [p.pair for p in rows if p.pair not in self.pairs]
            if unknown:
                raise ReviewError(f"{self.path / SHEETS / f'sheet-{n}.jsonl'}: pair "
                                  f"{unknown[0]!r} is not in {PAIRS}")
            self.sheets[n] = [p.pair for p in rows]

    def key(self) -> dict[str, Any]:
        path = self.path / KEY
        if not path.is_file():
            raise ReviewError(f"{path}: the review's key is missing")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReviewError(f"{path}: not valid JSON ({exc})") from None

    def verdict_files(self) -> list[Path]:
        return sorted(self.path.glob(VERDICTS_GLOB))
