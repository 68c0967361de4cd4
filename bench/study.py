"""Study throughput benchmark: trials per minute of the batched evaluator (several trials per
engine call, generation and judge caches, prefix caching) vs a plain loop (one trial per call,
no caches, prefix caching off), on the same trials, model, eval set and greedy decoding.

The trial list is what a study evaluates: the baseline (the URIAL-style preamble with the fixed
set factual-001, advice-001, safety-001) first, then trials drawn by a seeded
`optuna.samplers.RandomSampler` through the real search space (`ask` + `icl_search.study.suggest`:
3 preambles, k in [0, 3], fixed / kNN / MMR / hybrid over the default pool), with `--repeats` of
them replaced by copies of earlier trials, as TPE re-proposes configurations it likes. Both
sides evaluate every trial on the same `--queries` first queries of `pools/eval/dev.jsonl`
(all of them in one step: no pruning), judged by the logprob judge.

Models: `--model default` generates and judges with Gemma 3 270M base (one engine per side, as
`studies/demo.toml` does). `--model tiny` uses two tiny random Llamas per side: a generator built
with `score_prior=0` (its noise text depends on the context, so different trials give different
answers; the test model with its digit prior answers "3333..." whatever the context, which
would turn every judge call into a cache hit) and a judge built with the default digit prior
(so the logprob judge reads scores, which vary a little with the response).

* batched: `build_evaluator` as `icl-search study run` builds it (a `CachedEngine` over an
  engine with prefix caching on, a judge cache, both in a new cache file), trials evaluated
  `--batch-trials` at a time in one `Evaluator.evaluate` call;
* plain: an `Evaluator` over a separate engine with prefix caching off, no cache wrapper, a judge
  with no cache, one trial per `evaluate` call.

The two evaluators live side by side and take the trial batches in turns (order flipped every
batch), so a change in the shared machine's load falls on both alike. Only the `evaluate` calls
are timed (engine loading, the FAISS index and the query embeddings
are set-up common to both). Greedy decoding means both must give the same per-trial scores: the
script asserts they agree within `--tolerance` and prints the largest difference. Prints a table
and writes `bench/results/study.json` (`study-default.json` for `--model default`).

    .venv/bin/python bench/study.py                   # tiny random Llama, 12 trials x 8 queries
    .venv/bin/python bench/study.py --model default   # Gemma 3 270M base (slow on 2 CPUs)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from _common import POOLS, RESULTS  # first: the offline environment and the import path

import optuna

from icl_search.cache import Cache
from icl_search.engines import SamplingParams
from icl_search.engines.vllm import VLLMEngine
from icl_search.evalset import load_queries
from icl_search.io import write_json
from icl_search.judge import make_judge
from icl_search.pool import Pool
from icl_search.study import Evaluator, TrialEvaluation, TrialSpec, build_evaluator, load_config
from icl_search.study.space import baseline_params, suggest, system_choices

SETTINGS = {"tiny": {"max_model_len": 4096, "kv_cache_memory_bytes": 256 * 2**20},
            "default": {"max_model_len": 4096, "kv_cache_memory_bytes": 1024 * 2**20}}


def write_config(tmp: Path, model: str, judge_model: str, args) -> Path:
    systems = ", ".join(f'"{POOLS / "system_prompts" / n}"'
                        for n in ("urial_style.txt", "concise.txt", "expert_careful.txt"))
    text = f"""
