"""The FAISS index kinds a pool can be indexed with: what "auto" picks for a pool size, the
parameters each kind is built and searched with, and the memory each needs, checked before
anything is built.

Kinds: "flat" (exact `IndexFlatIP`), "hnsw" (`IndexHNSWFlat`: float vectors and a graph) and
"ivf" (`IndexIVFScalarQuantizer`: inverted lists of 8-bit codes, a quarter of the vectors'
size). The figures behind "auto" are `bench/selection.py`'s (`bench/results/selection.json`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import faiss

from icl_search.errors import IclSearchError

IndexKind = Literal["flat", "hnsw", "ivf", "auto"]
INDEX_KINDS = ("flat", "hnsw", "ivf", "auto")
# "auto" searches exactly up to this many vectors, and uses "ivf" above. On bench/selection.py's
# pools exact search was level with DSPy's numpy brute force (BLAS matrix-vector product, then
# a sort) up to a few thousand vectors and slower than it at ~10k (0.37 vs 0.26 ms at 12k,
# where IVF took 0.21 ms at recall@8 0.998); IVF with 8-bit codes built 4-5x faster than HNSW,
# answered as fast with higher recall@8 from 30k to 1M, and takes a quarter of the memory
# (1M x 384: 0.4 GB against HNSW's 1.7 GB, whose recall there was 0.70).
AUTO_FLAT_MAX = 5_000
# IVF scans about this many vectors per query (nprobe = IVF_SCAN * nlist / n): recall@8
# 0.97-0.98 from 10k to 1M vectors on the benchmark's pools.
IVF_SCAN = 8192


def resolve_index_kind(kind: str, n: int) -> str:
    """The concrete index kind `kind` means for `n` vectors ("auto": exact up to
    `AUTO_FLAT_MAX`, IVF above)."""
    if kind == "auto":
        return "flat" if n <= AUTO_FLAT_MAX else "ivf"
    if kind not in INDEX_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(map(repr, INDEX_KINDS))}")
    return kind


def ivf_nlist(n: int) -> int:
    """IVF lists for `n` vectors: the power of two nearest 4 sqrt(n), with at least 39
    training vectors per list (FAISS's k-means minimum)."""
    nlist = 2 ** max(0, round(math.log2(4 * math.sqrt(max(n, 1)))))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return nlist


def ivf_nprobe(nlist: int, n: int) -> int:
    """Lists searched per query so that about `IVF_SCAN` vectors are scanned."""
    return max(1, min(nlist, math.ceil(IVF_SCAN * nlist / max(n, 1))))


def new_index(kind: str, dim: int, n: int, *, hnsw_m: int = 32, ef_construction: int = 200,
              ef_search: int = 128, nlist: int | None = None, nprobe: int | None = None
              ) -> tuple[faiss.Index, dict[str, int]]:
    """An empty FAISS index of a concrete `kind` for `n` vectors, and its parameters (kept in
    the manifest). An "ivf" index must still be trained."""
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        return index, {"M": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
    if kind == "ivf":
        nlist = nlist or ivf_nlist(n)
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist,
                                              faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.nprobe = nprobe or ivf_nprobe(nlist, n)
        return index, {"nlist": nlist, "nprobe": int(index.nprobe)}
    return faiss.IndexFlatIP(dim), {}


def search_params(kind: str, index: faiss.Index, k: int, n: int, sel: Any = None) -> Any:
    """FAISS search parameters for one search of `k` results; `sel` restricts the rows."""
    if kind == "hnsw":
        # efSearch below k would cap the number of results.
        ef = max(int(index.hnsw.efSearch), k)
        return faiss.SearchParametersHNSW(efSearch=ef, sel=sel) if sel is not None \
            else faiss.SearchParametersHNSW(efSearch=ef)
    if kind == "ivf":
        nprobe = int(index.nprobe)
        if sel is not None:
            # A restricted search scans as many allowed rows as an open one would.
            nprobe = min(int(index.nlist), math.ceil(nprobe * index.ntotal / max(1, n)))
            return faiss.SearchParametersIVF(nprobe=nprobe, sel=sel)
        return faiss.SearchParametersIVF(nprobe=nprobe)
    return faiss.SearchParameters(sel=sel) if sel is not None else None


# -- memory --------------------------------------------------------------------------------
def index_memory_bytes(kind: str, n: int, dim: int, *, hnsw_m: int = 32) -> int:
    """What an index of `n` vectors of `dim` floats holds in memory."""
    kind = resolve_index_kind(kind, n)
    if kind == "flat":
        return n * dim * 4
    if kind == "hnsw":  # float vectors, level-0 links (2M per vector), upper levels, offsets
        return n * dim * 4 + int(n * hnsw_m * 2 * 4 * 1.07) + n * 16
    return n * (dim + 16) + ivf_nlist(n) * dim * 4  # codes, ids, direct map; centroids


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux `MemAvailable`), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class IndexMemoryError(IclSearchError, MemoryError):
    """A pool too large for the chosen index kind in the memory there is (said before
    anything is embedded or built)."""


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def check_memory(kind: str, n: int, dim: int, *, limit: int | None = None,
                 hnsw_m: int = 32) -> None:
    """Refuse an index that cannot be built in `limit` bytes (default: the memory available
    now): a build holds the pool's float vectors and the index at once."""
    kind = resolve_index_kind(kind, n)
    limit = available_memory() if limit is None else limit
    if limit is None:
        return
    vectors = n * dim * 4
    need = vectors + index_memory_bytes(kind, n, dim, hnsw_m=hnsw_m)
    if need <= limit:
        return
    ivf_need = vectors + index_memory_bytes("ivf", n, dim)
    hint = (f"; an 'ivf' index (8-bit codes) needs ~{_gib(ivf_need)} to build and "
            f"~{_gib(index_memory_bytes('ivf', n, dim))} to serve"
            if kind != "ivf" and ivf_need <= limit
            else "; use a machine with more memory or a smaller pool")
    raise IndexMemoryError(
        f"a {kind} index over {n:,} examples x {dim} dimensions needs ~{_gib(need)} to build "
        f"({_gib(vectors)} of vectors + {_gib(need - vectors)} of index), but only "
        f"{_gib(limit)} of memory is available{hint}")


__all__ = [
    "AUTO_FLAT_MAX", "INDEX_KINDS", "IVF_SCAN", "IndexKind", "IndexMemoryError",
    "available_memory", "check_memory", "index_memory_bytes", "ivf_nlist", "ivf_nprobe",
    "new_index", "resolve_index_kind", "search_params",
]
