"""Which pool examples go into a prompt for a given query, and in what order.

Strategies (`SelectionConfig.strategy`):

- ``fixed``: the examples named in `fixed_ids`, the same for every query.
- ``knn``: the `k` examples whose queries are most similar to the query.
- ``mmr``: maximal marginal relevance over the nearest candidates: each pick maximises
  ``lambda * cos(query, x) - (1 - lambda) * max cos(x, already chosen)``; lambda 1 is kNN,
  lower values trade relevance for variety.
- ``hybrid``: the `fixed_ids` as anchors, filled up to `k` with retrieved examples
  (kNN, or MMR that also keeps away from the anchors when `fill="mmr"`).
- ``balanced``: category-balanced: categories are visited in order of their best match
  and each round takes the next most similar example of every category, until `k`.

Ordering (`order`): ``similar-last`` puts the most similar example last, right before the
user's query, where a base model attends most and where `prompt.Budget.fit` (which drops
examples from the front) keeps it longest; ``similar-first`` reverses that; ``given`` keeps
the fixed ids in their given order followed by retrieved examples in pick order. The
default is ``given`` for ``fixed`` (a fixed set is a fixed prefix, which also keeps vLLM's
prefix cache warm) and ``similar-last`` for every other strategy.

Leakage guard: a query never receives an example whose query is the same text (after
Unicode/case/whitespace normalisation) or a near-duplicate (cosine >= `dup_threshold`),
nor any id in `exclude_ids`. Evaluating on queries that are in the pool therefore never
lets the answer leak into the prompt.

Variants: in a pool that mixes originals with their restyled versions (`meta.original_id`,
icl_search.propose), a retrieved set never holds an example and a variant of it for one query
(they share the query text, so they rank side by side): the better-ranked of the two is kept.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from icl_search.errors import IclSearchError
from icl_search.pool import Example

if TYPE_CHECKING:
    from icl_search.index import PoolIndex

Strategy = Literal["fixed", "knn", "mmr", "hybrid", "balanced"]
Order = Literal["similar-last", "similar-first", "given"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
ORDERS: tuple[str, ...] = get_args(Order)
# The defaults of `SelectionConfig`, also the CLI's and a study's when a trial leaves them open.
DEFAULT_K = 3
DEFAULT_MMR_LAMBDA = 0.5


class SelectionError(IclSearchError, ValueError):
    """A selection config does not fit the pool (e.g. a fixed id the pool lacks)."""


class SelectionConfig(BaseModel):
    """How examples are chosen; plain JSON so a study trial or a bundle can store it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = "knn"
    k: int = Field(DEFAULT_K, ge=0, description="examples per prompt (fixed: ignored, all fixed_ids)")
    mmr_lambda: float = Field(DEFAULT_MMR_LAMBDA, ge=0.0, le=1.0, description="mmr: 1 = pure relevance")
    fixed_ids: list[str] = Field(default_factory=list, description="fixed / hybrid anchors")
    fill: Literal["knn", "mmr"] = Field("knn", description="hybrid: how the rest is retrieved")
    dup_threshold: float = Field(0.95, gt=0.0, le=1.0, description="near-duplicate cosine")
    order: Order | None = Field(None, description="None: given for fixed, else similar-last")
    candidates: int | None = Field(
        None, ge=1, description="mmr/hybrid: nearest neighbours considered (default max(4k, 20))"
    )

    @model_validator(mode="after")
    def _check(self) -> SelectionConfig:
        if self.strategy == "fixed" and not self.fixed_ids:
            raise ValueError("fixed_ids: the 'fixed' strategy needs at least one id")
        if self.strategy == "hybrid" and len(self.fixed_ids) > self.k:
            raise ValueError(
                f"k: hybrid needs k >= the number of fixed_ids ({len(self.fixed_ids)}), got {self.k}"
            )
        if len(set(self.fixed_ids)) != len(self.fixed_ids):
            raise ValueError("fixed_ids: an id is listed twice")
        return self

    @property
    def effective_order(self) -> str:
        if self.order is not None:
            return self.order
        return "given" if self.strategy == "fixed" else "similar-last"

    @property
    def n_candidates(self) -> int:
        return self.candidates or max(4 * self.k, 20)


