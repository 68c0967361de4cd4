"""Content-addressed caches in SQLite: `SqliteStore`, the one key -> value store every cache is
built on, and `Cache`, its JSON flavour.

`Cache` holds generations (engine + prompt + sampling parameters) and judgements (judge +
rubric version + query + response), so no trial pays twice for the same work; the
embedding cache (`icl_search.index.cache`) stores float32 vectors in the same kind of store.
SQLite in WAL mode: each `put_many` is one transaction, so a crash leaves either the old or
the new rows, never a corrupt file; several processes may share one cache file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl_search.paths import home


def cache_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def default_cache_path() -> Path:
    return home() / "cache.sqlite3"


@dataclass(frozen=True)
class Table:
    """One key -> value table of a `SqliteStore` (column names kept from existing files)."""

    name: str
    key: str = "key"
    value: str = "value"
    value_type: str = "TEXT"
    extra: str = ""  # further column definitions, e.g. a creation time

    def ddl(self) -> str:
        extra = f", {self.extra}" if self.extra else ""
        return (f"CREATE TABLE IF NOT EXISTS {self.name} ({self.key} TEXT PRIMARY KEY, "
                f"{self.value} {self.value_type} NOT NULL{extra})")


class SqliteStore:
    """Raw key -> value tables in one SQLite file, shared by threads and processes.

    WAL mode and a 60 s busy timeout let several study workers read and add at once; a lock
    serialises this process's threads on its one connection. Reads go in chunks below
    SQLite's oldest limit on host parameters (999)."""

    _CHUNK = 500

    def __init__(self, path: str | os.PathLike, tables: Sequence[Table]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tables = {t.name: t for t in tables}
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for t in tables:
                self._db.execute(t.ddl())

    def get_raw(self, table: str, keys: Sequence[str]) -> dict[str, Any]:
        """The stored values of those `keys` that are present (as SQLite returns them)."""
        t = self.tables[table]
        found: dict[str, Any] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(uniq), self._CHUNK):
                part = uniq[i:i + self._CHUNK]
                rows = self._db.execute(
                    f"SELECT {t.key}, {t.value} FROM {t.name} "
                    f"WHERE {t.key} IN ({','.join('?' * len(part))})", part).fetchall()
                found.update(rows)
        return found

    def put_raw(self, table: str, rows: Iterable[tuple[str, Any]]) -> None:
        """Insert or replace `(key, value)` rows in one transaction."""
        t = self.tables[table]
        rows = list(rows)
        if not rows:
            return
        with self._lock, self._db:
            self._db.executemany(
                f"INSERT OR REPLACE INTO {t.name} ({t.key}, {t.value}) VALUES (?, ?)", rows)

    def count(self, table: str) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Cache:
    """JSON values by content key, with hit and miss counts (`hits`, `misses`)."""

    TABLE = Table("kv", extra="created REAL DEFAULT (unixepoch('subsec'))")

    def __init__(self, path: str | os.PathLike | None = None):
        self._store = SqliteStore(path if path else default_cache_path(), [self.TABLE])
        self.path = self._store.path
        self.hits = 0
        self.misses = 0

    key = staticmethod(cache_key)

    def get(self, key: str) -> Any | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found = {k: json.loads(v) for k, v in self._store.get_raw("kv", keys).items()}
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    def put(self, key: str, value: Any) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        self._store.put_raw("kv", ((k, json.dumps(v, ensure_ascii=False)) for k, v in items))

    def __len__(self) -> int:
        return self._store.count("kv")

    def close(self) -> None:
        self._store.close()
