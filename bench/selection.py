"""Selection benchmark: index build time, memory, search latency and recall per FAISS index
kind at 1k / 10k / 100k / 1M examples, per-query selection latency (embed, search, render) and
`select_many` throughput, side by side with DSPy's kNN demo retrieval (`dspy.KNN`).

Texts and vectors. A base set of real texts is embedded with the default embedder
(all-MiniLM-L6-v2): the just-eval dev instructions (read from `../shared/data/just-eval/` at run
time, when present) minus the held-out ones, plus `--base` synthetic questions from
`bench/index.py`'s generator. That embedding step is timed on its own (items/s). A pool of N
examples takes the base vectors first and, past them, perturbed copies: a base vector plus
Gaussian noise (sigma `--noise` per dimension), renormalised, whose text is the base text with
" (variant i)" appended and whose answer is a generated URIAL-style answer. The vectors enter
the pool through an embedding cache, so `PoolIndex.build` runs unchanged (its build time
includes reading them back). Queries are held-out just-eval instructions plus held-out
synthetic questions, embedded by the real model, never in the pool. The URIAL paper's
retrieval baseline used an 800k-example pool; 1M is that scale.

Per pool size:
- for each index kind of `--kinds` (flat = exact `IndexFlatIP`, hnsw = `IndexHNSWFlat`,
  ivf = `IndexIVFScalarQuantizer` with 8-bit codes; auto = what `PoolIndex` picks for that
  size): build time, the index's size as FAISS stores it, search p50/p99 one query at a time
  (query vectors precomputed, `PoolIndex.search_vectors`), recall@8 against exact search over
  the same vectors, and `Selector.select_many` throughput with the vectors given;
- for the auto pick only: per query, kNN k=8, embedding the query (one uncached embedder,
  `--threads` torch threads), `Selector.select` with that vector (FAISS search + leakage guard)
  and `Template.render`, p50/p99 of each and of the sum; and `select_many` end to end
  (embedding included, then rendered);
- `dspy.KNN` built over the same vectors (its vectorizer is a `dspy.Embedder` whose callable
  looks up our precomputed vector for each text KNN embeds, "query: <text>"). DSPy searches by
  numpy brute force: `np.dot` of all trainset vectors with the query, then a full `argsort`.
  Its search step is timed as exactly those two lines of `KNN.__call__`; the whole
  `knn(query=...)` call (vector lookup, Example list) is timed too. numpy runs on its BLAS
  threads as configured; our lone-query search is single-threaded (`PoolIndex.search_vectors`).

HNSW recall@k on real embeddings alone (pool = the embedded base set, no perturbed copies) is
measured separately. Prints two tables and writes `bench/results/selection.json`. Memory: at
1M the vectors alone are 1.5 GB, held several times over (the pool's, exact search's, DSPy's):
plan ~10 GB.

    .venv/bin/python bench/selection.py --threads 1
    .venv/bin/python bench/selection.py --sizes 1000,10000 --base 1000   # quicker
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss

from icl_search.index import Embedder, EmbeddingCache, PoolIndex, resolve_index_kind
from icl_search.io import write_json
from icl_search.pool import Example, Pool
from icl_search.prompt import DEFAULT_TEMPLATE
from icl_search.selection import SelectionConfig, Selector, normalize_text


def _load_index_bench():
    # bench/ is not a package: load bench/index.py under its own name to reuse its helpers.
    spec = importlib.util.spec_from_file_location("bench_index", Path(__file__).with_name("index.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ib = _load_index_bench()
synthetic_texts, percentiles, real_queries, recall = (
    _ib.synthetic_texts, _ib.percentiles, _ib.real_queries, _ib.recall)

RESULTS = Path(__file__).resolve().parent / "results" / "selection.json"
SYSTEM_FILE = ROOT / "pools" / "system_prompts" / "urial_style.txt"

_SUMMARIES = ["start small and check each step", "the cheapest fix is usually the right first one",
              "safety first, then speed", "write down what worked so you can repeat it"]
_STEPS = ["Check what you already have and what is missing.",
          "Pick the simplest option that meets your needs.",
          "Try it once on a small scale before committing.",
          "Keep notes on what changes and why.",
          "Ask someone experienced if a step feels risky.",
          "Review the result after a week and adjust."]


def answer_for(query: str, rng: random.Random) -> str:
    """A URIAL-style answer of a few hundred characters: thanks, numbered steps, summary."""
    steps = rng.sample(_STEPS, rng.randint(3, 5))
    body = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
    return (f"Thanks for the question! Here is a practical way to approach it.\n\n{body}\n\n"
            f"In summary: {rng.choice(_SUMMARIES)}. (Question: {query})")


def build_pool(n: int, base_texts: list[str], base_vecs: np.ndarray, noise: float, seed: int
               ) -> tuple[Pool, np.ndarray]:
    """`n` examples: the base vectors first, then perturbed copies of randomly chosen ones."""
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    m = min(n, len(base_texts))
    texts = list(base_texts[:m])
    vecs = [base_vecs[:m]]
    extra = n - m
    if extra > 0:
        origin = rng.integers(0, len(base_texts), size=extra)
        v = base_vecs[origin] + rng.normal(0.0, noise, size=(extra, base_vecs.shape[1]))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        vecs.append(v.astype(np.float32))
        texts += [f"{base_texts[o]} (variant {m + i})" for i, o in enumerate(origin)]
    examples = [Example(id=f"p{i}", query=t, answer=answer_for(t, pyrng), category="synthetic",
                        source="bench") for i, t in enumerate(texts)]
    return Pool(examples), np.ascontiguousarray(np.concatenate(vecs), dtype=np.float32)


def cached_embedder(pool: Pool, vecs: np.ndarray, embedder_id: str, tmp: Path) -> Embedder:
    """An embedder whose cache already holds the pool's vectors: `PoolIndex.build` runs
    unchanged and encodes nothing (its build time includes reading them back)."""
    cache = EmbeddingCache(tmp / f"emb-{len(pool)}.sqlite3")
    cache.set_dim(embedder_id, vecs.shape[1])
    cache.put_many((EmbeddingCache.key(embedder_id, e.query), v)
                   for e, v in zip(pool.examples, vecs))
    return Embedder(cache=cache)


def timed(fn, items) -> tuple[list[float], list]:
    times, out = [], []
    for x in items:
        t = time.perf_counter()
        out.append(fn(x))
        times.append(time.perf_counter() - t)
    return times, out


def stats(seconds: list[float]) -> dict[str, float]:
    p50, p99 = percentiles(seconds)
    return {"p50_ms": p50, "p99_ms": p99, "mean_ms": float(np.mean(seconds) * 1e3)}


def dspy_knn(pool: Pool, vecs: np.ndarray, queries: list[str], qv: np.ndarray, k: int):
    """A `dspy.KNN` over the pool whose vectorizer returns our precomputed vectors."""
    import dspy

    lookup = {f"query: {e.query}": v for e, v in zip(pool.examples, vecs)}
    lookup.update({f"query: {q}": v for q, v in zip(queries, qv)})
    vectorizer = dspy.Embedder(lambda batch: np.stack([lookup[s] for s in batch]),
                               caching=False, batch_size=len(lookup))
    trainset = [dspy.Example(query=e.query, answer=e.answer).with_inputs("query")
                for e in pool.examples]
    t = time.perf_counter()
    knn = dspy.KNN(k=k, trainset=trainset, vectorizer=vectorizer)
    build_s = time.perf_counter() - t
    assert np.array_equal(knn.trainset_vectors, vecs), "dspy.KNN should hold exactly our vectors"
    return knn, build_s


def dspy_search(knn, qvec: np.ndarray) -> np.ndarray:
    """The search lines of `dspy.KNN.__call__` (dspy 3.4), after the query is embedded."""
    scores = np.dot(knn.trainset_vectors, qvec[None, :].T).squeeze()
    return scores.argsort()[-knn.k:][::-1]


def index_bytes(index) -> int:
    """The index's size as FAISS stores it: vectors or codes, graph or lists, ids."""
    return int(faiss.serialize_index(index).size)


