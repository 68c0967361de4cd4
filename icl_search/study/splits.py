"""The search and confirm splits of a study's queries.

The search split is what the sampler, the pruner and the search-score ranking see; the confirm
split is only evaluated by the confirmation stage (`icl_search.study.confirm`). A confirm set is
either its own file (`eval.confirm`) or a fraction of the eval file (`eval.confirm_fraction`),
chosen by a hash of each query id: the same id always lands in the same split, whatever the
file's order or length, so adding queries to the file never moves old ones across.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from icl_search.errors import IclSearchError
from icl_search.evalset import Query, load_queries
from icl_search.study.config import StudyConfig

MIN_CONFIRM = 10  # below this, a 95% interval on a mean difference says little


class SplitError(IclSearchError, ValueError):
    """The confirm set overlaps the search set (the message names both ids)."""


class SmallConfirmSetWarning(UserWarning):
    """The confirm set has fewer than MIN_CONFIRM queries: its interval is mostly width."""


@dataclass(frozen=True)
class Splits:
    search: list[Query]
    confirm: list[Query]  # empty when the config names no confirm set

    @property
    def fingerprint(self) -> str:
        """Identifies the confirm set (ids and texts): stored confirm results keyed by it go
        stale when the set changes."""
        h = hashlib.sha256()
        for q in self.confirm:
            h.update(f"{q.id}\0{q.query}\0".encode())
        return h.hexdigest()[:16]


def in_confirm(query_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether a query id falls in the confirm split: sha256(seed:id) read as a number in
    [0, 1), below `fraction`."""
    digest = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_by_id(queries: Sequence[Query], fraction: float, seed: int = 0
                ) -> tuple[list[Query], list[Query]]:
    """(search, confirm), each in file order."""
    search, confirm = [], []
    for q in queries:
        (confirm if in_confirm(q.id, fraction, seed) else search).append(q)
    return search, confirm


def normalise(text: str) -> str:
    """Case, punctuation and spacing removed: two queries that read the same compare equal."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def check_overlap(search: Sequence[Query], confirm: Sequence[Query], *, source: str,
                  embed=None, threshold: float = 0.95) -> None:
    """Refuse a confirm query that is a search query again: the same normalised text, or
    (with `embed`, texts -> L2-normalised vectors) a cosine similarity >= `threshold`."""
    seen = {normalise(q.query): q for q in search}
    for q in confirm:
        other = seen.get(normalise(q.query))
        if other is not None:
            raise SplitError(f"{source}: confirm query {q.id!r} is search query {other.id!r} "
                             "again (same normalised text); a confirm set must be new queries")
    if embed is None or not search or not confirm:
        return
    a = np.asarray(embed([q.query for q in search]), dtype=np.float32)
    b = np.asarray(embed([q.query for q in confirm]), dtype=np.float32)
    sims = b @ a.T
    j, i = np.unravel_index(int(np.argmax(sims)), sims.shape)
    if sims[j, i] >= threshold:
        raise SplitError(f"{source}: confirm query {confirm[j].id!r} is a near-duplicate of "
                         f"search query {search[i].id!r} (cosine {sims[j, i]:.3f} >= "
                         f"{threshold}); drop one of them")


def load_splits(cfg: StudyConfig, *, embed=None, check: bool = True) -> Splits:
    """The config's search and confirm queries.

    `embed` (texts -> normalised vectors) adds the near-duplicate check; without it only the
    same normalised text is refused. A confirm set under MIN_CONFIRM queries warns.
    """
    e = cfg.eval
    queries = load_queries(cfg.path(e.path))
    if e.confirm:
        search, confirm = queries, load_queries(cfg.path(e.confirm))
        source = f"{cfg.source}: field 'eval.confirm' ({cfg.path(e.confirm)})"
        ids = {q.id for q in search}
        clash = next((q.id for q in confirm if q.id in ids), None)
        if clash is not None:
            raise SplitError(f"{source}: confirm query id {clash!r} is also a search query id "
                             f"in {cfg.path(e.path)}")
    elif e.confirm_fraction:
        search, confirm = split_by_id(queries, e.confirm_fraction, cfg.seed)
        source = f"{cfg.source}: field 'eval.confirm_fraction'"
        if not search:
            raise SplitError(f"{source}: {e.confirm_fraction} of {len(queries)} queries left "
                             "no search query; lower the fraction")
    else:
        search, confirm, source = queries, [], ""
    if e.limit:
        search = search[: e.limit]
    if e.confirm_limit:
        confirm = confirm[: e.confirm_limit]
    if confirm and check:
        check_overlap(search, confirm, source=source, embed=embed,
                      threshold=e.overlap_cosine)
        if len(confirm) < MIN_CONFIRM:
            warnings.warn(f"{source}: the confirm set has only {len(confirm)} queries (< "
                          f"{MIN_CONFIRM}); its 95% interval will be too wide to tell a gain "
                          "from luck", SmallConfirmSetWarning, stacklevel=2)
    return Splits(search, confirm)


def embedder_for(cfg: StudyConfig):
    """The pool's embedder as a texts -> vectors function (the near-duplicate check)."""
    from icl_search.index import Embedder

    emb = Embedder(None if cfg.pool.embedder == "default" else cfg.pool.embedder)
    return emb.encode
