"""Cost per study as the work grows: wall time and model calls of real `icl-search study run`s
for a grid of trial counts x query counts, against the naive cost (every trial generates and
judges every query).

Each cell is a fresh study (its own SQLite storage and an empty generation/judge cache) run by
`run_study` as `icl-search study run` runs it: TPE (multivariate, grouped, constant liar), the
Wilcoxon pruner on chunks of `--chunk` queries, `--batch-trials` trials per engine call, the
content-addressed caches and vLLM's prefix caching. The search space is `bench/study.py`'s
(3 preambles, k in [0, 3], fixed / kNN / MMR / hybrid over `pools/default.jsonl`); the queries
are just-eval instructions (read from `../shared/data/just-eval/` at run time; the dev eval set
when absent) written to a temporary eval file. The engines are loaded once and shared by every
cell (set-up, not timed): `--model tiny` generates with a tiny random Llama and judges with
another (as `bench/study.py`), `--model default` does both with Gemma 3 270M base.

Per cell: wall time of `run_study`; trials finished / pruned; trial-queries evaluated
(generations asked for) against the naive trials x queries; generations the model actually ran
(cache misses) and judge items actually scored; the cache hits. Where the curve bends:
pruning cuts trial-queries, the caches cut model calls for configurations TPE re-proposes
(k=0 trials of one preamble are all the same prompt), and prefix sharing cuts the time per call
(every prompt of a trial shares its preamble and fixed examples). `--ablate` adds, for the
first cell of the grid, the same study with the pruner off and with prefix caching off.

Prints a table and writes `bench/results/study-cost.json` (`study-cost-default.json`);
`--merge` keeps the cells of that file this run does not redo (a grid run in parts), and
`runs` lists the command lines that made it.

    .venv/bin/python bench/study_cost.py --trials 8,32 --queries 8,32          # tiny, partial
    .venv/bin/python bench/study_cost.py --model default --trials 8 --queries 8
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from _common import (  # first: the offline environment and the import path
    POOLS,
    RESULTS,
    ROOT,
    sibling,
)

from icl_search.cache import Cache
from icl_search.io import write_json, write_jsonl
from icl_search.judge import make_judge
from icl_search.study import build_evaluator, load_config, run_study

_sb = sibling("study")  # its config writer and engine settings
JUST_EVAL = ROOT.parent / "shared" / "data" / "just-eval" / "instructions.dev.jsonl"


def eval_file(tmp: Path, n: int) -> Path:
    """`n` queries: just-eval's regular instructions when present, else the dev eval set."""
    rows = []
    if JUST_EVAL.is_file():
        with JUST_EVAL.open(encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                if r.get("category") == "regular" and len(r["instruction"]) <= 400:
                    rows.append({"id": f"je-{r['id']}", "query": r["instruction"],
                                 "category": "regular"})
    if len(rows) < n:
        rows = [json.loads(x) for x in (POOLS / "eval" / "dev.jsonl").read_text().splitlines()
                if x.strip()]
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} queries available, {n} asked for")
    path = tmp / "eval.jsonl"
    write_jsonl(path, rows[:n])
    return path


def write_config(cell: Path, model: str, judge_model: str, evalset: Path, trials: int,
                 queries: int, args, pruner: str) -> Path:
    systems = ", ".join(f'"{POOLS / "system_prompts" / n}"'
                        for n in ("urial_style.txt", "concise.txt", "expert_careful.txt"))
    text = f"""
name = "cost"
seed = {args.seed}
cache = "{cell / 'cache.sqlite3'}"
[model]
engine = "vllm:{model}"
max_model_len = {_sb.SETTINGS[args.model]['max_model_len']}
[judge]
spec = "logprob:vllm:{judge_model}"
min_coverage = 0.0
[pool]
path = "{POOLS / 'default.jsonl'}"
[eval]
path = "{evalset}"
limit = {queries}
[decoding]
max_tokens = {args.max_tokens}
temperature = 0.0
repetition_penalty = 1.1
[search]
system_prompts = [{systems}]
k = [0, 3]
strategies = ["fixed", "knn", "mmr", "hybrid"]
[search.baseline]
example_ids = ["factual-001", "advice-001", "safety-001"]
[optuna]
n_trials = {trials}
batch_trials = {args.batch_trials}
chunk_size = {args.chunk}
pruner = "{pruner}"
storage = "sqlite:///{cell / 'study.db'}"
"""
    path = cell / "cost.toml"
    path.write_text(text)
    return path


