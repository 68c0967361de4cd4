"""Index benchmark: embedding throughput, flat vs HNSW build and search, HNSW recall@10.

A synthetic pool of short, distinct questions (default 20k) and held-out queries of the
same shape are embedded with the default embedder (all-MiniLM-L6-v2), then searched with
an exact `IndexFlatIP` and with `IndexHNSWFlat` at a few efSearch values. Recall@10 is the
share of the exact top 10 that HNSW returns. Prints a table and writes
`bench/results/index.json`.

    .venv/bin/python bench/index.py              # 20k pool, 1,000 queries
    .venv/bin/python bench/index.py --n 5000     # quicker
    .venv/bin/python bench/index.py --threads 1  # embed the pool with one torch thread
"""

from __future__ import annotations

import argparse
import json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icl_search.index import Embedder, EmbeddingCache, PoolIndex
from icl_search.io import write_json
from icl_search.pool import Example, Pool
from icl_search.selection import Selector

RESULTS = Path(__file__).resolve().parent / "results" / "index.json"

_OPENERS = ["How do I", "What is the best way to", "Can you explain how to", "Is it safe to",
            "Give me a plan to", "What should I know before I", "Help me", "Why is it hard to",
            "Where do I start to", "Is there a cheap way to", "Walk me through how to",
            "What mistakes do people make when they"]
_VERBS = ["fix", "choose", "clean", "learn", "set up", "speed up", "store", "compare", "repair",
          "plan", "budget for", "write about", "test", "teach a child about", "photograph"]
_OBJECTS = ["a leaking kitchen tap", "a sourdough starter", "a Python dictionary", "a SQL index",
            "a second-hand bicycle", "a job interview", "a tomato garden", "a wedding speech",
            "a laptop battery", "a chess opening", "a marathon training block", "a fish tank",
            "a React component", "a mortgage offer", "a camping trip", "a violin bow",
            "a cover letter", "a Linux server", "a houseplant", "a research paper"]
_CONTEXTS = ["on a tight budget", "for a beginner", "in a small flat", "before winter",
             "without special tools", "with kids around", "in under an hour", "for the first time",
             "at work", "while travelling", "step by step", "in a rainy climate"]


def synthetic_texts(n: int, seed: int) -> list[str]:
    """`n` distinct short questions from combinations of a few word lists."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(f"{rng.choice(_OPENERS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                f"{rng.choice(_CONTEXTS)}?")
    return sorted(out, key=lambda _: rng.random())


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_single(idx: PoolIndex, q: np.ndarray, k: int) -> list[float]:
    out = []
    for row in q:
        t = time.perf_counter()
        idx.search_vectors(row[None, :], k)
        out.append(time.perf_counter() - t)
    return out


def real_queries() -> list[str]:
    """just-eval instructions from the shared reference data, when it is present."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "just-eval" / \
        "instructions.dev.jsonl"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["instruction"] for line in fh if line.strip()]


