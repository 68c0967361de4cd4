"""Query sets (evaluation sets, generation inputs): JSONL loading with file:line errors.

A row may carry `reference`: a strong answer to its query, which reference-anchored judges
compare an answer with (`refsim`, the default judge). It must be non-empty text."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import IclSearchError
from .io import json_type, read_jsonl_objects

QUERY_FIELDS = ("query", "instruction", "prompt")
REFERENCE_FIELD = "reference"


class QueryFileError(IclSearchError, ValueError):
    """A query file is missing or has a bad line; the message names the file and line."""


@dataclass(frozen=True)
class Query:
    id: str
    query: str
    category: str = "general"
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    reference: str | None = None

    @property
    def is_safety(self) -> bool:
        return self.category == "safety"


def reference_problem(value: Any) -> str | None:
    """Why a row's `reference` value is unusable (None when it is fine)."""
    if not isinstance(value, str):
        return f"field '{REFERENCE_FIELD}' must be text, got {json_type(value)}"
    if not value.strip():
        return f"field '{REFERENCE_FIELD}' is empty (leave the field out of a row without one)"
    return None


def load_queries(path: str | os.PathLike) -> list[Query]:
    """One JSON object per line with `query` (or `instruction` / `prompt`), optional `id`,
    `category`, `reference` (a strong answer, non-empty text) and anything else (kept in
    `meta`). Blank lines are skipped."""
    path = Path(path)
    out: list[Query] = []
    seen: dict[str, int] = {}
    for lineno, row in read_jsonl_objects(path, QueryFileError, "query file"):
        field_name = next((f for f in QUERY_FIELDS if f in row), None)
        if field_name is None:
            raise QueryFileError(
                f"{path}:{lineno}: missing field 'query' (also accepted: instruction, prompt)")
        text = row[field_name]
        if not isinstance(text, str) or not text.strip():
            raise QueryFileError(f"{path}:{lineno}: field '{field_name}' must be non-empty text")
        qid = str(row.get("id", lineno))
        if qid in seen:
            raise QueryFileError(
                f"{path}:{lineno}: field 'id': duplicate id {qid!r} (first on line {seen[qid]})")
        seen[qid] = lineno
        if REFERENCE_FIELD in row and (why := reference_problem(row[REFERENCE_FIELD])):
            raise QueryFileError(f"{path}:{lineno}: {why}")
        category = row.get("category") or "general"
        meta = {k: v for k, v in row.items()
                if k not in ("id", field_name, "category", REFERENCE_FIELD)}
        out.append(Query(qid, text, str(category), meta, row.get(REFERENCE_FIELD)))
    if not out:
        raise QueryFileError(f"{path}: no queries in file")
    return out
