"""End to end: does a study's exported context beat URIAL's inst_1k on queries nobody searched on?

Queries come from the just-eval and AlpacaEval dev instructions in ../shared/data (just-eval's
regular and safety categories, AlpacaEval's regular ones), read at run time, split three ways by
a hash of their id (disjoint, deterministic): search, confirm, test.

1. A study on the search split (Gemma 3 270M base on CPU, the study's judge), confirmed on the
   confirm split against the project's baseline and URIAL inst_1k.
2. The confirmed best is exported as a bundle.
3. On the test split: answers with the bundle (per-query selection as `serve` renders it), with
   inst_1k, and with no context at all (zero-shot), same decoding.
4. Gains with 95% bootstrap intervals and Wilcoxon p-values under the study's judge and an
   independent one, win rates, and the rule checks' pass rate.

    .venv/bin/python bench/alignment.py                      # defaults (~30 min on 2 cores)
    .venv/bin/python bench/alignment.py --trials 4 --search-queries 8 --confirm-queries 10 \\
        --test-queries 12                                    # a quick run
    .venv/bin/python bench/alignment.py --bundle B.json --test my_queries.jsonl   # steps 3-4

Writes bench/results/alignment.json (and the study, bundle and query files under
runs/alignment/).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results" / "alignment.json"
SPLITS = ("search", "confirm", "test")

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "LITELLM_LOCAL_MODEL_COST_MAP": "True", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
             "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "ERROR"}.items():
    os.environ.setdefault(k, v)


def read_jsonl(path: Path) -> list[dict]:
    from icl_search.io import read_jsonl_objects

    return [row for _, row in read_jsonl_objects(path, ValueError, "data file")]


def _rank(qid: str) -> float:
    return int.from_bytes(hashlib.sha256(qid.encode()).digest()[:8], "big") / 2**64


def draw_queries(n: dict[str, int], safety_share: float) -> dict[str, list[dict]]:
    """Disjoint splits of `n[split]` queries each, about `safety_share` of them just-eval
    safety, the rest regular (just-eval regular and AlpacaEval alternating). Every query is
    ordered by a hash of its id and dealt in that order: deterministic, and a larger split
    keeps the queries of a smaller one."""
    je = read_jsonl(DATA / "just-eval" / "instructions.dev.jsonl")
    ae = read_jsonl(DATA / "alpaca-eval" / "instructions.dev.jsonl")
    safety = [{"id": f"je-{r['id']}", "query": r["instruction"], "category": "safety"}
              for r in je if r.get("category") == "safety"]
    regular_je = [{"id": f"je-{r['id']}", "query": r["instruction"], "category": "regular"}
                  for r in je if r.get("category") != "safety"]
    regular_ae = [{"id": f"ae-{r['id']}", "query": r["instruction"], "category": "regular"}
                  for r in ae]
    pools = {name: sorted(rows, key=lambda r: _rank(r["id"]))
             for name, rows in (("safety", safety), ("je", regular_je), ("ae", regular_ae))}
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split in SPLITS:
        k_safe = round(n[split] * safety_share)
        want = {"safety": k_safe, "je": (n[split] - k_safe + 1) // 2,
                "ae": (n[split] - k_safe) // 2}
        rows = []
        for name, k in want.items():
            take = []
            for r in pools[name]:
                key = " ".join(r["query"].casefold().split())
                if len(take) == k:
                    break
                if key in seen:  # the same instruction in both sources stays in one split
                    continue
                seen.add(key)
                take.append(r)
            pools[name] = [r for r in pools[name] if r not in take]
            rows += take
        out[split] = sorted(rows, key=lambda r: _rank(r["id"]))
    return out


def write_queries(path: Path, rows: list[dict]) -> None:
    from icl_search.io import write_jsonl

    write_jsonl(path, rows)


def study_config(work: Path, args) -> Path:
    pools = REPO / "pools"
    systems = [pools / "system_prompts" / n for n in
               ("urial_style.txt", "concise.txt", "expert_careful.txt")]
    text = f"""# written by bench/alignment.py
