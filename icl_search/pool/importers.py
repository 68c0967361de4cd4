"""Importers: other formats (URIAL prompt files, Alpaca JSON, ShareGPT / OpenAI messages,
just-eval outputs) into a `Pool`. Rows that would not validate are left out with a
`PoolWarning`, so an import always saves as a valid pool."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from icl_search.io import json_type, read_jsonl_objects
from icl_search.pool.schema import (
    DEFAULT_CATEGORY,
    IMPORT_FORMATS,
    Example,
    PoolError,
    PoolWarning,
    example_from_row,
    first_line,
    normalise_query,
    read_text,
    row_of,
)
from icl_search.pool.store import Pool
from icl_search.pool.urial import read_urial
from icl_search.prompt import DEFAULT_TEMPLATE, Template


def import_file(format: str, in_path: str | Path, *, instructions: str | Path | None = None,
                template: Template = DEFAULT_TEMPLATE) -> Pool:
    """Build a pool from another format: "urial", "alpaca", "sharegpt" or "just-eval"
    (which needs `instructions`, the just-eval instructions file its outputs are joined to).

    Ids are `<file stem>-<n>` (n: 1-based position in the file; for just-eval, the just-eval
    id). Rows that would not validate (empty or absurdly long text, repeated query) are left
    out with a `PoolWarning`, so the result always saves as a valid pool. A URIAL preamble
    becomes `pool.system`.
    """
    in_path = Path(in_path)
    if format not in IMPORT_FORMATS:
        raise PoolError(f"unknown import format {format!r}: use one of "
                        f"{', '.join(IMPORT_FORMATS)}")
    if not in_path.is_file():
        raise PoolError(f"{in_path}: file not found")
    system = None
    if format == "urial":
        doc = read_urial(in_path, template)
        for w in doc.warnings:
            warnings.warn(f"{in_path}: {w}", PoolWarning, stacklevel=2)
        skipped = len(doc.examples) - len(doc.answered)
        if skipped:
            warnings.warn(f"{in_path}: {skipped} query-only block(s) without an answer left "
                          "out of the pool (`read_urial` keeps them)", PoolWarning, stacklevel=2)
        candidates, system = doc.answered, doc.system or None
    elif format == "alpaca":
        candidates = _import_alpaca(in_path)
    elif format == "sharegpt":
        candidates = _import_sharegpt(in_path)
    else:
        if instructions is None:
            raise PoolError("just-eval import needs the instructions file its outputs are "
                            "joined to (--instructions FILE)")
        candidates = _import_just_eval(in_path, Path(instructions))
    return Pool(_keep_valid(candidates, in_path), None, system)


def _keep_valid(examples: Sequence[Example], path: Path) -> list[Example]:
    kept, reasons = [], Counter()
    seen: set[str] = set()
    found: list[str] = []

    def report(fld: str | None, msg: str) -> None:
        found.append(f"{fld} {msg.split(':')[0]}")

    for e in examples:
        found.clear()
        example_from_row(row_of(e), report, tabular=False)
        key = normalise_query(e.query)
        if not found and key in seen:
            found.append("duplicate query")
        if found:
            reasons[found[0]] += 1
            continue
        seen.add(key)
        kept.append(e)
    if reasons:
        detail = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
        warnings.warn(f"{path}: left out {sum(reasons.values())} of {len(examples)} rows "
                      f"({detail})", PoolWarning, stacklevel=3)
    return kept


def _json_records(path: Path) -> list[tuple[str, Any]]:
    """Records of a JSON list file or a JSONL file, each with where it stands ("line 3" or
    "item 3"), for importers whose inputs come either way."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PoolError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, "
                            f"column {exc.colno})") from None
        return [(f"item {i}", item) for i, item in enumerate(items, 1)]
    return [(f"line {n}", rec) for n, rec in read_jsonl_objects(path, PoolError)]


def _where(path: Path, at: str) -> str:
    return f"{path}:{at.split(' ')[1]}" if at.startswith("line") else f"{path}: {at}"


