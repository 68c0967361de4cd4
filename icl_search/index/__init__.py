"""Embeddings of pool queries and the FAISS index over them, in three rooms:

- `cache`: the `EmbeddingCache` (content-addressed by embedder id + text, on the shared
  SQLite store of `icl_search.cache`);
- `embedder`: the `Embedder` (a sentence-transformers model, normalised float32 vectors);
- `faiss_index`: the `PoolIndex` (exact or HNSW), persisted with a manifest that detects a
  stale index.

Everything is importable from `icl_search.index`.
"""

from icl_search.index.cache import EmbeddingCache
from icl_search.index.embedder import DEFAULT_EMBEDDER, Embedder, EmbedderError
from icl_search.index.faiss_index import (
    AUTO_HNSW_THRESHOLD,
    MANIFEST,
    MANIFEST_FORMAT,
    Hit,
    IndexKind,
    Manifest,
    PoolIndex,
    StaleIndexError,
    resolve_index_kind,
)
from icl_search.paths import home

__all__ = [
    "AUTO_HNSW_THRESHOLD", "DEFAULT_EMBEDDER", "MANIFEST", "MANIFEST_FORMAT", "Embedder",
    "EmbedderError", "EmbeddingCache", "Hit", "IndexKind", "Manifest", "PoolIndex",
    "StaleIndexError", "home", "resolve_index_kind",
]
