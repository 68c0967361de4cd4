"""Pairwise vs pointwise judging on the reference data: agreement with the reference ranking of
systems and spread across repeated runs, with the default judge model (Gemma 3 270M base).

Systems: just-eval safety answers (ids 800-999) of several systems, each with a reference safety
score; the reference ranking is their mean reference score on the queries used. Pointwise: the
judge's mean safety score per system. Pairwise: each system's win rate against a baseline system
(both orders, ties half). Agreement: Kendall tau between the judge's and the reference's system
rankings. Stability: the same figures over repeated sampled runs (`sample:` judge, temperature
1, no cache), reporting the standard deviation of each system's value and of tau.

    python bench/feedback.py [--queries 10] [--runs 3] [--systems 4]
writes bench/results/feedback.json. Skips cleanly when the reference data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "just-eval"
OUT = REPO / "bench" / "results" / "feedback.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--systems", type=int, default=4)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    if not (DATA / "judgements" / "reference.dev.jsonl").exists():
        print(f"skipped: {DATA} not found")
        return
    from scipy.stats import kendalltau

    from icl_search.engines import make_engine
    from icl_search.feedback import PairItem, PairwiseJudge
    from icl_search.judge import make_judge
    from icl_search.judge.calibration import load_reference

    rows = [r for r in load_reference(DATA / "judgements" / "reference.dev.jsonl")
            if r.category == "safety" and r.scores.get("safety") is not None]
    by_sys = defaultdict(dict)
    for r in rows:
        by_sys[r.system][r.id] = r
    common = sorted(set.intersection(*(set(v) for v in by_sys.values())), key=int)
    ref_all = {s: float(np.mean([by_sys[s][i].scores["safety"] for i in common]))
               for s in by_sys}
    ranked = sorted(ref_all, key=ref_all.get)
    # spread the chosen systems over the reference range
    pick = [ranked[round(j * (len(ranked) - 1) / (args.systems - 1))]
            for j in range(args.systems)]
    # short answers keep the judge's prompts small on a CPU; the ranking is then re-read on
    # exactly the queries used
    common = [i for i in common
              if max(len(by_sys[s][i].response) for s in pick) < 1500][: args.queries]
    ref_mean = {s: float(np.mean([by_sys[s][i].scores["safety"] for i in common]))
                for s in pick}
    baseline = pick[len(pick) // 2]
    print(f"{len(common)} queries; systems {pick}; baseline {baseline}", file=sys.stderr)
    engine = make_engine(f"vllm:{args.model}", max_model_len=4096)

    def run(kind: str) -> dict:
        judge = make_judge(f"{kind}:vllm:{args.model}", engine=engine, cache=None)
        t0 = time.perf_counter()
        from icl_search.judge import JudgeItem

        res = judge.score([JudgeItem(f"{s}/{i}", by_sys[s][i].query, by_sys[s][i].response,
                                     "safety") for s in pick for i in common])
        point = {s: float(np.nanmean([it.scores.get("safety") if it.scores.get("safety")
                                      is not None else np.nan for it in res.items
                                      if it.id.startswith(s + "/")])) for s in pick}
        t1 = time.perf_counter()
        pj = PairwiseJudge(judge, cache=None)
        pair = {baseline: 0.5}
        for s in pick:
            if s == baseline:
                continue
            pr = pj.compare([PairItem(i, by_sys[s][i].query, by_sys[s][i].response,
                                      by_sys[baseline][i].response) for i in common])
            pair[s] = pr.win_rate
        t2 = time.perf_counter()
        ref = [ref_mean[s] for s in pick]
        return {"pointwise": point, "pairwise": pair,
                "tau_pointwise": float(kendalltau(ref, [point[s] for s in pick]).statistic),
                "tau_pairwise": float(kendalltau(ref, [pair[s] for s in pick]).statistic),
                "seconds": {"pointwise": round(t1 - t0, 1), "pairwise": round(t2 - t1, 1)}}

    out = {"model": args.model, "queries": len(common), "systems": pick, "baseline": baseline,
           "reference_mean": {s: ref_mean[s] for s in pick}, "runs": {}}
    out["runs"]["logprob"] = run("logprob")
    print(json.dumps(out["runs"]["logprob"]), file=sys.stderr)
    sampled = []
    for k in range(args.runs):
        sampled.append(run("sample"))
        print(json.dumps(sampled[-1]), file=sys.stderr)
        out["runs"]["sample"] = sampled
        summary = {}
        for mode in ("pointwise", "pairwise"):
            sd = [float(np.nanstd([r[mode][s] for r in sampled])) for s in pick
                  if not (mode == "pairwise" and s == baseline)]
            taus = [r[f"tau_{mode}"] for r in sampled]
            # spread relative to the range of the scale: 1-5 scores span 4, win rates 1
            span = 4.0 if mode == "pointwise" else 1.0
            summary[mode] = {"mean_tau": float(np.nanmean(taus)), "sd_tau": float(np.nanstd(taus)),
                             "mean_sd_per_system": float(np.mean(sd)),
                             "mean_sd_per_system_of_scale": float(np.mean(sd)) / span}
        out["sampled_summary"] = summary
        OUT.parent.mkdir(parents=True, exist_ok=True)
        tmp = OUT.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, OUT)
    print(json.dumps(out.get("sampled_summary"), indent=2))


if __name__ == "__main__":
    main()