name = "alignment"
seed = {args.seed}
cache = "{work / 'cache.sqlite3'}"
[model]
engine = "{args.engine}"
max_model_len = 4096
[judge]
spec = "{args.judge}"
min_coverage = 0.5
[pool]
path = "{pools / 'default.jsonl'}"
[eval]
path = "{work / 'search.jsonl'}"
confirm = "{work / 'confirm.jsonl'}"
confirm_top = {args.confirm_top}
[decoding]
max_tokens = {args.max_tokens}
temperature = 0.0
repetition_penalty = 1.1
[search]
system_prompts = [{", ".join(f'"{p}"' for p in systems)}]
k = [0, 3]
strategies = ["fixed", "knn", "mmr", "hybrid"]
[search.baseline]
system = "{systems[0]}"
example_ids = ["factual-001", "advice-001", "safety-001"]
urial = "{DATA / 'urial' / 'inst_1k.txt'}"
[optuna]
n_trials = {args.trials}
n_startup_trials = {min(4, args.trials)}
batch_trials = 4
chunk_size = 4
storage = "sqlite:///{work / 'alignment.db'}"
"""
    path = work / "alignment.toml"
    path.write_text(text)
    return path


def answer_sets(engine, queries, bundle) -> dict[str, list]:
    """The test split answered three ways with the bundle's decoding."""
    from icl_search.generation import generate_answers
    from icl_search.pool import read_urial

    doc = read_urial(DATA / "urial" / "inst_1k.txt")
    params = bundle.sampling
    out = {}
    for name, system, examples, template in (
            ("bundle", bundle.system, lambda q: bundle.select(q.query), bundle.template),
            ("urial_inst_1k", doc.system, doc.answered, None),
            ("zero_shot", "", [], None)):
        t0 = time.time()
        out[name] = generate_answers(engine, queries, system=system, examples=examples,
                                     params=params, template=template, batch_size=16)
        print(f"  {name}: {len(queries)} answers in {time.time() - t0:.0f}s", flush=True)
    return out


def judge_scores(judge, queries, answers) -> dict[str, float | None]:
    from icl_search.judge import JudgeItem

    items = [JudgeItem(q.id, q.query, a.answer, q.category) for q, a in zip(queries, answers)]
    res = judge.score(items)
    return {q.id: j.overall for q, j in zip(queries, res.items)}


def win_rate(a: dict, b: dict) -> dict:
    from icl_search.study.confirm import mean_interval

    ids = [q for q in a if a[q] is not None and b.get(q) is not None]
    w = np.array([1.0 if a[q] > b[q] else 0.5 if a[q] == b[q] else 0.0 for q in ids])
    low, high = mean_interval(w) if len(w) else (None, None)
    return {"win_rate": float(w.mean()) if len(w) else None, "interval": [low, high],
            "n": len(w)}