name = "bench"
seed = {args.seed}
cache = "{tmp / 'cache.sqlite3'}"
[model]
engine = "vllm:{model}"
max_model_len = {SETTINGS[args.model]['max_model_len']}
[judge]
spec = "logprob:vllm:{judge_model}"
min_coverage = 0.0
[pool]
path = "{POOLS / 'default.jsonl'}"
[eval]
path = "{POOLS / 'eval' / 'dev.jsonl'}"
limit = {args.queries}
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
batch_trials = {args.batch_trials}
chunk_size = {args.queries}
pruner = "none"
storage = "sqlite:///{tmp / 'unused.db'}"
"""
    path = tmp / "bench.toml"
    path.write_text(text)
    return path


def draw_specs(cfg, pool_ids: list[str], n: int, repeats: int, seed: int
               ) -> tuple[list[TrialSpec], list[int | None]]:
    """The baseline, then random draws; `repeats` later slots copy an earlier trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    study.enqueue_trial(baseline_params(cfg, pool_ids))
    specs = []
    for _ in range(n):
        t = study.ask()
        specs.append(suggest(t, cfg, pool_ids))
        study.tell(t, 0.0)
    rng = random.Random(seed)
    copy_of: list[int | None] = [None] * n
    for slot in sorted(rng.sample(range(n // 2, n), repeats)):
        src = rng.randrange(0, slot)
        while copy_of[src] is not None:
            src = copy_of[src]
        specs[slot], copy_of[slot] = specs[src], src
    return specs, copy_of


def build_engine(model: str, kind: str, prefix_caching: bool) -> VLLMEngine:
    return VLLMEngine(model, enable_prefix_caching=prefix_caching, **SETTINGS[kind])


def scores(evaluator: Evaluator, specs, batch: int, positions: list[int]
           ) -> tuple[list[float | None], float]:
    out: list[float | None] = []
    t0 = time.perf_counter()
    for i in range(0, len(specs), batch):
        for spec, rows in zip(specs[i:i + batch], evaluator.evaluate(specs[i:i + batch],
                                                                      positions)):
            out.append(TrialEvaluation(spec, rows).result(evaluator.judge.id).overall)
    return out, time.perf_counter() - t0


def describe(s: TrialSpec) -> str:
    ex = ",".join(s.fixed_ids)
    lam = f" l={s.mmr_lambda:.2f}" if s.mmr_lambda is not None else ""
    return f"{s.system_name.removesuffix('.txt')} k={s.k} {s.strategy}{lam} {ex}".strip()


def fmt(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3, help="trials that repeat an earlier one")
    ap.add_argument("--queries", type=int, default=8, help="eval queries per trial")
    ap.add_argument("--batch-trials", type=int, default=4, help="trials per batched call")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="largest accepted per-trial score difference")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out_path = args.out or RESULTS / ("study.json" if args.model == "tiny"
                                      else "study-default.json")

    tmp = Path(tempfile.mkdtemp(prefix="bench-study-"))
    if args.model == "tiny":
        from icl_search.models import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny-generator", score_prior=0.0, seed=1))
        judge_model = str(build_tiny_model(tmp / "tiny-judge"))
    else:
        from icl_search.models import resolve_model

        model = judge_model = str(resolve_model("default"))
    cfg = load_config(write_config(tmp, model, judge_model, args))
    positions = list(range(args.queries))
    loads = {"start": round(os.getloadavg()[0], 2)}

    # Both evaluators exist side by side and take the trial batches in turns (the order
    # flipped every batch), so a change in the shared machine's load falls on both alike.
    # plain: prefix caching off, no cache wrapper, no judge cache, one trial per call
    eng = build_engine(model, args.model, False)
    judge_eng = eng if judge_model == model else build_engine(judge_model, args.model, False)
    pool = Pool.load(cfg.path(cfg.pool.path))
    specs, copy_of = draw_specs(cfg, pool.ids, args.trials, args.repeats, args.seed)
    d = cfg.decoding
    plain = Evaluator(
        engine=eng, judge=make_judge(cfg.judge.spec, engine=judge_eng, cache=None), pool=pool,
        queries=load_queries(cfg.path(cfg.eval.path))[:args.queries],
        systems={n: p.read_text(encoding="utf-8") for n, p in system_choices(cfg).items()},
        params=SamplingParams(max_tokens=d.max_tokens, temperature=d.temperature,
                              repetition_penalty=d.repetition_penalty, seed=d.seed),
        embedder=cfg.pool.embedder)
    # batched: as `study run` builds it (CachedEngine + judge cache, prefix caching on)
    beng = build_engine(model, args.model, True)
    bjudge_eng = beng if judge_model == model else build_engine(judge_model, args.model, True)
    batched = build_evaluator(cfg, engine=beng, say=lambda m: None, judge=make_judge(
        cfg.judge.spec, engine=bjudge_eng, cache=Cache(cfg.path(cfg.cache))))
    # Warm-up (not counted): a first engine call pays for cold kernels and memory.
    warm = SamplingParams(max_tokens=4)
    for e in {id(x): x for x in (eng, judge_eng, beng, bjudge_eng)}.values():
        e.generate(["Warm-up: the first call of an engine is slower than the rest."], warm)
    plain_scores: list[float | None] = []
    batched_scores: list[float | None] = []
    plain_s = batched_s = 0.0
    for n, i in enumerate(range(0, len(specs), args.batch_trials)):
        chunk = specs[i:i + args.batch_trials]
        sides = [("plain", plain, 1), ("batched", batched, args.batch_trials)]
        for name, ev, per_call in (sides if n % 2 == 0 else reversed(sides)):
            got, sec = scores(ev, chunk, per_call, positions)
            if name == "plain":
                plain_scores += got
                plain_s += sec
            else:
                batched_scores += got
                batched_s += sec
    loads["end"] = round(os.getloadavg()[0], 2)
    plain_stats = vars(plain.stats).copy()
    batched_stats = vars(batched.stats).copy()
    del plain, eng, judge_eng, batched, beng, bjudge_eng
    gc.collect()

    diffs = [abs(a - b) for a, b in zip(plain_scores, batched_scores)
             if a is not None and b is not None]
    missing = sum((a is None) != (b is None) for a, b in zip(plain_scores, batched_scores))
    max_diff = max(diffs, default=0.0)
    agree = missing == 0 and max_diff <= args.tolerance
    tpm = {"plain": len(specs) / plain_s * 60, "batched": len(specs) / batched_s * 60}
    res = {
        "model": args.model, "generator_path": model, "trials": len(specs),
        "repeated_trials": args.repeats, "queries": args.queries,
        "batch_trials": args.batch_trials, "max_tokens": args.max_tokens, "seed": args.seed,
        "decoding": "greedy (temperature 0), repetition_penalty 1.1",
        "judge": f"logprob:vllm:{judge_model}",
        "plain": {"seconds": plain_s, "trials_per_min": tpm["plain"], "stats": plain_stats},
        "batched": {"seconds": batched_s, "trials_per_min": tpm["batched"],
                    "stats": batched_stats},
        "speedup": tpm["batched"] / tpm["plain"],
        "scores_agree": agree, "max_score_diff": max_diff,
        "per_trial": [{"spec": describe(s), "repeat_of": c, "plain": a, "batched": b}
                      for s, c, a, b in zip(specs, copy_of, plain_scores, batched_scores)],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_avg_1m": loads,
                    "note": "shared machine: the two evaluators alternate batch by batch"},
    }
    write_json(out_path, res)

    print(f"\nstudy throughput: model={args.model}, {len(specs)} trials ({args.repeats} repeats) "
          f"x {args.queries} queries, max_tokens {args.max_tokens}, load avg "
          f"{loads['start']} -> {loads['end']} on {os.cpu_count()} CPUs\n")
    print(f"{'#':>3}  {'trial':<58}{'plain':>8}{'batched':>9}")
    for i, row in enumerate(res["per_trial"]):
        rep = f" (= #{row['repeat_of']})" if row["repeat_of"] is not None else ""
        print(f"{i:>3}  {(row['spec'] + rep)[:58]:<58}{fmt(row['plain']):>8}"
              f"{fmt(row['batched']):>9}")
    print(f"\n{'evaluator':<12}{'seconds':>9}{'trials/min':>12}{'gen prompts':>13}"
          f"{'gen cached':>12}{'judge cached':>14}")
    for name, st, sec in (("plain", plain_stats, plain_s), ("batched", batched_stats, batched_s)):
        print(f"{name:<12}{sec:>9.1f}{tpm[name]:>12.2f}{st['prompts']:>13}"
              f"{st['gen_cached']:>12}{st['judge_cached']:>14}")
    print(f"\nspeed-up {res['speedup']:.2f}x; per-trial scores agree: {agree} "
          f"(max difference {max_diff:.2e}, tolerance {args.tolerance:g})")
    print(f"wrote {out_path}")
    if not agree:
        raise SystemExit("per-trial scores differ between the two evaluators")


if __name__ == "__main__":
    main()
