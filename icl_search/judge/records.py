"""Judged records for distillation: one answer, its query, the judge's 1-5 score per aspect.

Readers for JSONL / Parquet score files (a `scores` object or one column per aspect, or a judge
score file joined with the JSONL that was scored) and for just-eval's reference judgements.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl_search.errors import IclSearchError
from icl_search.evalset import QUERY_FIELDS
from icl_search.io import read_jsonl_objects
from icl_search.judge.result import RESPONSE_FIELDS
from icl_search.judge.rubric import ALL_ASPECTS

OVERALL = "overall"


class DistillError(IclSearchError, ValueError):
    """Distillation cannot start or its inputs are unusable; names the file, row or field."""


@dataclass(frozen=True)
class Record:
    """One judged answer: what was asked, what came back, the judge's 1-5 score per aspect."""

    query: str
    response: str
    scores: dict[str, float]
    category: str = "regular"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.exists():
        raise DistillError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import polars as pl

        try:
            df = pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError) as e:
            raise DistillError(f"{path}: not a readable Parquet file ({e})") from None
        return [(i + 1, row) for i, row in enumerate(df.iter_rows(named=True))]
    return list(read_jsonl_objects(path, DistillError))


def _scores_of(row: Mapping[str, Any], where: str) -> dict[str, float]:
    """Scores from a `scores` object or from flat aspect columns (a judge score file);
    None / NaN / "N/A" are unscored aspects. Falls back to `overall` alone."""
    from icl_search.judge.parsing import NA, coerce_score

    raw = row.get("scores")
    if raw is not None and not isinstance(raw, Mapping):
        raise DistillError(f"{where}: field 'scores' must be an object {{aspect: 1-5}}")
    source = raw if raw is not None else {a: row.get(a) for a in ALL_ASPECTS if a in row}
    out: dict[str, float] = {}
    for aspect, value in source.items():
        if aspect not in ALL_ASPECTS:
            raise DistillError(f"{where}: scores.{aspect}: unknown aspect; accepted: "
                               f"{', '.join(ALL_ASPECTS)}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        score, problem = coerce_score(value)
        if score is None:
            if (problem or "").startswith(NA):
                continue
            raise DistillError(f"{where}: {aspect}: {problem or f'{value!r} is not a score 1-5'}")
        out[aspect] = float(score)
    if not out and row.get(OVERALL) is not None and not (
            isinstance(row[OVERALL], float) and math.isnan(row[OVERALL])):
        v = float(row[OVERALL])
        if not 1.0 <= v <= 5.0:
            raise DistillError(f"{where}: overall: {v} is outside 1-5")
        out[OVERALL] = v
    return out


def load_records(path: str | os.PathLike, *, responses: str | os.PathLike | None = None
                 ) -> list[Record]:
    """Records from a JSONL or Parquet file.

    Accepted shapes: rows with a query (`query` / `instruction` / `prompt`), a response
    (`response` / `answer` / `output`) and scores (a `scores` object or one column per aspect);
    or a judge score file (`icl-search judge score --out X.parquet`: id, category, one column
    per aspect), which holds no texts: pass the JSONL that was scored as `responses`, joined
    on `id`. Rows without any score (every aspect missing) are skipped."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DistillError(f"{path}: no rows")
    texts: dict[str, tuple[str, str | None, str | None]] = {}
    if responses is not None:
        rpath = Path(responses)
        for lineno, r in _read_rows(rpath):
            q = next((r[k] for k in QUERY_FIELDS if k in r), None)
            a = next((r[k] for k in RESPONSE_FIELDS if k in r), None)
            if q is None:
                raise DistillError(f"{rpath}:{lineno}: field 'query' is missing")
            texts[str(r.get("id", lineno))] = (q, a, r.get("category"))
    out = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        query = next((row[k] for k in QUERY_FIELDS if row.get(k) is not None), None)
        response = next((row[k] for k in RESPONSE_FIELDS if row.get(k) is not None), None)
        category = row.get("category")
        if query is None or response is None:
            ident = str(row.get("id", lineno))
            if responses is None:
                raise DistillError(
                    f"{where}: no query/response text in the row (a judge score file holds "
                    "only scores): also give the JSONL that was scored (--responses), joined "
                    "on 'id'")
            if ident not in texts:
                raise DistillError(f"{where}: id {ident!r} is not in {responses}")
            query, response, cat2 = texts[ident]
            category = category or cat2
        if response is None:
            continue  # a failed generation: nothing to learn from
        scores = _scores_of(row, where)
        if scores:
            out.append(Record(str(query), str(response), scores,
                              str(category or ("safety" if "safety" in scores else "regular"))))
    if not out:
        raise DistillError(f"{path}: no row carries a score")
    return out


def reference_records(path: str | os.PathLike, *, outputs: str | os.PathLike | None = None,
                      instructions: str | os.PathLike | None = None) -> list[Record]:
    """Records from just-eval's reference judgements joined with the outputs and instructions
    (the layout `icl_search.judge.calibration.load_reference` reads)."""
    from icl_search.judge.calibration import ReferenceFileError, load_reference

    try:
        rows = load_reference(path, outputs=outputs, instructions=instructions)
    except ReferenceFileError as e:
        raise DistillError(str(e)) from None
    return [Record(r.query, r.response, {a: v for a, v in r.scores.items() if v is not None},
                   r.category) for r in rows if any(v is not None for v in r.scores.values())]
