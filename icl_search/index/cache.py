"""The embedding cache: float32 vectors keyed by sha256(embedder id + text), and each embedder's
dimension, in one SQLite file built on `icl_search.cache.SqliteStore` (WAL mode, so every pool
and study worker shares it). Re-indexing a grown pool only embeds the new texts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from icl_search.cache import SqliteStore, Table
from icl_search.paths import home

# Table and column names of the files written before the store was shared: kept, so an
# existing embedding cache is read as it is.
_VECTORS = Table("embeddings", value="vec", value_type="BLOB")
_DIMS = Table("embedders", key="id", value="dim", value_type="INTEGER")


class EmbeddingCache:
    """Embeddings stored in SQLite, keyed by sha256(embedder id + text); raw float32 bytes."""

    def __init__(self, path: str | Path | None = None):
        self._store = SqliteStore(path if path is not None else home() / "embeddings.sqlite3",
                                  [_VECTORS, _DIMS])
        self.path = self._store.path

    @staticmethod
    def key(embedder_id: str, text: str) -> str:
        return hashlib.sha256(f"{embedder_id}\x00{text}".encode()).hexdigest()

    def get_many(self, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for k, blob in self._store.get_raw(_VECTORS.name, keys).items():
            vec = np.frombuffer(blob, dtype=np.float32)
            if vec.shape[0] == dim:  # a foreign row of another size is simply a miss
                found[k] = vec
        return found

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        self._store.put_raw(_VECTORS.name, (
            (k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items))

    def dim(self, embedder_id: str) -> int | None:
        row = self._store.get_raw(_DIMS.name, [embedder_id]).get(embedder_id)
        return int(row) if row is not None else None

    def set_dim(self, embedder_id: str, dim: int) -> None:
        self._store.put_raw(_DIMS.name, [(embedder_id, int(dim))])

    def __len__(self) -> int:
        return self._store.count(_VECTORS.name)

    def close(self) -> None:
        self._store.close()