def threads_comparison(texts: list[str], singles: list[str]) -> list[dict]:
    """Batch throughput and single-query latency of the embedder per torch thread count."""
    import torch

    rows = []
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        emb = Embedder(cache=False, threads=threads)
        emb.encode(["warm-up"])
        t = time.perf_counter()
        emb.encode(texts)
        batch = len(texts) / (time.perf_counter() - t)
        times = []
        for q in singles:
            t = time.perf_counter()
            emb.encode([q])
            times.append(time.perf_counter() - t)
        p50, p99 = percentiles(times)
        rows.append({"threads": threads, "batch_items_per_s": batch,
                     "single_p50_ms": p50, "single_p99_ms": p99})
    return rows


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist()))
    return hits / exact.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="pool size")
    ap.add_argument("--queries", type=int, default=1_000, help="held-out queries")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for embedding the pool (default: torch's own)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    texts = synthetic_texts(args.n + args.queries, seed=0)
    pool = Pool([Example(id=f"x{i}", query=t, answer="-") for i, t in enumerate(texts[:args.n])])
    queries = texts[args.n:]

    with tempfile.TemporaryDirectory() as tmp:
        embedder = Embedder(cache=EmbeddingCache(Path(tmp) / "emb.sqlite3"), threads=args.threads)
        embedder.encode(["warm-up"])  # model load is not embedding speed

        t = time.perf_counter()
        flat = PoolIndex.build(pool, embedder, "flat", show_progress=True)
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        PoolIndex.build(pool, embedder, "flat")
        t_warm = time.perf_counter() - t
        qv = embedder.encode(queries)
        real = real_queries()
        rv = embedder.encode(real) if real else None

        t = time.perf_counter()
        hnsw = PoolIndex.build(pool, embedder, "hnsw")  # vectors from the cache
        t_hnsw_build = time.perf_counter() - t - t_warm

        # Query-side latency of a whole selection (embed the query, search, guard), uncached.
        sel_rows = []
        for threads in (None, 1):
            uncached = Embedder(cache=False, threads=threads)
            sel = Selector(PoolIndex(pool, uncached, flat.index, "flat"), strategy="knn", k=8)
            times = []
            for q in queries[:200]:
                t = time.perf_counter()
                sel.select(q)
                times.append(time.perf_counter() - t)
            p50, p99 = percentiles(times)
            sel_rows.append({"torch_threads": threads or "default", "p50_ms": p50, "p99_ms": p99})
        thread_rows = threads_comparison(texts[:1000], queries[:100])

    k = args.k
    t = time.perf_counter()
    _, exact = flat.search_vectors(qv, k)
    flat_batch = time.perf_counter() - t
    flat_single = percentiles(time_single(flat, qv, k))
    rows = [{
        "index": "flat (exact)", "ef_search": None, "recall_at_10": 1.0,
        "p50_ms": flat_single[0], "p99_ms": flat_single[1],
        "batch_qps": len(qv) / flat_batch,
    }]
    real_exact = flat.search_vectors(rv, k)[1] if rv is not None else None
    for ef in (16, 32, 64, 128, 256):
        hnsw.index.hnsw.efSearch = ef
        t = time.perf_counter()
        _, got = hnsw.search_vectors(qv, k)
        batch = time.perf_counter() - t
        p50, p99 = percentiles(time_single(hnsw, qv, k))
        row = {"index": "hnsw M=32", "ef_search": ef, "recall_at_10": recall(got, exact),
               "p50_ms": p50, "p99_ms": p99, "batch_qps": len(qv) / batch}
        if rv is not None:
            row["recall_at_10_real_queries"] = recall(hnsw.search_vectors(rv, k)[1], real_exact)
        rows.append(row)
    if rv is not None:
        rows[0]["recall_at_10_real_queries"] = 1.0

    result = {
        "pool_size": args.n, "queries": len(queries), "k": k, "dim": flat.dim,
        "embedder": embedder.id,
        "embed_items_per_s": args.n / t_cold,
        "embed_torch_threads": args.threads or "default",
        "cached_embed_items_per_s": args.n / t_warm,
        "hnsw_build_s": t_hnsw_build,
        "real_queries": len(real),
        "search": rows,
        "select_knn8_uncached_query": sel_rows,
        "embedder_threads": thread_rows,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "faiss_threads": __import__("faiss").omp_get_max_threads(),
                    "load_avg_1m": os.getloadavg()[0]},
    }

    print(f"\npool {args.n:,} x {flat.dim} ({embedder.id}), {len(queries):,} held-out queries")
    print(f"embedding: {result['embed_items_per_s']:,.0f} items/s from the model, "
          f"{result['cached_embed_items_per_s']:,.0f} items/s from the cache")
    print(f"HNSW build (M=32, efConstruction=200): {t_hnsw_build:.1f} s")
    for r in sel_rows:
        print(f"select (embed query + kNN 8 + guard, uncached, torch threads "
              f"{r['torch_threads']}): p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    for r in thread_rows:
        print(f"embedder, torch threads {r['threads']}: {r['batch_items_per_s']:,.0f} items/s "
              f"batched, single query p50 {r['single_p50_ms']:.1f} ms, "
              f"p99 {r['single_p99_ms']:.1f} ms")
    real_col = f"{'real@10':>9}" if rv is not None else ""
    print(f"\n{'index':<14}{'efSearch':>9}{'recall@10':>11}{real_col}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'batch q/s':>11}")
    for r in rows:
        ef = "-" if r["ef_search"] is None else str(r["ef_search"])
        real_val = f"{r['recall_at_10_real_queries']:>9.3f}" if rv is not None else ""
        print(f"{r['index']:<14}{ef:>9}{r['recall_at_10']:>11.3f}{real_val}{r['p50_ms']:>9.3f}"
              f"{r['p99_ms']:>9.3f}{r['batch_qps']:>11,.0f}")
    if rv is not None:
        print(f"(real@10: recall of {len(real)} just-eval instructions used as queries)")
    write_json(args.out, result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
