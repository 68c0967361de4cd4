"""Quality against training time for the learned judge's recipe (the curve that chose it).

Trains each named variant of `icl_search.judge.reward.Recipe` on the dev queries and, at
checkpoints, scores a fixed subset of held-out queries (split by query, the same split as the
shipped judge): length-matched and all-pair agreement with GPT-4-turbo, safety AUC. Prints a
table and writes bench/results/judge_recipe.json (variants are appended, so runs add up).

    nice -n 10 .venv/bin/python bench/judge_recipe.py --variant base
    nice -n 10 .venv/bin/python bench/judge_recipe.py --variant short96 --set max_length=96
    nice -n 10 .venv/bin/python bench/judge_recipe.py --variant pairs --set group_size=2 \
        --checkpoints 400,800,1200        # plain pairs: the same 2,400 forward passes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icl_search.io import write_json
from icl_search.judge.alpaca import load_alpaca, load_lc_winrate, load_safety, split_ids
from icl_search.judge.metrics import preference_figures, safety_auc
from icl_search.judge.prepare import SPLIT_SEED, TEST_FRACTION
from icl_search.judge.reward import RecipeError, predict, recipe_with, train_reward

OUT = Path(__file__).parent / "results" / "judge_recipe.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", required=True, help="a name for this row of the table")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a Recipe field to change (repeatable)")
    ap.add_argument("--checkpoints", default="100,200,300")
    ap.add_argument("--eval-queries", type=int, default=40)
    ap.add_argument("--eval-safety", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:  # the same parsing and checks as `icl-search judge prepare --set`
        recipe = recipe_with(args.set)
    except RecipeError as exc:
        sys.exit(str(exc))
    checkpoints = {int(c) for c in args.checkpoints.split(",")}
    recipe = replace(recipe, steps=max(checkpoints))
    alpaca, safety = load_alpaca(), load_safety()
    lc = load_lc_winrate()
    tr_a, te_a = split_ids([g.id for g in alpaca], TEST_FRACTION, SPLIT_SEED)
    tr_s, te_s = split_ids([g.id for g in safety], TEST_FRACTION, SPLIT_SEED)
    train = [g for g in alpaca if g.id in tr_a] + [g for g in safety if g.id in tr_s]
    ev_a = [g for g in alpaca if g.id in te_a][:args.eval_queries]
    ev_s = [g for g in safety if g.id in te_s][:args.eval_safety]
    rows = []
    eval_seconds = [0.0]  # checkpoint scoring is not training time

    def on_step(step, model, tok, seconds):
        if step not in checkpoints:
            return
        t = time.perf_counter()
        items = [(g.query, a.text) for g in ev_a + ev_s for a in g.answers]
        raw = predict(model, tok, recipe, items)
        score_s = time.perf_counter() - t
        eval_seconds[0] += score_s
        qa, sa, k = {}, {}, 0
        for g in ev_a:
            qa[g.id] = raw[k:k + len(g.answers), 0]
            k += len(g.answers)
        for g in ev_s:
            sa[g.id] = raw[k:k + len(g.answers), 1]
            k += len(g.answers)
        f = preference_figures(ev_a, qa, lc_winrate=lc)
        row = {"step": step, "train_seconds": round(seconds - eval_seconds[0] + score_s, 1),
               "matched": round(f["agreement_matched"], 4), "all": round(f["agreement_all"], 4),
               "longer_matched": round(f["longer_matched"], 4),
               "matched_pairs": f["matched_pairs"], "safety_auc": round(safety_auc(ev_s, sa), 4),
               "items_per_s": round(len(items) / score_s, 1),
               "load": os.getloadavg()[0]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    t0 = time.perf_counter()
    _, _, stats = train_reward(train, recipe, on_step=on_step, threads=args.threads,
                               progress=True)
    result = {"variant": args.variant, "recipe": recipe.to_dict(), "stats": stats,
              "curve": rows, "wall_seconds": round(time.perf_counter() - t0, 1)}
    prior = json.loads(OUT.read_text()) if OUT.exists() else {"variants": []}
    prior["variants"] = [v for v in prior["variants"] if v["variant"] != args.variant]
    prior["variants"].append(result)
    write_json(OUT, prior)
    print(f"{'variant':<14} {'step':>5} {'train s':>8} {'matched':>8} {'all':>6} "
          f"{'safety':>7} {'items/s':>8} {'load':>5}")
    for v in prior["variants"]:
        for r in v["curve"]:
            print(f"{v['variant']:<14} {r['step']:>5} {r['train_seconds']:>8} {r['matched']:>8} "
                  f"{r['all']:>6} {r['safety_auc']:>7} {r['items_per_s']:>8} {r['load']:>5.1f}")


if __name__ == "__main__":
    main()
