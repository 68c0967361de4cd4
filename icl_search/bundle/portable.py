"""A retrieval bundle's own files: checked before any model loads (`check_pool`), and copied
beside the bundle so its folder can be moved anywhere (`copy_beside`, which `icl-search export
--copy-pool` runs).

A retrieval bundle names its pool, index folder and (for a local embedder) the embedder's
folder by paths relative to the bundle file. `copy_beside` puts the pool and, when they exist,
the index and the embedder folder in the bundle's own folder and points the bundle at them, so
`cp -r FOLDER elsewhere` keeps a working bundle. An index is only a cache of the pool's
embeddings: when it is missing, or built by another embedder, the bundle rebuilds it from the
pool it has just verified.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from icl_search.bundle.parts import BundleError
from icl_search.io import atomic_folder, atomic_write

if TYPE_CHECKING:
    from icl_search.bundle.bundle import Bundle
    from icl_search.pool import Pool


def check_pool(bundle: Bundle) -> Pool | None:
    """A retrieval bundle's pool, read and checked against the fingerprint recorded at export,
    and its local embedder folder present; None for a fixed bundle. Loads no model: `generate`,
    `select` and `serve` call it first, so a bundle copied without its pool fails at once with
    one message naming the bundle, the field and the file."""
    from icl_search.pool import Pool, PoolError

    r = bundle.retrieval
    if r is None:
        return None
    where = str(bundle.path) if bundle.path is not None else "bundle"
    pool_path = bundle.pool_path
    assert pool_path is not None
    if not pool_path.is_file():
        raise BundleError(f"{where}: retrieval.pool: {pool_path} does not exist (the pool must "
                          "stay where it was, relative to the bundle; `icl-search export "
                          "--copy-pool` writes a bundle folder that can be moved whole)")
    try:
        pool = Pool.load(pool_path)
    except PoolError as exc:
        raise BundleError(f"{where}: retrieval.pool: {exc}") from None
    if pool.fingerprint != r.pool_fingerprint:
        raise BundleError(
            f"{pool_path}: the pool changed since {where} was exported "
            f"(bundle fingerprint {r.pool_fingerprint}, pool now {pool.fingerprint}); "
            "re-export the bundle from its study, or restore the pool it was made with")
    if r.embedder_path is not None:
        folder = bundle._resolve(r.embedder_path)
        if not folder.is_dir():
            raise BundleError(f"{where}: retrieval.embedder_path: {folder} does not exist (the "
                              "local embedder folder the bundle was made with)")
    return pool


def copy_beside(bundle: Bundle, out: str | os.PathLike) -> Bundle:
    """Save `bundle` as `out` with its pool (and its index folder and local embedder folder,
    when it has them) copied into `out`'s folder, and return the saved bundle. The pool is
    checked first: a pool that changed since export is never copied. A fixed bundle carries its
    examples inline and is simply saved. Every file and folder is written to a temporary
    sibling and renamed into place, so an interrupted copy leaves no half-written file."""
    out = Path(out)
    r = bundle.retrieval
    if r is None:
        bundle.save(out)
        return bundle
    check_pool(bundle)
    folder = out.resolve().parent
    pool_src = bundle.pool_path
    assert pool_src is not None and bundle.index_dir is not None
    pool_dst = folder / pool_src.name
    index_dst = folder / f"{pool_dst.name}.index"
    if pool_dst.is_file() and not filecmp.cmp(pool_src, pool_dst, shallow=False):
        raise BundleError(f"{pool_dst} exists and holds another pool: a bundle folder holds "
                          "one pool; export this bundle into a folder of its own")
    _copy_file(pool_src, pool_dst)
    if bundle.index_dir.is_dir():
        _copy_folder(bundle.index_dir, index_dst)
    moved = {"pool": pool_dst.name, "index": index_dst.name}
    if r.embedder_path is not None:
        emb_src = bundle._resolve(r.embedder_path)
        emb_dst = folder / "embedder" / emb_src.name
        _copy_folder(emb_src, emb_dst)
        moved["embedder_path"] = emb_dst.relative_to(folder).as_posix()
    portable = bundle.model_copy(update={"retrieval": r.model_copy(update=moved)})
    portable._base = folder  # the new paths are relative to `out`'s folder already
    portable._selector = None
    portable.save(out)
    return portable


def _copy_file(src: Path, dst: Path) -> None:
    if dst.exists() and os.path.samefile(src, dst):
        return
    with atomic_write(dst, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out)


def _copy_folder(src: Path, dst: Path) -> None:
    if dst.exists() and os.path.samefile(src, dst):
        return
    with atomic_folder(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
