"""The `Pool`: an ordered set of examples with unique ids, loaded from and saved to a pool file
(JSONL / Parquet / CSV, polars underneath, always written atomically), and the preamble file
(`<stem>.system.txt`) that may come with it."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from icl_search.io import atomic_write
from icl_search.pool.schema import (
    SYSTEM_SUFFIX,
    Example,
    PoolError,
    check,
    pool_suffix,
    row_of,
    summarise,
)


@dataclass
class Pool:
    """An ordered set of examples with unique ids.

    `system` is a preamble that came with the examples (a URIAL import, or a
    `<stem>.system.txt` file beside the pool file), else None.

    >>> pool = Pool.load("pools/default.jsonl")
    >>> pool["factual-001"].answer
    """

    examples: list[Example]
    path: Path | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        self.examples = list(self.examples)
        self._by_id: dict[str, Example] = {}
        self._index(self.examples)

    def _index(self, examples: Iterable[Example]) -> None:
        dups = []
        for e in examples:
            if e.id in self._by_id:
                dups.append(e.id)
            self._by_id[e.id] = e
        if dups:
            raise PoolError(f"duplicate example id(s): {', '.join(map(repr, dups[:10]))}"
                            + (f" and {len(dups) - 10} more" if len(dups) > 10 else ""))

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._by_id

    def __getitem__(self, id_: str) -> Example:
        try:
            return self._by_id[id_]
        except KeyError:
            where = f" {self.path}" if self.path else ""
            raise KeyError(f"no example with id {id_!r} in the pool{where}") from None

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]

    @property
    def categories(self) -> list[str]:
        return sorted({e.category for e in self.examples})

    @property
    def fingerprint(self) -> str:
        """Content hash of ids, queries and answers in order: changes whenever the pool does."""
        h = hashlib.sha256()
        for e in self.examples:
            h.update(json.dumps([e.id, e.query, e.answer], ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    # -- growing ---------------------------------------------------------------------------
    def add(self, examples: Iterable[Example], *, replace: bool = False) -> None:
        """Append examples. An id already in the pool is an error, or with `replace=True`
        the new example takes the old one's place (same position)."""
        examples = list(examples)
        new_ids = Counter(e.id for e in examples)
        clashes = [i for i, n in new_ids.items() if n > 1 or (i in self._by_id and not replace)]
        if clashes:
            raise PoolError(f"duplicate example id(s): {', '.join(map(repr, clashes[:10]))}"
                            + (f" and {len(clashes) - 10} more" if len(clashes) > 10 else "")
                            + ("" if replace else " (use replace=True to overwrite)"))
        position = {e.id: i for i, e in enumerate(self.examples)}
        for e in examples:
            if e.id in position:
                self.examples[position[e.id]] = e
            else:
                self.examples.append(e)
            self._by_id[e.id] = e

    @classmethod
    def merge(cls, *pools: Pool) -> Pool:
        """One pool holding every example of `pools`, in order; ids must not clash."""
        merged = cls([])
        for p in pools:
            merged.add(p.examples)
        systems = {p.system for p in pools if p.system}
        merged.system = systems.pop() if len(systems) == 1 else None
        return merged

    # -- files -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Pool:
        """Read a pool file (format by extension); any problem raises `PoolError` listing the
        first few as `file:line: field: message`. A `<stem>.system.txt` beside it becomes
        `system`."""
        path = Path(path)
        examples, problems = check(path)
        if problems:
            raise PoolError(summarise(path, problems), problems)
        return cls(examples, path, _read_system_file(path))

    def save(self, path: str | Path) -> Path:
        """Write the pool atomically; the format follows the extension (.jsonl/.parquet/.csv).

        `meta` is kept: a JSON object per row in JSONL, a JSON string column in Parquet and
        CSV (tags there are a list column and a comma-separated string)."""
        path = Path(path)
        suffix = pool_suffix(path)
        if suffix == ".jsonl":
            with atomic_write(path) as fh:
                for e in self.examples:
                    fh.write(json.dumps(row_of(e), ensure_ascii=False) + "\n")
        elif suffix == ".parquet":
            with atomic_write(path, "wb") as fh:
                self.to_frame().write_parquet(fh)
        else:
            frame = self.to_frame().with_columns(pl.col("tags").list.join(","))
            with atomic_write(path, "wb") as fh:
                frame.write_csv(fh)
        return path

    def to_frame(self) -> pl.DataFrame:
        """The pool as a polars frame: id, query, answer, category, tags (list), source, meta
        (JSON text, empty when there is none)."""
        return pl.DataFrame(
            {
                "id": [e.id for e in self.examples],
                "query": [e.query for e in self.examples],
                "answer": [e.answer for e in self.examples],
                "category": [e.category for e in self.examples],
                "tags": [list(e.tags) for e in self.examples],
                "source": [e.source for e in self.examples],
                "meta": [json.dumps(e.meta, ensure_ascii=False) if e.meta else ""
                         for e in self.examples],
            },
            schema={"id": pl.String, "query": pl.String, "answer": pl.String,
                    "category": pl.String, "tags": pl.List(pl.String), "source": pl.String,
                    "meta": pl.String},
        )


def system_path(pool_path: str | Path) -> Path:
    """Where the preamble that goes with a pool file lives: `<stem>.system.txt` beside it."""
    p = Path(pool_path)
    return p.with_name(p.stem + SYSTEM_SUFFIX)


def write_system(pool_path: str | Path, system: str) -> Path:
    """Write a pool's preamble beside it (atomically), ending with one newline."""
    path = system_path(pool_path)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(system + "\n")
    return path


def _read_system_file(pool_path: Path) -> str | None:
    p = system_path(pool_path)
    if not p.is_file():
        return None
    text = p.read_bytes().decode("utf-8")
    return text.removesuffix("\n")

