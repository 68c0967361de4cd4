"""Multi-fidelity screening on the demo setting: expensive-judge items with and without a
distilled screen, and whether the best trial stays the same.

Two runs of `studies/demo.toml` (Gemma 3 270M base generating, the default judge as the
"expensive" one), each in its own SQLite storage, sharing the generation/judge cache:

* audit (`judge.screen_top = 1.0`): every trial judged by both the distilled screen and the
  expensive judge: the unscreened reference, plus the counterfactual of a 0.5 screen;
* screened (`judge.screen_top = 0.5`): the expensive judge only on the top half so far.

The distilled judge is trained first when `--distilled` has none (on a seeded subsample of
just-eval's reference judgements, split by query, as in `bench/distill.py`).

    .venv/bin/python bench/screening.py --distilled ~/.cache/icl-search/distilled/just-eval

Writes `bench/results/screening.json` and prints a summary.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT  # first: the offline environment and the import path

from icl_search.io import write_json
from icl_search.judge.distill import MANIFEST, distill, split_by_query
from icl_search.judge.records import reference_records
from icl_search.study import build_evaluator, load_config, open_study, run_study
from icl_search.study.screening import screening_summary

DATA = ROOT.parent / "shared" / "data" / "just-eval"
RESULTS = ROOT / "bench" / "results" / "screening.json"


def ensure_distilled(path: Path, limit: int) -> None:
    if (path / MANIFEST).exists():
        return
    ref = DATA / "judgements" / "reference.dev.jsonl"
    if not ref.exists():
        sys.exit(f"skipped: {ref} is absent and {path} holds no distilled judge")
    import torch

    torch.set_num_threads(1)
    train, _ = split_by_query(reference_records(ref), 0.2, 0)
    train = random.Random(0).sample(train, min(limit, len(train)))
    distill(train, path, max_length=128, test_fraction=0.0, sources=[ref], progress=True)


def run(tmp: Path, distilled: Path, top: float, engine, judge, n_trials: int):
    base = (ROOT / "studies" / "demo.toml").read_text()
    text = base.replace('spec = "default"', f'spec = "default"\nscreen = "distilled:{distilled}"'
                        f"\nscreen_top = {top}", 1)
    for rel in ("../pools",):
        text = text.replace(f'"{rel}', f'"{ROOT / "pools"}')
    name = f"audit{int(top * 100)}"
    text = text.replace('name = "demo"', f'name = "{name}"', 1)
    path = tmp / f"{name}.toml"
    path.write_text(text)
    cfg = load_config(path)
    ev = build_evaluator(cfg, engine=engine, judge=judge, say=print)
    t0 = time.perf_counter()
    s = run_study(cfg, ev, n_trials=n_trials, progress=print)
    study = open_study(cfg)
    best = max((t for t in study.get_trials(deepcopy=False) if t.values), key=lambda t: t.values[0])
    return {"screen_top": top, "seconds": round(time.perf_counter() - t0, 1),
            "finished": s.finished, "pruned": s.pruned, "screened_out": s.screened_out,
            "expensive_judge_items": s.stats["judged"], "screen_items": s.stats["screened"],
            "best_trial": best.number, "best_value": best.values[0], "best_params": best.params,
            "summary_at_0.5": screening_summary(study, 0.5)}, ev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--distilled", type=Path,
                    default=Path.home() / ".cache" / "icl-search" / "distilled" / "just-eval")
    ap.add_argument("--train-limit", type=int, default=600)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    ensure_distilled(args.distilled, args.train_limit)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        audit, ev = run(tmp, args.distilled, 1.0, None, None, args.trials)
        screened, _ = run(tmp, args.distilled, 0.5, ev.engine.engine, ev.judge, args.trials)
    result = {"setting": "studies/demo.toml (Gemma 3 270M base, default judge), "
                         f"{args.trials} trials, 8 queries",
              "distilled": str(args.distilled), "audit": audit, "screened": screened,
              "same_best_params": audit["best_params"] == screened["best_params"]}
    write_json(args.out, result)
    for r in (audit, screened):
        print(f"screen_top {r['screen_top']}: expensive-judge items {r['expensive_judge_items']}, "
              f"screened out {r['screened_out']} trials, best trial {r['best_trial']} "
              f"({r['best_value']:.3f}) {r['best_params']}, {r['seconds']:.0f} s")
    print(f"same best configuration: {result['same_best_params']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
