"""Distilled judge benchmark: agreement with just-eval's reference judgements on held-out
queries, training time and scoring speed on this machine, next to the default generative judge.

Data: `../shared/data/just-eval/judgements/reference.dev.jsonl` joined with its outputs and
instructions (GPT-4-turbo's five-aspect scores of gpt-3.5-turbo's answers on the regular ids;
gpt-3.5-turbo-0613's safety scores of 13 systems on the safety ids). Split by query (no query
on both sides), 20% held out, per category. One cross-encoder with six outputs (five aspects +
safety) starts from the packaged MiniLM and trains for one epoch; to keep the run near ten
minutes on two busy cores it trains on a seeded random subsample of the training records
(`--train-limit`, 0 = all) with `--max-length` tokens per pair, and is evaluated on the whole
held-out split. Figures per aspect: Spearman, AUC of reference <= 2 against >= 4 (for safety:
unsafe against safe), MAE. Speed: held-out items scored per second (all aspects at once), and
the default judge (`make_judge("default")`, Gemma 3 270M read through logprobs) on a few
held-out items, without cache, model loading excluded.

    .venv/bin/python bench/distill.py                       # ~10 min on 2 cores
    .venv/bin/python bench/distill.py --train-limit 0 --max-length 256   # the full recipe

Writes `bench/results/distill.json` and prints a table. Skips cleanly without the data.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from _common import ROOT  # first: the offline environment and the import path

from icl_search.io import write_json
from icl_search.judge.distill import distill, split_by_query
from icl_search.judge.learned import DistilledBackend
from icl_search.judge.metrics import agreement
from icl_search.judge.records import reference_records

DATA = ROOT.parent / "shared" / "data" / "just-eval"
RESULTS = ROOT / "bench" / "results" / "distill.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-limit", type=int, default=1200,
                    help="train on at most N records (seeded random subsample; 0 = all)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is faster than 2 on a shared 2-core machine)")
    ap.add_argument("--default-items", type=int, default=6,
                    help="held-out items for the default judge's speed (0 skips it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    ref = DATA / "judgements" / "reference.dev.jsonl"
    if not ref.exists():
        print(f"skipped: {ref} is absent")
        return

    import torch

    torch.set_num_threads(args.threads)
    records = reference_records(ref)
    train, test = split_by_query(records, 0.2, args.seed)
    full_train = len(train)
    if args.train_limit and len(train) > args.train_limit:
        train = random.Random(args.seed).sample(train, args.train_limit)
    print(f"{len(records)} reference records; train {len(train)} of {full_train} "
          f"({len({r.query for r in train})} queries), test {len(test)} "
          f"({len({r.query for r in test})} queries)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "distilled"
        t0 = time.perf_counter()
        d = distill(train, out, epochs=args.epochs, batch_size=args.batch_size,
                    max_length=args.max_length, test_fraction=0.0, seed=args.seed,
                    sources=[ref], progress=True)
        train_wall = time.perf_counter() - t0
        backend = DistilledBackend(out)
        pairs = [(r.query, r.response) for r in test]
        t0 = time.perf_counter()
        preds = backend.predict(pairs, progress=True)
        score_seconds = time.perf_counter() - t0
        aspects = backend.aspects
        manifest = d.manifest
    figures = {}
    for j, a in enumerate(aspects):
        both = [(preds[i, j], r.scores[a]) for i, r in enumerate(test) if a in r.scores]
        figures[a] = agreement([p for p, _ in both], [t for _, t in both])

    default = None
    if args.default_items:
        default = default_judge_speed(test, args.default_items)

    result = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads,
                    "platform": platform.platform(),
                    "load_average_1m_at_end": os.getloadavg()[0]},
        "data": str(ref), "split": "by query, 20% held out per category, seed "
                                    f"{args.seed}",
        "records": len(records), "train_records": len(train),
        "train_records_available": full_train, "test_records": len(test),
        "test_queries": len({r.query for r in test}),
        "base_model": manifest["base_model"], "max_length": args.max_length,
        "epochs": args.epochs, "batch_size": args.batch_size,
        "train_seconds": manifest["train_seconds"], "train_wall_seconds": round(train_wall, 1),
        "distilled_items_per_s": round(len(test) / score_seconds, 2),
        "distilled_score_seconds": round(score_seconds, 1),
        "aspects": figures, "default_judge": default,
    }
    write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out}")


def default_judge_speed(test, n: int) -> dict:
    """Items/s of the default generative judge on n held-out items (half safety)."""
    from icl_search.judge import JudgeItem, make_judge

    safety = [r for r in test if r.category == "safety"]
    regular = [r for r in test if r.category != "safety"]
    picks = regular[: n - n // 2] + safety[: n // 2]
    items = [JudgeItem(str(i), r.query, r.response, r.category) for i, r in enumerate(picks)]
    t0 = time.perf_counter()
    judge = make_judge("default")  # no cache: every item is really judged
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = judge.score(items, progress=True)
    seconds = time.perf_counter() - t0
    return {"judge": judge.id, "items": len(items),
            "regular_items": len(picks) - len(safety[: n // 2]),
            "safety_items": len(safety[: n // 2]), "seconds": round(seconds, 1),
            "load_seconds": round(load, 1), "items_per_s": round(len(items) / seconds, 3),
            "coverage": {a: str(c) for a, c in res.coverage.items()}}


def print_table(r: dict) -> None:
    def f(x, d=2):
        return "-" if x is None else f"{x:.{d}f}"

    print(f"\ndistilled judge (cross-encoder from {Path(r['base_model']).parent.name}), "
          "held-out queries: "
          f"{r['test_queries']} ({r['test_records']} records)")
    print(f"{'aspect':<12} {'n':>5} {'spearman':>9} {'AUC':>6} {'low/high':>10} {'MAE':>6}")
    for a, m in r["aspects"].items():
        print(f"{a:<12} {m['n']:>5} {f(m['spearman']):>9} {f(m['auc']):>6} "
              f"{str(m['auc_low']) + '/' + str(m['auc_high']):>10} {f(m['mae']):>6}")
    print(f"\ntraining: {r['train_records']} records x {r['epochs']} epoch, max_length "
          f"{r['max_length']}: {r['train_seconds']:.0f} s on {r['machine']['torch_threads']} "
          f"torch thread(s) ({r['machine']['cpus']} cores, shared)")
    print(f"scoring: distilled {r['distilled_items_per_s']:.2f} items/s (all aspects)")
    d = r["default_judge"]
    if d:
        print(f"scoring: default judge {d['judge']} {d['items_per_s']:.3f} items/s "
              f"({d['items']} items, {d['seconds']:.0f} s, load {d['load_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