_TORCH: dict[int | None, Embedder] = {}


def torch_reference(embedder: Embedder, threads: int | None) -> Embedder | None:
    """A PyTorch-backend twin of an onnx-backend embedder (None when it is PyTorch already)."""
    if embedder.backend_used != "onnx":
        return None
    if threads not in _TORCH:
        _TORCH[threads] = Embedder(cache=False, threads=threads, backend="torch")
        _TORCH[threads].encode(["warm-up"])
    return _TORCH[threads]


def measure_kind(kind: str, pool: Pool, cached: Embedder, embedder: Embedder, queries, qv,
                 gt: np.ndarray, k: int, auto_pick: bool, args, system) -> dict:
    """Build one index kind from the cached vectors, then time search, batch and recall."""
    t = time.perf_counter()
    built = PoolIndex.build(pool, cached, kind)
    build_s = time.perf_counter() - t
    assert cached.stats["encoded"] == 0, "the pool's vectors should all come from the cache"
    ours = PoolIndex(pool, embedder, built.index, built.kind, built.hnsw)  # uncached query side
    sel = Selector(ours, SelectionConfig(strategy="knn", k=k))
    for q, v in zip(queries[:5], qv[:5]):  # warm-up: first searches touch cold memory
        sel.select(q, vector=v)
    ours_t, rows = timed(lambda v: ours.search_vectors(v, k)[1][0], qv)
    select_only = []
    for _ in range(3):
        t = time.perf_counter()
        sel.select_many(queries, vectors=qv)
        select_only.append(time.perf_counter() - t)
    row = {"kind": built.kind, "auto_pick": auto_pick, "params": dict(built.hnsw),
           "build_s": build_s, "index_mib": index_bytes(built.index) / 2**20,
           "search": stats(ours_t), f"recall_at_{k}": recall(np.array(rows), gt),
           "select_many_given_vectors_qps": len(queries) / float(np.median(select_only))}
    if auto_pick:
        # Per-query selection, one query at a time, as a server sees it; then a whole batch
        # with the embedding. The embedder is uncached: every query is encoded.
        # The same query is also embedded by PyTorch right before (`embed_torch`): the
        # embedder's two backends side by side, on the same machine load.
        lat = {"embed": [], "embed_torch": [], "select": [], "render": [], "total": []}
        reference = torch_reference(embedder, args.threads)
        for q in queries[:args.latency_queries]:
            if reference is not None:
                t0 = time.perf_counter()
                reference.encode(q)
                lat["embed_torch"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            v = embedder.encode(q)
            t1 = time.perf_counter()
            shots = sel.select(q, vector=v)
            t2 = time.perf_counter()
            DEFAULT_TEMPLATE.render(system, shots, q)
            t3 = time.perf_counter()
            for part, s in (("embed", t1 - t0), ("select", t2 - t1), ("render", t3 - t2),
                            ("total", t3 - t0)):
                lat[part].append(s)
        t = time.perf_counter()
        picked = sel.select_many(queries)
        for q, shots in zip(queries, picked):
            DEFAULT_TEMPLATE.render(system, shots, q)
        row["latency"] = {part: stats(s) for part, s in lat.items() if s}
        row["embed_backend"] = embedder.backend_used
        row["latency_queries"] = len(lat["total"])
        row["select_many_end_to_end_qps"] = len(queries) / (time.perf_counter() - t)
    return row


def bench_size(n: int, args, base_texts, base_vecs, queries, qv, embedder, system, tmp) -> dict:
    k = args.k
    pool, vecs = build_pool(n, base_texts, base_vecs, args.noise, args.seed + n)
    cached = cached_embedder(pool, vecs, embedder.id, tmp)

    # Ground truth: exact search over the same vectors (batched), and exact search timed one
    # query at a time through PoolIndex (the "exact flat" column).
    exact = PoolIndex(pool, embedder, faiss.IndexFlatIP(vecs.shape[1]), "flat")
    exact.index.add(vecs)
    gt = exact.search_vectors(qv, k)[1]
    for v in qv[:5]:
        exact.search_vectors(v, k)
    exact_t, _ = timed(lambda v: exact.search_vectors(v, k)[1][0], qv)

    pick = resolve_index_kind("auto", n)
    kinds = list(dict.fromkeys(pick if kd == "auto" else kd for kd in args.kinds.split(",")))
    rows = []
    for kind in kinds:
        limit = {"hnsw": args.hnsw_max, "flat": args.flat_max}.get(kind)
        if limit is not None and n > limit and kind != pick:
            print(f"  {kind}: skipped above --{kind}-max {limit:,}", flush=True)
            continue
        rows.append(measure_kind(kind, pool, cached, embedder, queries, qv, gt, k, kind == pick,
                                 args, system))
        r = rows[-1]
        print(f"  {kind}: build {r['build_s']:.1f} s, {r['index_mib']:.0f} MiB, p50 "
              f"{r['search']['p50_ms']:.3f} ms, recall@{k} {r[f'recall_at_{k}']:.3f}", flush=True)
        gc.collect()
    cached.cache.close()

    knn, dspy_build_s = dspy_knn(pool, vecs, queries, qv, k)
    dspy_search(knn, qv[0])
    dspy_t, dspy_rows = timed(lambda v: dspy_search(knn, v), qv)
    n_call = min(len(queries), args.dspy_calls)
    call_t, call_out = timed(lambda q: knn(query=q), queries[:n_call])
    pos = {id(ex): i for i, ex in enumerate(knn.trainset)}
    call_rows = np.array([[pos[id(ex)] for ex in out] for out in call_out])

    dspy_p50 = stats(dspy_t)["p50_ms"]
    dspy_mean = stats(dspy_t)["mean_ms"]
    for r in rows:
        r["speedup_vs_dspy_p50"] = dspy_p50 / r["search"]["p50_ms"]
        r["speedup_vs_dspy_mean"] = dspy_mean / r["search"]["mean_ms"]
    return {
        "pool_size": n, "auto_index": pick, "perturbed_copies": max(0, n - len(base_texts)),
        "vectors_mib": vecs.nbytes / 2**20,
        "indexes": rows,
        "exact_flat_search": stats(exact_t),
        "dspy_knn_search": stats(dspy_t), "dspy_knn_call": stats(call_t),
        "dspy_knn_calls_timed": n_call, "dspy_knn_build_s": dspy_build_s,
        f"dspy_recall_at_{k}": recall(np.array(dspy_rows), gt),
        f"dspy_call_recall_at_{k}": recall(call_rows, gt[:n_call]),
    }


def real_recall(base_texts, base_vecs, queries, qv, n_real_q, embedder_id, tmp,
                ef_construction) -> dict:
    """HNSW (PoolIndex.build defaults) vs exact search on the model's own embeddings."""
    pool = Pool([Example(id=f"b{i}", query=t, answer="-") for i, t in enumerate(base_texts)])
    cache = EmbeddingCache(tmp / "emb-real.sqlite3")
    cache.set_dim(embedder_id, base_vecs.shape[1])
    cache.put_many((EmbeddingCache.key(embedder_id, t), v) for t, v in zip(base_texts, base_vecs))
    cached = Embedder(cache=cache)
    params = {} if ef_construction is None else {"ef_construction": ef_construction}
    hnsw = PoolIndex.build(pool, cached, "hnsw", **params)
    flat = PoolIndex.build(pool, cached, "flat")
    out = {"pool": len(pool), "queries": len(queries), "hnsw": hnsw.hnsw, "recall_at": {}}
    for k in (1, 4, 8, 16):
        exact = flat.search_vectors(qv, k)[1]
        got = hnsw.search_vectors(qv, k)[1]
        out["recall_at"][str(k)] = recall(got, exact)
        if k == 8 and n_real_q:
            out["recall_at_8_just_eval_queries"] = recall(got[:n_real_q], exact[:n_real_q])
    cache.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000", help="pool sizes, comma-separated")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for embedding (default: torch's own)")
    ap.add_argument("--base", type=int, default=6000,
                    help="synthetic texts embedded for the base set (plus just-eval)")
    ap.add_argument("--queries", type=int, default=256, help="held-out queries")
    ap.add_argument("--latency-queries", type=int, default=128,
                    help="queries timed one by one through embed + select + render")
    ap.add_argument("--real-queries", type=int, default=200,
                    help="just-eval instructions held out as queries (the rest join the base)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--noise", type=float, default=0.03,
                    help="per-dimension sigma of the perturbation that makes copies")
    ap.add_argument("--ef-construction", type=int, default=None,
                    help="HNSW efConstruction for the real-embedding recall (default: PoolIndex.build's)")
    ap.add_argument("--kinds", default="auto,flat,hnsw,ivf",
                    help="index kinds measured at each size ('auto' = what PoolIndex picks)")
    ap.add_argument("--hnsw-max", type=int, default=1_000_000,
                    help="skip HNSW above this pool size (its build is the slowest)")
    ap.add_argument("--flat-max", type=int, default=1_000_000,
                    help="skip the exact index as a kind above this size (exact search is "
                         "still timed as the ground truth)")
    ap.add_argument("--dspy-calls", type=int, default=256,
                    help="queries timed through the whole dspy.KNN call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "selection.json",
                    help="the results file (a folder: selection.json inside it)")
    args = ap.parse_args()
    if args.out.is_dir():
        args.out = args.out / "selection.json"
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    started = time.perf_counter()

    rng = random.Random(args.seed)
    real = list(dict.fromkeys(real_queries()))
    rng.shuffle(real)
    real_q = real[:min(args.real_queries, args.queries, len(real) // 2)]
    real_base = real[len(real_q):]
    syn = synthetic_texts(args.base + args.queries, seed=args.seed)
    queries = real_q + syn[args.base:args.base + args.queries - len(real_q)]
    held = {normalize_text(q) for q in queries}
    base_texts = [t for t in real_base + syn[:args.base] if normalize_text(t) not in held]
    rng.shuffle(base_texts)  # so a small pool mixes real instructions and synthetic questions
    system = SYSTEM_FILE.read_text(encoding="utf-8") if SYSTEM_FILE.is_file() else ""

    embedder = Embedder(cache=False, threads=args.threads)
    embedder.encode(["warm-up"])  # model load is not embedding speed
    t = time.perf_counter()
    base_vecs = embedder.encode(base_texts)
    embed_s = time.perf_counter() - t
    qv = embedder.encode(queries)
    print(f"embedded {len(base_texts):,} base texts in {embed_s:.1f} s "
          f"({len(base_texts) / embed_s:,.0f} items/s, {embedder.backend_used} backend, "
          f"threads {args.threads or 'default'})",
          flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        real_rec = real_recall(base_texts, base_vecs, queries, qv, len(real_q), embedder.id, tmp,
                               args.ef_construction)
        print(f"HNSW recall on real embeddings ({real_rec['pool']:,} pool, {len(queries)} "
              f"queries): {real_rec['recall_at']}", flush=True)
        for n in sizes:
            t = time.perf_counter()
            rows.append(bench_size(n, args, base_texts, base_vecs, queries, qv, embedder,
                                   system, tmp))
            gc.collect()  # free one pool's indexes before building the next
            print(f"pool {n:,}: done in {time.perf_counter() - t:.0f} s", flush=True)

    # How far a perturbed copy sits from its origin (cosine), for the record.
    probe = np.random.default_rng(args.seed).normal(0.0, args.noise, size=(1000, base_vecs.shape[1]))
    b = base_vecs[:1000] if len(base_vecs) >= 1000 else base_vecs[np.arange(1000) % len(base_vecs)]
    p = b + probe
    cos_origin = float(np.mean(np.sum(p * b, axis=1) / np.linalg.norm(p, axis=1)))
    import dspy

    k = args.k
    result = {
        "command": "python bench/selection.py " + " ".join(sys.argv[1:]),
        "embedder": embedder.id, "dim": int(base_vecs.shape[1]), "k": k,
        "strategy": "knn", "queries": len(queries), "just_eval_queries": len(real_q),
        "pool_construction": {
            "base_texts": len(base_texts), "just_eval_in_base": len(real_base),
            "synthetic_in_base": len(base_texts) - len(real_base),
            "copies": "base vector + N(0, noise^2) per dimension, renormalised; text + ' (variant i)'",
            "noise": args.noise, "mean_cos_copy_to_origin": cos_origin,
            "index": "PoolIndex.build(kind) for each of --kinds; auto = resolve_index_kind('auto', n)",
        },
        "embedding": {"texts": len(base_texts), "items_per_s": len(base_texts) / embed_s,
                      "backend": embedder.backend_used,
                      "torch_threads": args.threads or "default"},
        "hnsw_recall_real_embeddings": real_rec,
        "dspy": {"version": dspy.__version__, "retriever": "dspy.KNN",
                 "search": "np.dot(trainset_vectors, q.T) then full argsort (numpy brute force)",
                 "vectorizer": "dspy.Embedder(callable returning our precomputed vectors)"},
        "sizes": rows,
        "wall_s": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "faiss_threads": faiss.omp_get_max_threads(),
                    "load_avg_1m": os.getloadavg()[0]},
    }

    def pp(d: dict) -> str:
        return f"{d['p50_ms']:.2f}/{d['p99_ms']:.1f}"

    print(f"\nselection with the auto index, kNN k={k}, p50/p99 ms, queries one at a time; "
          f"batch = select_many on {len(queries)} queries")
    print(f"{'pool':>9} {'index':>6} {'embed':>12} {'(torch)':>12} {'select':>12} {'render':>12}"
          f" {'total':>12} {'batch q/s':>10} {'given vecs':>11}")
    for r in rows:
        a = next((x for x in r["indexes"] if x["auto_pick"]), None)
        if a is None:  # --kinds left the auto pick out
            continue
        lat = a["latency"]
        twin = pp(lat["embed_torch"]) if "embed_torch" in lat else "-"
        print(f"{r['pool_size']:>9,} {a['kind']:>6} {pp(lat['embed']):>12} {twin:>12}"
              f" {pp(lat['select']):>12}"
              f" {pp(lat['render']):>12} {pp(lat['total']):>12}"
              f" {a['select_many_end_to_end_qps']:>10,.0f} {a['select_many_given_vectors_qps']:>11,.0f}")
    print(f"\nsearch step only (query vectors precomputed), p50/p99 ms over {len(queries)} queries;"
          f" dspy.KNN over the same vectors")
    print(f"{'pool':>9} {'index':>7} {'build s':>8} {'MiB':>7} {'ours':>11} {'dspy.KNN':>12}"
          f" {'x p50':>7} {'recall@' + str(k):>9} {'sel q/s':>9}")
    for r in rows:
        for x in r["indexes"]:
            name = x["kind"] + ("*" if x["auto_pick"] else "")
            print(f"{r['pool_size']:>9,} {name:>7} {x['build_s']:>8.1f} {x['index_mib']:>7.0f}"
                  f" {pp(x['search']):>11} {pp(r['dspy_knn_search']):>12}"
                  f" {x['speedup_vs_dspy_p50']:>7.1f} {x[f'recall_at_{k}']:>9.3f}"
                  f" {x['select_many_given_vectors_qps']:>9,.0f}")
    print("(* = the auto choice; x = dspy.KNN search time / ours; recall vs exact search over the "
          "same vectors; MiB = the index as FAISS stores it)")
    write_json(args.out, result)
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