@dataclass(frozen=True)
class Selected:
    """One chosen example with its cosine similarity to the query.

    Has `query` and `answer`, so a list of these renders directly with `Template.render`.
    `anchor` marks a fixed id (fixed / hybrid strategies).
    """

    example: Example
    score: float
    anchor: bool = False

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def query(self) -> str:
        return self.example.query

    @property
    def answer(self) -> str:
        return self.example.answer

    @property
    def category(self) -> str:
        return self.example.category


_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The form two queries are compared in by the leakage guard."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class Selector:
    """Applies a `SelectionConfig` to queries against a `PoolIndex`.

    >>> sel = Selector(index, SelectionConfig(strategy="mmr", k=3, mmr_lambda=0.5))
    >>> shots = sel.select("How do I reverse a list in Python?")
    >>> prompt = Template().render(system, shots, query)
    """

    def __init__(self, index: PoolIndex, config: SelectionConfig | None = None, **overrides: Any):
        if config is None:
            config = SelectionConfig(**overrides)
        elif overrides:
            config = config.model_copy(update=overrides)
            config = SelectionConfig.model_validate(config.model_dump())
        self.index = index
        self.config = config
        self._examples = index.pool.examples
        missing = [i for i in config.fixed_ids if i not in index]
        if missing and config.strategy in ("fixed", "hybrid"):
            where = f" {index.pool.path}" if getattr(index.pool, "path", None) else ""
            raise SelectionError(f"fixed_ids: not in the pool{where}: {missing}")
        self._anchor_pos = (
            np.array([index.position(i) for i in config.fixed_ids], dtype=np.int64)
            if config.strategy in ("fixed", "hybrid") else np.zeros(0, dtype=np.int64)
        )
        self._anchor_vecs = index.vectors(self._anchor_pos)
        self._by_text: dict[str, list[int]] = {}
        for i, e in enumerate(self._examples):
            self._by_text.setdefault(normalize_text(e.query), []).append(i)
        # row -> its original's id (a restyled variant) or its own id; rows of one family
        self._family = [str((e.meta or {}).get("original_id") or e.id) for e in self._examples]
        self._members: dict[str, list[int]] = {}
        for i, f in enumerate(self._family):
            self._members.setdefault(f, []).append(i)
        self._variants = len(self._members) < len(self._examples)
        self._categories: dict[str, np.ndarray] = {}
        if config.strategy == "balanced":
            cats: dict[str, list[int]] = {}
            for i, e in enumerate(self._examples):
                cats.setdefault(e.category, []).append(i)
            self._categories = {c: np.array(p, dtype=np.int64) for c, p in cats.items()}

    # -- public ------------------------------------------------------------------------------
    def select(
        self, query: str, *, exclude_ids: Iterable[str] = (), vector: np.ndarray | None = None
    ) -> list[Selected]:
        """The examples for one query, ordered per `config.order`."""
        vecs = None if vector is None else np.atleast_2d(vector)
        return self.select_many([query], exclude_ids=exclude_ids, vectors=vecs)[0]

    def select_many(
        self,
        queries: Sequence[str],
        *,
        exclude_ids: Iterable[str] = (),
        exclude_per_query: Sequence[Iterable[str]] | None = None,
        vectors: np.ndarray | None = None,
    ) -> list[list[Selected]]:
        """Examples for each query; all queries are embedded in one call, searched in one batch.

        `exclude_ids` applies to every query, `exclude_per_query[i]` to query `i` only (e.g.
        each query's own pool id in a leave-one-out evaluation).
        """
        queries = list(queries)
        if exclude_per_query is not None and len(exclude_per_query) != len(queries):
            raise ValueError(
                f"exclude_per_query: {len(exclude_per_query)} entries for {len(queries)} queries"
            )
        if not queries:
            return []
        if vectors is None:
            vectors = self.index.embed(queries)
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        idx = self.index
        common = {idx.position(i) for i in exclude_ids if i in idx}
        banned: list[set[int]] = []
        for qi, q in enumerate(queries):
            b = set(common) | set(self._by_text.get(normalize_text(q), ()))
            if exclude_per_query is not None:
                b |= {idx.position(i) for i in exclude_per_query[qi] if i in idx}
            banned.append(b)

        c = self.config
        if c.strategy == "fixed":
            picked = [self._anchors(v, b) for v, b in zip(vectors, banned)]
        elif c.strategy == "balanced":
            picked = self._balanced(vectors, banned)
        else:
            picked = self._retrieve(vectors, banned)
        return [self._order(p) for p in picked]

    # -- strategies --------------------------------------------------------------------------
    def _leaks(self, score: float) -> bool:
        return score >= self.config.dup_threshold

    def _distinct(self, ranked: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """`ranked` (best first) with every later member of a family already seen dropped."""
        if not self._variants:
            return ranked
        seen: set[str] = set()
        out = []
        for r, s in ranked:
            if self._family[r] not in seen:
                seen.add(self._family[r])
                out.append((r, s))
        return out

    def _family_rows(self, rows: Iterable[int]) -> set[int]:
        """Every row of the families of `rows` (an anchor bans its variants from the fill)."""
        return {m for r in rows for m in self._members[self._family[int(r)]]}

    def _anchors(self, qvec: np.ndarray, banned: set[int]) -> list[Selected]:
        scores = self._anchor_vecs @ qvec if len(self._anchor_pos) else np.zeros(0)
        return [
            Selected(self._examples[int(p)], float(s), anchor=True)
            for p, s in zip(self._anchor_pos, scores)
            if int(p) not in banned and not self._leaks(float(s))
        ]

    def _candidates(
        self, vectors: np.ndarray, banned: list[set[int]], need: list[int], fetch: int
    ) -> list[list[tuple[int, float]]]:
        """Per query, up to `fetch` nearest rows (best first) that pass the guard.

        Searches once for the whole batch; a query that lost too many hits to the guard is
        searched again, deeper, on its own.
        """
        n = len(self.index)
        margin = max((len(b) for b in banned), default=0) + 4
        depth = min(n, fetch + margin)
        scores, rows = self.index.search_vectors(vectors, depth)
        out: list[list[tuple[int, float]]] = []
        for qi in range(len(vectors)):
            srow, rrow = scores[qi], rows[qi]
            d = depth
            while True:
                ok = self._distinct([(int(r), float(s)) for s, r in zip(srow, rrow)
                                     if r >= 0 and int(r) not in banned[qi]
                                     and not self._leaks(float(s))])
                if len(ok) >= max(need[qi], min(fetch, len(self._members))) or d >= n:
                    break
                d = min(n, d * 2)
                srow, rrow = (a[0] for a in self.index.search_vectors(vectors[qi:qi + 1], d))
            out.append(ok[:fetch])
        return out

    def _retrieve(self, vectors: np.ndarray, banned: list[set[int]]) -> list[list[Selected]]:
        c = self.config
        hybrid = c.strategy == "hybrid"
        use_mmr = c.strategy == "mmr" or (hybrid and c.fill == "mmr")
        anchors = [self._anchors(v, b) if hybrid else [] for v, b in zip(vectors, banned)]
        anchor_rows = self._family_rows(self._anchor_pos)
        need = [c.k - len(a) for a in anchors]
        # Anchors are excluded from the fill so an anchor is never picked twice.
        fill_banned = [b | anchor_rows for b in banned] if hybrid else banned
        fetch = c.n_candidates if use_mmr else c.k
        cands = self._candidates(vectors, fill_banned, need, max(fetch, max(need, default=0)))
        results = []
        for qi, qvec in enumerate(vectors):
            m = max(need[qi], 0)
            cand = cands[qi]
            if use_mmr:
                seed = self.index.vectors([self.index.position(a.id) for a in anchors[qi]])
                chosen = self._mmr(cand, m, c.mmr_lambda, seed)
            else:
                chosen = cand[:m]
            results.append(anchors[qi] + [Selected(self._examples[r], s) for r, s in chosen])
        return results

    def _mmr(
        self, cand: list[tuple[int, float]], m: int, lam: float, seed: np.ndarray | None
    ) -> list[tuple[int, float]]:
        if m <= 0 or not cand:
            return []
        rows = np.array([r for r, _ in cand], dtype=np.int64)
        rel = np.array([s for _, s in cand], dtype=np.float64)
        vecs = self.index.vectors(rows).astype(np.float64)
        if seed is not None and len(seed):
            redundancy = (vecs @ seed.T.astype(np.float64)).max(axis=1)
        else:
            redundancy = None  # nothing chosen yet: the first pick is the most relevant
        chosen: list[int] = []
        free = np.ones(len(rows), dtype=bool)
        for _ in range(min(m, len(rows))):
            if redundancy is None:
                mmr = rel.copy()
            else:
                mmr = lam * rel - (1.0 - lam) * redundancy
            mmr[~free] = -np.inf
            best = int(np.argmax(mmr))
            chosen.append(best)
            free[best] = False
            sim = vecs @ vecs[best]
            redundancy = sim if redundancy is None else np.maximum(redundancy, sim)
        return [cand[i] for i in chosen]

    def _balanced(self, vectors: np.ndarray, banned: list[set[int]]) -> list[list[Selected]]:
        k = self.config.k
        per_cat: dict[str, list[list[tuple[int, float]]]] = {}
        for cat, rows in self._categories.items():
            margin = max((len(b) for b in banned), default=0) + 4
            depth = min(len(rows), k + margin)
            scores, found = self.index.search_vectors(vectors, depth, positions=rows)
            per_cat[cat] = [
                [(int(r), float(s)) for s, r in zip(scores[qi], found[qi])
                 if r >= 0 and int(r) not in banned[qi] and not self._leaks(float(s))]
                for qi in range(len(vectors))
            ]
        results = []
        for qi in range(len(vectors)):
            lists = [per_cat[c][qi] for c in per_cat if per_cat[c][qi]]
            lists.sort(key=lambda lst: -lst[0][1])  # the best-matching category goes first
            chosen: list[tuple[int, float]] = []
            depth = 0
            taken: set[str] = set()
            while len(chosen) < k and any(depth < len(lst) for lst in lists):
                for lst in lists:
                    if depth < len(lst) and len(chosen) < k and \
                            self._family[lst[depth][0]] not in taken:
                        taken.add(self._family[lst[depth][0]])
                        chosen.append(lst[depth])
                depth += 1
            results.append([Selected(self._examples[r], s) for r, s in chosen])
        return results

    # -- ordering ----------------------------------------------------------------------------
    def _order(self, items: list[Selected]) -> list[Selected]:
        order = self.config.effective_order
        if order == "given":
            return items
        # Stable sort: ties keep pick order.
        return sorted(items, key=lambda s: s.score, reverse=(order == "similar-first"))


def select(
    query: str,
    index: PoolIndex,
    config: SelectionConfig | None = None,
    *,
    exclude_ids: Iterable[str] = (),
    **overrides: Any,
) -> list[Selected]:
    """One-shot form of `Selector(index, config, **overrides).select(query)`."""
    return Selector(index, config, **overrides).select(query, exclude_ids=exclude_ids)


def select_many(
    queries: Sequence[str],
    index: PoolIndex,
    config: SelectionConfig | None = None,
    *,
    exclude_ids: Iterable[str] = (),
    **overrides: Any,
) -> list[list[Selected]]:
    """One-shot form of `Selector(index, config, **overrides).select_many(queries)`."""
    return Selector(index, config, **overrides).select_many(queries, exclude_ids=exclude_ids)


__all__ = [
    "ORDERS", "STRATEGIES", "Selected", "SelectionConfig", "SelectionError", "Selector",
    "normalize_text", "select", "select_many",
]
