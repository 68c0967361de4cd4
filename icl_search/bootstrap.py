"""On-policy bootstrapping: the base model, prompted with a bundle's context, answers new queries;
the judge keeps the answers scoring at least a threshold, and they join the pool as examples.

Order of work (cheapest first): queries that duplicate the pool, the evaluation set or an
earlier new query are dropped before anything is generated (the leakage guard's rule: the same
text after normalisation, or cosine >= `dup_threshold` with the pool's embedder); the rest are
generated with the bundle's prompt and decoding; answers caught by a rule check (leaked
template markers, repetition loops, wrong language, length, over-refusal) are dropped; the
judge scores the survivors and those with `overall >= threshold` become examples with
`source = "bootstrap"`, tags `on-policy` and `bootstrap`, and `meta` recording the score, the
aspects, the judge, the model, the bundle and the query they came from. Examples already in the
pool keep their own `source` (off-policy: written by people or a stronger model), so a study
can restrict or mix them with `pool.sources`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icl_search.pool import Example, Pool

SOURCE = "bootstrap"
TAGS = ("on-policy", "bootstrap")
REASONS = ("duplicate-pool", "duplicate-eval", "duplicate-batch", "too-long", "failed",
           "rules", "unjudged", "below-threshold")


@dataclass
class Candidate:
    id: str
    query: str
    category: str
    answer: str | None = None
    score: float | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    dropped: str | None = None  # one of REASONS
    detail: str = ""


@dataclass
class BootstrapResult:
    candidates: list[Candidate]
    examples: list[Example]

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(x.dropped or "kept" for x in self.candidates)
        return {"kept": c.get("kept", 0), **{r: c.get(r, 0) for r in REASONS}}


def _normal(text: str) -> str:
    from icl_search.selection import normalize_text

    return normalize_text(text)


def _example_id(query_id: str, taken: set[str]) -> str:
    base = f"bootstrap-{query_id}"
    i, eid = 1, base
    while eid in taken:
        i += 1
        eid = f"{base}-{i}"
    return eid


def bootstrap(
    bundle: Any,
    queries: Sequence[Any],
    pool: Pool,
    *,
    engine: Any,
    judge: Any,
    threshold: float = 3.5,
    eval_queries: Sequence[Any] = (),
    embedder: Any = None,
    dup_threshold: float = 0.95,
    rules: Any = "default",
    bundle_ref: str | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> BootstrapResult:
    """New on-policy examples for `pool` (which is not changed); see the module docstring.

    `queries` / `eval_queries`: `Query`-like objects (`id`, `query`, `category`, `meta`).
    `rules`: a `RuleChecker`, None for no rule checks, or "default" for all rules.
    `progress(stage, n)`: told how many candidates each stage handled.
    """
    from icl_search.bundle import BundleError
    from icl_search.generation import Job, generate_fitted
    from icl_search.index import Embedder
    from icl_search.judge import JudgeItem

    tell = progress or (lambda stage, n: None)
    cands = [Candidate(q.id, q.query, q.category) for q in queries]

    # 1. duplicates (no generation for them)
    pool_norm = {_normal(e.query) for e in pool}
    eval_norm = {_normal(q.query) for q in eval_queries}
    emb = embedder or Embedder()
    cand_vecs = emb.encode([c.query for c in cands]) if cands else np.zeros((0, 1), np.float32)
    pool_vecs = emb.encode([e.query for e in pool]) if len(pool) else None
    eval_vecs = emb.encode([q.query for q in eval_queries]) if eval_queries else None
    seen_norm: set[str] = set()
    kept_vecs: list[np.ndarray] = []
    for c, v in zip(cands, cand_vecs):
        n = _normal(c.query)
        for reason, norms, vecs in (("duplicate-pool", pool_norm, pool_vecs),
                                    ("duplicate-eval", eval_norm, eval_vecs)):
            if n in norms:
                c.dropped, c.detail = reason, "same text"
            elif vecs is not None and len(vecs):
                sim = float(np.max(vecs @ v))
                if sim >= dup_threshold:
                    c.dropped, c.detail = reason, f"cosine {sim:.3f} >= {dup_threshold}"
            if c.dropped:
                break
        if not c.dropped:
            if n in seen_norm or (kept_vecs and float(np.max(np.stack(kept_vecs) @ v))
                                  >= dup_threshold):
                c.dropped, c.detail = "duplicate-batch", "near-duplicate of an earlier query"
            else:
                seen_norm.add(n)
                kept_vecs.append(v)
    tell("deduplicated", len(cands))

    # 2. generation with the bundle's context
    live = [c for c in cands if not c.dropped]
    jobs, todo = [], []
    system = bundle.system_text()
    for c in live:
        try:
            jobs.append(Job(system, bundle.select(c.query), c.query))
            todo.append(c)
        except BundleError as exc:  # the selector refused this query
            c.dropped, c.detail = "failed", str(exc)
    generated = generate_fitted(engine, jobs, bundle.sampling, bundle.template)
    for c, g in zip(todo, generated, strict=True):
        o = g.completion
        if o is None:  # the prompt does not fit the context window, even with no example
            c.dropped, c.detail = "too-long", g.fit.error or "prompt does not fit"
        elif o.error or o.finish_reason == "error":
            c.dropped, c.detail = "failed", o.error or "engine error"
        else:
            c.answer = g.answer
            if not c.answer:
                c.dropped, c.detail = "failed", "empty answer"
    tell("generated", sum(g.completion is not None for g in generated))

    # 3. rule checks
    if rules == "default":
        from icl_search.feedback import RuleChecker

        rules = RuleChecker(template=bundle.template)
    live = [c for c in cands if not c.dropped]
    if rules is not None and live:
        from icl_search.feedback import RuleItem

        meta = {q.id: getattr(q, "meta", {}) or {} for q in queries}
        res = rules.check([RuleItem(c.id, c.query, c.answer, c.category,
                                    meta.get(c.id, {}).get("expect")) for c in live])
        for c, hits in zip(live, res.hits, strict=True):
            if hits:
                c.dropped = "rules"
                c.detail = "; ".join(f"{h.rule}: {h.detail}" for h in hits)

    # 4. the judge and the threshold
    live = [c for c in cands if not c.dropped]
    if live:
        result = judge.score([JudgeItem(c.id, c.query, c.answer, c.category) for c in live])
        for c, j in zip(live, result.items, strict=True):
            c.scores = dict(j.scores)
            c.score = j.overall
            if c.score is None:
                c.dropped, c.detail = "unjudged", "; ".join(j.missing.values())[:200]
            elif c.score < threshold:
                c.dropped, c.detail = "below-threshold", f"{c.score:.2f} < {threshold}"
    tell("judged", len(live))

    taken = set(pool.ids)
    examples = []
    for c in cands:
        if c.dropped:
            continue
        eid = _example_id(c.id, taken)
        taken.add(eid)
        examples.append(Example(
            id=eid, query=c.query, answer=c.answer or "", category=c.category, tags=TAGS,
            source=SOURCE,
            meta={"score": round(c.score or 0.0, 4),
                  "scores": {a: (round(v, 4) if v is not None else None)
                             for a, v in c.scores.items()},
                  "origin": {"query_id": c.id, "model": getattr(engine, "id", None),
                             "bundle": bundle_ref, "bundle_sha": _bundle_sha(bundle)},
                  "judge": getattr(judge, "id", None), "threshold": threshold}))
    return BootstrapResult(cands, examples)


def _bundle_sha(bundle: Any) -> str:
    import json

    return hashlib.sha256(json.dumps(bundle.to_dict(), sort_keys=True, default=str)
                          .encode()).hexdigest()[:16]


def grow_pool(pool: Pool, result: BootstrapResult, out: str | Path) -> Pool:
    """The pool plus the bootstrapped examples, written atomically to `out`."""
    grown = Pool(list(pool.examples) + list(result.examples), Path(out), pool.system)
    grown.save(out)
    if pool.system:
        from icl_search.pool import write_system

        write_system(out, pool.system)
    return grown