def _import_alpaca(path: Path) -> list[Example]:
    out = []
    for n, (at, rec) in enumerate(_json_records(path), 1):
        if not isinstance(rec, dict):
            raise PoolError(f"{_where(path, at)}: expected an object with instruction, input, "
                            f"output; got {json_type(rec)}")
        for key in ("instruction", "output"):
            if not isinstance(rec.get(key), str):
                raise PoolError(f"{_where(path, at)}: {key}: "
                                + ("missing field" if key not in rec
                                   else f"must be text, got {json_type(rec[key])}"))
        extra = rec.get("input")
        query = rec["instruction"]
        if isinstance(extra, str) and extra.strip():
            query = f"{query.rstrip()}\n\n{extra.strip()}"
        out.append(Example(id=f"{path.stem}-{n}", query=query, answer=rec["output"],
                           category=_category(rec), source=f"alpaca:{path.name}"))
    return out


_USER_ROLES = {"human", "user"}
_ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}


def _turn_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, dict)
                 and p.get("type") == "text" and isinstance(p.get("text"), str)]
        return "\n".join(parts) if parts else None
    return None


def _first_exchange(turns: list[Any]) -> tuple[str, str] | None:
    query = None
    for t in turns:
        if not isinstance(t, dict):
            return None
        role = str(t.get("from", t.get("role", ""))).lower()
        text = _turn_text(t.get("value", t.get("content")))
        if query is None and role in _USER_ROLES:
            query = text
        elif query is not None and role in _ASSISTANT_ROLES:
            return (query, text) if text is not None else None
    return None


def _import_sharegpt(path: Path) -> list[Example]:
    out, unusable = [], 0
    for n, (at, rec) in enumerate(_json_records(path), 1):
        turns = rec.get("conversations", rec.get("messages")) if isinstance(rec, dict) else None
        if not isinstance(turns, list):
            raise PoolError(f"{_where(path, at)}: expected an object with 'conversations' "
                            "(ShareGPT) or 'messages' (OpenAI) list")
        pair = _first_exchange(turns)
        if pair is None or pair[0] is None:
            unusable += 1
            continue
        out.append(Example(id=f"{path.stem}-{n}", query=pair[0], answer=pair[1],
                           category=_category(rec), source=f"sharegpt:{path.name}"))
    if unusable:
        warnings.warn(f"{path}: {unusable} conversation(s) without a user turn followed by an "
                      "assistant turn left out", PoolWarning, stacklevel=3)
    return out


def _category(rec: dict[str, Any]) -> str:
    c = rec.get("category")
    return c.strip() if isinstance(c, str) and c.strip() else DEFAULT_CATEGORY


def _read_ndjson(path: Path, columns: Sequence[str]) -> pl.DataFrame:
    if not path.is_file():
        raise PoolError(f"{path}: file not found")
    try:
        df = pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise PoolError(f"{path}: cannot read JSONL: {first_line(exc)}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PoolError(f"{path}: missing field(s) {', '.join(missing)} "
                        f"(found: {', '.join(df.columns)})")
    return df


def _import_just_eval(outputs: Path, instructions: Path) -> list[Example]:
    out_df = _read_ndjson(outputs, ("id", "output"))
    ins_df = _read_ndjson(instructions, ("id", "instruction"))
    # Ids are numbers in one release and strings in another: join on their text.
    out_df = out_df.with_columns(pl.col("id").cast(pl.String))
    ins_df = ins_df.with_columns(pl.col("id").cast(pl.String))
    keep = [c for c in ("id", "instruction", "category", "dataset") if c in ins_df.columns]
    joined = out_df.join(ins_df.select(keep), on="id", how="inner", maintain_order="left")
    unmatched = out_df.height - joined.height
    if unmatched:
        warnings.warn(f"{outputs}: {unmatched} output(s) whose id is not in {instructions} "
                      "left out", PoolWarning, stacklevel=3)
    source = f"just-eval:{outputs.name}"
    examples = []
    for row in joined.iter_rows(named=True):
        generator = row.get("generator")
        examples.append(Example(
            id=f"{outputs.stem}-{row['id']}",
            query=row["instruction"] or "",
            answer=row["output"] or "",
            category=row.get("category") or DEFAULT_CATEGORY,
            tags=(row["dataset"],) if row.get("dataset") else (),
            source=f"just-eval:{Path(generator).stem}" if generator else source,
        ))
    return examples