def run_cell(tmp: Path, name: str, engines: dict, evalset: Path, trials: int, queries: int,
             args, pruner: str = "wilcoxon", prefix: bool = True) -> dict:
    cell = tmp / name
    cell.mkdir()
    cfg = load_config(write_config(cell, engines["model"], engines["judge_model"], evalset,
                                   trials, queries, args, pruner))
    eng = engines["gen" if prefix else "gen_noprefix"]
    judge_eng = engines["judge" if prefix else "judge_noprefix"]
    judge = make_judge(cfg.judge.spec, engine=judge_eng, cache=Cache(cfg.path(cfg.cache)))
    ev = build_evaluator(cfg, engine=eng, judge=judge, say=lambda m: None)
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    summary = run_study(cfg, ev)
    wall = time.perf_counter() - t
    st = ev.stats
    naive = trials * queries
    row = {
        "cell": name, "trials": trials, "queries": queries, "pruner": pruner,
        "prefix_caching": prefix, "wall_s": wall, "seconds_per_trial": wall / trials,
        "finished": summary.finished, "pruned": summary.pruned, "failed": summary.failed,
        "naive_trial_queries": naive, "trial_queries": st.prompts,
        "generations_run": st.generated - st.gen_cached, "generations_cached": st.gen_cached,
        "judge_items_run": st.judged - st.judge_cached, "judge_items_cached": st.judge_cached,
        "gen_seconds": st.gen_seconds, "judge_seconds": st.judge_seconds,
        "load_avg_1m": {"start": round(load0, 2), "end": round(os.getloadavg()[0], 2)},
    }
    row["model_calls_share_of_naive"] = (row["generations_run"] + row["judge_items_run"]) / (2 * naive)
    print(f"{name}: {wall:.0f} s, {summary.finished} finished / {summary.pruned} pruned, "
          f"{row['generations_run']} generations + {row['judge_items_run']} judge items run "
          f"(naive {naive} + {naive})", flush=True)
    del ev, judge
    gc.collect()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny")
    ap.add_argument("--trials", default="8,32,128", help="trial counts, comma-separated")
    ap.add_argument("--queries", default="8,32,128", help="query counts, comma-separated")
    ap.add_argument("--batch-trials", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=8, help="queries per pruning step")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="answer length (default: 48 tiny, 48 default)")
    ap.add_argument("--ablate", action="store_true",
                    help="also run the first cell with the pruner off and prefix caching off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--merge", action="store_true",
                    help="keep the cells of an existing results file that this run does not "
                         "redo (e.g. add the 128-query column to an earlier grid)")
    args = ap.parse_args()
    args.max_tokens = args.max_tokens or 48
    trials = [int(x) for x in args.trials.split(",") if x.strip()]
    queries = [int(x) for x in args.queries.split(",") if x.strip()]
    out_path = args.out or RESULTS / ("study-cost.json" if args.model == "tiny"
                                      else "study-cost-default.json")
    started = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="bench-study-cost-"))
    if args.model == "tiny":
        from icl_search.models import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny-generator", score_prior=0.0, seed=1))
        judge_model = str(build_tiny_model(tmp / "tiny-judge"))
    else:
        from icl_search.models import resolve_model

        model = judge_model = str(resolve_model("default"))
    engines = {"model": model, "judge_model": judge_model,
               "gen": _sb.build_engine(model, args.model, True)}
    engines["judge"] = engines["gen"] if judge_model == model else \
        _sb.build_engine(judge_model, args.model, True)
    evalset = eval_file(tmp, max(queries))

    rows: list[dict] = []
    earlier: list[dict] = []
    runs: list[str] = []
    if args.merge and out_path.is_file():
        old = json.loads(out_path.read_text(encoding="utf-8"))
        earlier, runs = old.get("cells", []), list(old.get("runs", []))
    runs.append("python bench/study_cost.py " + " ".join(sys.argv[1:]))

    def result() -> dict:
        redone = {r["cell"] for r in rows}
        cells = [c for c in earlier if c["cell"] not in redone] + rows
        return {
            "benchmark": "study-cost", "model": args.model, "generator_path": model,
            "judge": f"logprob:vllm:{judge_model}", "max_tokens": args.max_tokens,
            "batch_trials": args.batch_trials, "chunk": args.chunk, "seed": args.seed,
            "decoding": "greedy (temperature 0), repetition_penalty 1.1",
            "cells": cells, "runs": runs, "wall_s": time.perf_counter() - started,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
        }

    for q in queries:
        for t in trials:
            rows.append(run_cell(tmp, f"t{t}-q{q}", engines, evalset, t, q, args))
            write_json(out_path, result())  # a partial grid survives an interrupted run
    if args.ablate:
        t, q = trials[0], queries[0]
        rows.append(run_cell(tmp, f"t{t}-q{q}-no-pruner", engines, evalset, t, q, args,
                             pruner="none"))
        engines["gen_noprefix"] = _sb.build_engine(model, args.model, False)
        engines["judge_noprefix"] = engines["gen_noprefix"] if judge_model == model else \
            _sb.build_engine(judge_model, args.model, False)
        rows.append(run_cell(tmp, f"t{t}-q{q}-no-prefix-cache", engines, evalset, t, q, args,
                             prefix=False))

    res = result()
    write_json(out_path, res)
    print(f"\nstudy cost: model={args.model}, max_tokens {args.max_tokens}, batches of "
          f"{args.batch_trials} trials, pruning chunks of {args.chunk} queries")
    print(f"{'cell':<26}{'wall s':>8}{'s/trial':>8}{'fin/pr':>8}{'trial-q':>9}{'naive':>7}"
          f"{'gen run':>9}{'judge run':>10}{'calls/naive':>12}")
    for r in res["cells"]:
        print(f"{r['cell']:<26}{r['wall_s']:>8.0f}{r['seconds_per_trial']:>8.1f}"
              f"{r['finished']:>4}/{r['pruned']:<3}{r['trial_queries']:>9}"
              f"{r['naive_trial_queries']:>7}{r['generations_run']:>9}{r['judge_items_run']:>10}"
              f"{r['model_calls_share_of_naive']:>12.2f}")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