def compare(scores: dict[str, dict]) -> dict:
    from icl_search.study.confirm import paired_gain

    out = {}
    for a, b in (("bundle", "urial_inst_1k"), ("bundle", "zero_shot"),
                 ("urial_inst_1k", "zero_shot")):
        g = paired_gain(scores[a], scores[b], b)
        out[f"{a} vs {b}"] = {**g.to_dict(), **{"win": win_rate(scores[a], scores[b])}}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12, help="study trials (default 12)")
    ap.add_argument("--search-queries", type=int, default=24)
    ap.add_argument("--confirm-queries", type=int, default=24)
    ap.add_argument("--test-queries", type=int, default=40)
    ap.add_argument("--safety-share", type=float, default=0.25,
                    help="share of just-eval safety queries in each split")
    ap.add_argument("--confirm-top", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--engine", default="vllm:default")
    ap.add_argument("--judge", default="default", help="the study's judge spec")
    ap.add_argument("--independent-judge", default="logprob:vllm:default",
                    help="a second judge spec for the test split (another recipe)")
    ap.add_argument("--test", type=Path, help="a query file: run only steps 3-4 on it "
                    "(needs --bundle, or a study already run here)")
    ap.add_argument("--bundle", type=Path, help="an exported bundle: skip the study")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "alignment")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from icl_search.bundle import Bundle
    from icl_search.cache import Cache
    from icl_search.engines import CachedEngine, make_engine
    from icl_search.evalset import load_queries
    from icl_search.feedback.rules import RuleChecker, RuleItem
    from icl_search.judge import make_judge
    from icl_search.study import build_evaluator, load_config, open_study, run_study
    from icl_search.study.export import export_bundle

    t_start = time.time()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    n = {"search": args.search_queries, "confirm": args.confirm_queries,
         "test": args.test_queries}
    result: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                 for k, v in vars(args).items()},
                    "load": os.getloadavg()}
    splits = draw_queries(n, args.safety_share)
    for split, rows in splits.items():
        write_queries(work / f"{split}.jsonl", rows)
    test_file = args.test or work / "test.jsonl"
    bundle_path = args.bundle or work / "bundle.json"
    engine = judge = None
    if args.bundle is None and not (args.test and bundle_path.exists()):
        print(f"[1/4] study: {args.trials} trials on {n['search']} search queries, confirm on "
              f"{n['confirm']}", flush=True)
        cfg = load_config(study_config(work, args))
        ev = build_evaluator(cfg, say=lambda m: print("  " + m, flush=True))
        t0 = time.time()
        s = run_study(cfg, ev, progress=lambda m: print("  " + m, flush=True))
        result["study_seconds"] = round(time.time() - t0, 1)
        result["confirm"] = s.confirm.to_dict() if s.confirm else None
        print("[2/4] export the confirmed best", flush=True)
        b = export_bundle(open_study(cfg), bundle_path)
        engine, judge = ev.engine, ev.judge
        if s.confirm:
            print("  " + s.confirm.sentence(), flush=True)
    b = Bundle.load(bundle_path)
    result["bundle"] = {"path": str(bundle_path), "trial": b.provenance.trial,
                        "describe": b.describe(),
                        "confirm": b.scores.confirm.model_dump() if b.scores.confirm else None}
    if engine is None:
        spec = b.model if b.model.startswith(("vllm:", "openai:")) else f"vllm:{b.model}"
        engine = CachedEngine(make_engine(spec, max_model_len=4096),
                              Cache(work / "cache.sqlite3"))
    if judge is None:
        judge = make_judge(args.judge, cache=Cache(work / "cache.sqlite3"))
    queries = load_queries(test_file)
    print(f"[3/4] answer {len(queries)} test queries: bundle, URIAL inst_1k, zero-shot",
          flush=True)
    t0 = time.time()
    answers = answer_sets(engine, queries, b)
    result["test_generation_seconds"] = round(time.time() - t0, 1)
    print("[4/4] judge", flush=True)
    raw = engine.engine if hasattr(engine, "engine") else engine
    independent = make_judge(args.independent_judge, cache=Cache(work / "cache.sqlite3"),
                             engine=raw if args.independent_judge.endswith(
                                 ":vllm:default") and args.engine == "vllm:default" else None)
    rules = RuleChecker()
    result["test"] = {"n": len(queries), "file": str(test_file)}
    for jname, j in (("study_judge", judge), ("independent_judge", independent)):
        scores = {name: judge_scores(j, queries, a) for name, a in answers.items()}
        result["test"][jname] = {
            "spec": args.judge if jname == "study_judge" else args.independent_judge,
            "means": {name: (float(np.mean([v for v in sc.values() if v is not None]))
                             if any(v is not None for v in sc.values()) else None)
                      for name, sc in scores.items()},
            "comparisons": compare(scores)}
    result["test"]["rules_pass_rate"] = {
        name: rules.check([RuleItem(q.id, q.query, a.answer, q.category)
                           for q, a in zip(queries, ans)]).pass_rate
        for name, ans in answers.items()}
    result["seconds"] = round(time.time() - t_start, 1)
    result["load_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from icl_search.io import write_json

    write_json(args.out, result)
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"test split, n={result['test']['n']}")
    for col in ("judge", "comparison", "gain (95% CI)", "p", "win rate (95% CI)"):
        t.add_column(col)
    for jname in ("study_judge", "independent_judge"):
        j = result["test"][jname]
        for comp, g in j["comparisons"].items():
            iv = g["interval"] or [None, None]
            w = g["win"]
            t.add_row(j["spec"], comp, f"{_s(g['mean'])} ({_s(iv[0])} to {_s(iv[1])})",
                      _f(g["p_value"]),
                      f"{_f(w['win_rate'])} ({_f(w['interval'][0])} to {_f(w['interval'][1])})")
    Console().print(t)
    print("means:", {j: result["test"][j]["means"] for j in ("study_judge", "independent_judge")})
    print("rules pass rate:", result["test"]["rules_pass_rate"])
    print(f"total {result['seconds']:.0f}s; wrote {RESULTS}")


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _s(x) -> str:
    return "-" if x is None else f"{x:+.3f}"


if __name__ == "__main__":
    sys.exit(main())
