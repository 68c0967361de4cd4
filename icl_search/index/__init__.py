"""Embeddings of pool queries and the FAISS index over them, in three rooms:

- `cache`: the `EmbeddingCache` (content-addressed by embedder id + text, on the shared
  SQLite store of `icl_search.cache`);
- `embedder`: the `Embedder` (a sentence-transformers model, normalised float32 vectors);
- `kinds`: the index kinds (flat, HNSW, IVF with 8-bit codes), what "auto" picks, and the
  memory check made before a build;
- `faiss_index`: the `PoolIndex`, persisted with a manifest that detects a stale index.

Everything is importable from `icl_search.index`.
"""

from icl_search.index.cache import EmbeddingCache
from icl_search.index.embedder import DEFAULT_EMBEDDER, Embedder, EmbedderError
from icl_search.index.faiss_index import (
    MANIFEST,
    MANIFEST_FORMAT,
    Hit,
    Manifest,
    PoolIndex,
    StaleIndexError,
)
from icl_search.index.kinds import (
    AUTO_FLAT_MAX,
    INDEX_KINDS,
    IndexKind,
    IndexMemoryError,
    check_memory,
    index_memory_bytes,
    resolve_index_kind,
)
from icl_search.paths import home

__all__ = [
    "AUTO_FLAT_MAX", "DEFAULT_EMBEDDER", "INDEX_KINDS", "MANIFEST", "MANIFEST_FORMAT",
    "Embedder", "EmbedderError", "EmbeddingCache", "Hit", "IndexKind", "IndexMemoryError",
    "Manifest", "PoolIndex", "StaleIndexError", "check_memory", "home", "index_memory_bytes",
    "resolve_index_kind",
]
