"""Verdicts: one JSON line per judgement, appended (and synced) the moment it is given.

    {"pair": "p017", "verdict": "X", "rater": "ana", "sheet": 2}

A later line for the same rater and pair replaces an earlier one. Extra fields (an LLM
rater's per-order answers) are kept and ignored by the score.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl_search.io import read_jsonl_objects
from icl_search.review.folder import VERDICTS, ReviewError, verdicts_path

_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


@dataclass(frozen=True)
class Verdict:
    pair: str
    verdict: str  # X | Y | tie
    rater: str
    sheet: int | None = None


def _lock(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path.resolve(), threading.Lock())


def append_verdicts(folder: Path, rater: str, rows: Iterable[dict[str, Any]]) -> Path:
    """Append verdict rows for `rater` to its file and sync them to disk before returning."""
    path = verdicts_path(folder, rater)
    lines = []
    for row in rows:
        if row.get("verdict") not in VERDICTS:
            raise ReviewError(f"verdict {row.get('verdict')!r}: accepted: {', '.join(VERDICTS)}")
        lines.append(json.dumps({**row, "rater": rater}, ensure_ascii=False) + "\n")
    with _lock(path), path.open("a", encoding="utf-8") as fh:
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())
    return path


def read_verdicts(path: Path, known_pairs: Iterable[str] | None = None) -> list[Verdict]:
    """The verdicts of one file, the last per (rater, pair); errors name the file and line."""
    known = set(known_pairs) if known_pairs is not None else None
    latest: dict[tuple[str, str], Verdict] = {}
    for lineno, row in read_jsonl_objects(path, ReviewError, "verdict file"):
        where = f"{path}:{lineno}"
        for f in ("pair", "verdict", "rater"):
            if not isinstance(row.get(f), str):
                raise ReviewError(f"{where}: field {f!r} must be text")
        if row["verdict"] not in VERDICTS:
            raise ReviewError(f"{where}: field 'verdict' is {row['verdict']!r}; accepted: "
                              f"{', '.join(VERDICTS)}")
        if known is not None and row["pair"] not in known:
            raise ReviewError(f"{where}: pair {row['pair']!r} is not in this review")
        sheet = row.get("sheet")
        v = Verdict(row["pair"], row["verdict"], row["rater"],
                    int(sheet) if isinstance(sheet, int) else None)
        latest[(v.rater, v.pair)] = v
    return list(latest.values())


def read_all(folder_path: Path, known_pairs: Iterable[str]) -> list[Verdict]:
    known = list(known_pairs)
    out: list[Verdict] = []
    for path in sorted(Path(folder_path).glob("verdicts-*.jsonl")):
        out += read_verdicts(path, known)
    return out
