"""The FAISS index over a pool's query embeddings (`PoolIndex`: exact `IndexFlatIP`,
`IndexHNSWFlat` or IVF with 8-bit codes; the kinds are in `icl_search.index.kinds`), saved
beside a `manifest.json` that lets a stale index be detected instead of silently returning
wrong neighbours."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import faiss
import numpy as np

from icl_search.errors import IclSearchError
from icl_search.index.embedder import Embedder
from icl_search.index.kinds import (
    IndexKind,
    check_memory,
    new_index,
    resolve_index_kind,
    search_params,
)
from icl_search.io import atomic_write
from icl_search.version import __version__

if TYPE_CHECKING:
    from icl_search.pool import Example, Pool

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class StaleIndexError(IclSearchError, RuntimeError):
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
    ivf: dict[str, int] = field(default_factory=dict)
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


class PoolIndex:
    """A FAISS inner-product index over the (normalised) query embeddings of a pool.

    Row `i` of the index is `pool.examples[i]`. Build with `PoolIndex.build`, persist with
    `save`, and reopen with `load`, which refuses or rebuilds an index whose pool,
    embedder or dimension has changed since it was saved.
    """

    def __init__(self, pool: Pool, embedder: Embedder, index: faiss.Index, kind: str,
                 hnsw: dict[str, int] | None = None, ivf: dict[str, int] | None = None):
        self.pool = pool
        self.embedder = embedder
        self.index = index
        self.kind = kind
        self.hnsw = dict(hnsw or {})
        self.ivf = dict(ivf or {})
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
        nlist: int | None = None,
        nprobe: int | None = None,
        show_progress: bool = False,
        memory_limit: int | None = None,
    ) -> PoolIndex:
        """Embed every example's query (cached texts are not re-encoded) and index them.

        `kind`: "flat" (exact; default), "hnsw", "ivf" (8-bit codes: large pools) or "auto"
        (see `icl_search.index.kinds`). A pool whose vectors and index cannot fit in
        `memory_limit` bytes (default: the memory available) is refused with an
        `IndexMemoryError` before anything is embedded. Embeddings reach the cache as they
        are computed, so an interrupted build resumes where it stopped.
        """
        embedder = embedder or Embedder()
        n = len(pool.examples)
        kind = resolve_index_kind(kind, n)  # type: ignore[assignment]
        check_memory(kind, n, embedder.dim, limit=memory_limit, hnsw_m=hnsw_m)
        vectors = embedder.encode([e.query for e in pool.examples], show_progress=show_progress)
        index, params = new_index(kind, embedder.dim, n, hnsw_m=hnsw_m,
                                  ef_construction=ef_construction, ef_search=ef_search,
                                  nlist=nlist, nprobe=nprobe)
        if kind == "ivf" and n:
            # k-means on a seeded sample: FAISS learns nothing more from over 64 per list.
            rng = np.random.default_rng(0)
            sample = min(n, 64 * params["nlist"])
            train = vectors if sample == n else vectors[np.sort(rng.choice(n, sample, False))]
            index.train(train)
        _add(index, vectors, kind, show_progress)
        if kind == "ivf":
            index.make_direct_map()  # `vectors()` (MMR) reconstructs rows
        return cls(pool, embedder, index, kind, params if kind == "hnsw" else {},
                   params if kind == "ivf" else {})

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
            ivf=dict(self.ivf),
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
            if m.index_type == "ivf" and m.ivf.get("nprobe"):
                index.nprobe = int(m.ivf["nprobe"])  # not part of FAISS's serialised index
            return cls(pool, embedder, index, m.index_type, m.hnsw, m.ivf)
        if on_stale == "error":
            raise StaleIndexError(directory, reasons)
        if on_rebuild is not None:
            on_rebuild(reasons)
        # A rebuild keeps the saved index's type and HNSW settings unless told otherwise (IVF
        # lists and probes follow the new pool size).
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
        allowed = len(self)
        if positions is not None:
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(positions, dtype=np.int64))
            allowed = len(positions)
        params = search_params(self.kind, self.index, k, allowed, sel)
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


def _add(index: faiss.Index, vectors: np.ndarray, kind: str, show_progress: bool) -> None:
    """Add the vectors in chunks, with a progress bar when asked (HNSW at 100k+ takes minutes)."""
    n = len(vectors)
    if not show_progress or n <= 50_000:
        if n:
            index.add(vectors)
        return
    from tqdm.auto import tqdm

    step = 20_000
    with tqdm(total=n, desc=f"indexing ({kind})", unit="vec", unit_scale=True) as bar:
        for i in range(0, n, step):
            index.add(vectors[i:i + step])
            bar.update(min(step, n - i))
