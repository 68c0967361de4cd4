"""End to end: does a study's exported context beat URIAL's inst_1k on queries nobody searched on?

Queries come from the just-eval and AlpacaEval dev instructions in ../shared/data (just-eval's
regular and safety categories, AlpacaEval's regular ones), read at run time, split three ways by
a hash of their id (disjoint, deterministic): search, confirm, test.

1. A study on the search split (Gemma 3 270M base on CPU, the study's judge), confirmed on the
   confirm split against the project's baseline and URIAL inst_1k.
2. The confirmed best is exported as a bundle.
3. On the test split: answers with the bundle (per-query selection as `serve` renders it), with
   inst_1k, and with no context at all (zero-shot), same decoding.
4. Gains with 95% bootstrap intervals and Wilcoxon p-values under the study's judge, the audit
   judge (reference similarity: cosine to AlpacaEval's GPT-4-turbo reference answer, on the
   AlpacaEval rows) and optional independent ones, win rates, the rule checks' pass rate, and
   each context's answer hygiene (scaffolding cut by cleaning, unbalanced fences, loops, stopped
   by max_tokens; `icl_search.hygiene`).

    .venv/bin/python bench/alignment.py                      # defaults (see bench/results/alignment.json: seconds)
    .venv/bin/python bench/alignment.py --trials 4 --search-queries 8 --confirm-queries 10 \\
        --test-queries 12                                    # a quick run
    .venv/bin/python bench/alignment.py --bundle B.json --test my_queries.jsonl   # steps 3-4
    .venv/bin/python bench/alignment.py --bundle runs/demo/search_best.json \
        --independent-judge none                             # steps 3-4 on the drawn test split

Writes bench/results/alignment.json (and the study, bundle, query files and each context's test
answers, `answers-<context>.jsonl`, under runs/alignment/ or --work).
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
#: Long enough that most inst_1k answers finish (64 cut them; see the results' length_stopped).
DEFAULT_MAX_TOKENS = 160
#: The independent judge: issue 13's length-covariate ablation (same cache key there and here).
ABLATION = {"seed": 1, "length_covariate": False}

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "LITELLM_LOCAL_MODEL_COST_MAP": "True", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
             "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "ERROR"}.items():
    os.environ.setdefault(k, v)


def read_jsonl(path: Path) -> list[dict]:
    from icl_search.io import read_jsonl_objects

    return [row for _, row in read_jsonl_objects(path, ValueError, "data file")]


def _rank(qid: str) -> float:
    return int.from_bytes(hashlib.sha256(qid.encode()).digest()[:8], "big") / 2**64


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


class TooFewQueries(SystemExit):
    """Not enough queries outside the judges' training data for the splits asked for."""


def judge_training(manifests: list[dict]) -> tuple[set[str], set[str]]:
    """(ids, normalised texts) of every query any of the given reward judges trained on.

    A reward judge's `reward.json` records its held-out ids (`split`); it trained on every other
    AlpacaEval and just-eval safety group. `split_groups` gives the groups; the held-out ids are
    taken from each manifest (not recomputed), so a judge trained under another split is still
    excluded correctly, and the union over all judges is excluded."""
    from icl_search.judge.alpaca import load_alpaca, load_safety

    groups = [("ae", g) for g in load_alpaca(DATA)] + [("je", g) for g in load_safety(DATA)]
    ids: set[str] = set()
    texts: set[str] = set()
    for m in manifests:
        split = m["split"]
        held = {f"ae-{i}" for i in split["held_out_alpaca_ids"]} | \
            {f"je-{i}" for i in split["held_out_safety_ids"]}
        for prefix, g in groups:
            if f"{prefix}-{g.id}" not in held:
                ids.add(f"{prefix}-{g.id}")
                texts.add(_norm(g.query))
    return ids, texts


def draw_queries(n: dict[str, int], safety_share: float, exclude_ids: set[str] = frozenset(),
                 exclude_texts: set[str] = frozenset()) -> tuple[dict[str, list[dict]], dict]:
    """Disjoint splits of `n[split]` queries each, about `safety_share` of them just-eval
    safety, the rest regular (just-eval regular and AlpacaEval alternating), none of them a
    judge's training query (by id, or by the same normalised text: just-eval's regular queries
    include AlpacaEval instructions under other ids). Every query is ordered by a hash of its id
    and dealt in that order: deterministic, and a larger split keeps the queries of a smaller
    one. Returns the splits and how they were drawn (pool sizes, exclusions)."""
    je = read_jsonl(DATA / "just-eval" / "instructions.dev.jsonl")
    ae = read_jsonl(DATA / "alpaca-eval" / "instructions.dev.jsonl")
    safety = [{"id": f"je-{r['id']}", "query": r["instruction"], "category": "safety"}
              for r in je if r.get("category") == "safety"]
    regular_je = [{"id": f"je-{r['id']}", "query": r["instruction"], "category": "regular"}
                  for r in je if r.get("category") != "safety"]
    regular_ae = [{"id": f"ae-{r['id']}", "query": r["instruction"], "category": "regular",
                   "reference": r["reference_output"]} for r in ae if r.get("reference_output")]
    raw = {"safety": safety, "je": regular_je, "ae": regular_ae}
    pools = {name: sorted((r for r in rows if r["id"] not in exclude_ids
                           and _norm(r["query"]) not in exclude_texts),
                          key=lambda r: _rank(r["id"]))
             for name, rows in raw.items()}
    info = {"sources": {"safety": "just-eval safety", "je": "just-eval regular",
                        "ae": "AlpacaEval"},
            "available": {k: len(v) for k, v in raw.items()},
            "outside_judge_training": {k: len(v) for k, v in pools.items()},
            "excluded_judge_training_ids": len(exclude_ids),
            "rule": "the judges' held-out queries only (reward.json split), matched by id and "
                    "by normalised text; dealt by sha256(id)"}
    want = {}
    for split in SPLITS:
        k_safe = round(n[split] * safety_share)
        want[split] = {"safety": k_safe, "je": (n[split] - k_safe + 1) // 2,
                       "ae": (n[split] - k_safe) // 2}
    need = {name: sum(w[name] for w in want.values()) for name in pools}
    short = {name: (need[name], len(pools[name])) for name in pools
             if need[name] > len(pools[name])}
    if short:
        raise TooFewQueries(
            "too few queries outside the judges' training data for these splits: " + "; ".join(
                f"{info['sources'][k]} needs {a}, has {b}" for k, (a, b) in short.items())
            + " (lower --search-queries/--confirm-queries/--test-queries or --safety-share)")
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split in SPLITS:
        rows = []
        for name, k in want[split].items():
            take = []
            for r in pools[name]:
                key = _norm(r["query"])
                if len(take) == k:
                    break
                if key in seen:  # the same instruction in both sources stays in one split
                    continue
                seen.add(key)
                take.append(r)
            if len(take) < k:
                raise TooFewQueries(f"too few distinct {info['sources'][name]} queries outside "
                                    f"the judges' training data for the {split} split ({k} "
                                    f"wanted, {len(take)} left)")
            pools[name] = [r for r in pools[name] if r not in take]
            rows += take
        out[split] = sorted(rows, key=lambda r: _rank(r["id"]))
    for split, rows in out.items():
        leak = [r["id"] for r in rows if r["id"] in exclude_ids
                or _norm(r["query"]) in exclude_texts]
        assert not leak, f"{split} split holds judge-training queries: {leak}"
        info.setdefault("drawn", {})[split] = {
            c: sum(r["category"] == c for r in rows) for c in ("regular", "safety")}
    info["test_judge_training_overlap"] = 0
    return out, info


def write_queries(path: Path, rows: list[dict]) -> None:
    from icl_search.io import write_jsonl

    write_jsonl(path, rows)


def study_config(work: Path, args) -> Path:
    pools = REPO / "pools"
    systems = [pools / "system_prompts" / n for n in
               ("urial_style.txt", "concise.txt", "expert_careful.txt")]
    # One engine call per batch of trials (chunk = the whole search split): on CPU the decode
    # steps cost, not the batch width, so six trials x 24 queries go through together. The
    # study's name carries the settings, so a rerun with other settings never resumes a study
    # run under different ones.
    tag = hashlib.sha256(json.dumps([args.trials, args.search_queries, args.confirm_queries,
                                     args.safety_share, args.confirm_top, args.max_tokens,
                                     args.engine, args.judge, args.seed]).encode()).hexdigest()
    text = f"""# written by bench/alignment.py
name = "alignment-{tag[:8]}"
seed = {args.seed}
cache = "{work / 'cache.sqlite3'}"
[model]
engine = "{args.engine}"
max_model_len = 4096
[judge]
spec = "{args.judge}"
min_coverage = 0.5
audit = [{", ".join(f'"{a}"' for a in args.audit)}]
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
batch_trials = {min(6, args.trials)}
chunk_size = {args.search_queries}
storage = "sqlite:///{work / 'alignment.db'}"
"""
    path = work / "alignment.toml"
    path.write_text(text)
    return path


def answer_sets(engine, queries, bundle) -> tuple[dict[str, list], dict[str, float]]:
    """The test split answered three ways with the bundle's decoding (and seconds per way)."""
    from icl_search.generation import generate_answers
    from icl_search.pool import read_urial

    doc = read_urial(DATA / "urial" / "inst_1k.txt")
    params = bundle.sampling
    out, seconds = {}, {}
    for name, system, examples, template in (
            ("bundle", bundle.system, lambda q: bundle.select(q.query), bundle.template),
            ("urial_inst_1k", doc.system, doc.answered, None),
            ("zero_shot", "", [], None)):
        t0 = time.time()
        out[name] = generate_answers(engine, queries, system=system, examples=examples,
                                     params=params, template=template, batch_size=64)
        seconds[name] = round(time.time() - t0, 1)
        print(f"  {name}: {len(queries)} answers in {seconds[name]:.0f}s", flush=True)
    return out, seconds


def answer_stats(answers: list) -> dict:
    """Mean answer length in words (a length-paying judge favours long answers) and the share
    of answers the max_tokens limit stopped."""
    from icl_search.hygiene import HygieneCounts
    from icl_search.judge.result import count_words

    words = [count_words(a.answer or "") for a in answers]
    return {"mean_words": round(float(np.mean(words)), 1) if words else None,
            "length_stopped": round(sum(a.finish_reason == "length" for a in answers)
                                    / max(1, len(answers)), 3),
            "errors": sum(a.finish_reason == "error" for a in answers),
            "hygiene": HygieneCounts.of(a.hygiene for a in answers).to_dict()}


def judge_scores(judge, queries, answers) -> dict[str, float | None]:
    from icl_search.judge import JudgeItem

    items = [JudgeItem(q.id, q.query, a.answer, q.category, q.reference)
             for q, a in zip(queries, answers)]
    res = judge.score(items)
    return {q.id: j.overall for q, j in zip(queries, res.items)}


def win_rate(a: dict, b: dict) -> dict:
    from icl_search.study.confirm import mean_interval

    ids = [q for q in a if a[q] is not None and b.get(q) is not None]
    w = np.array([1.0 if a[q] > b[q] else 0.5 if a[q] == b[q] else 0.0 for q in ids])
    low, high = mean_interval(w) if len(w) else (None, None)
    return {"win_rate": float(w.mean()) if len(w) else None, "interval": [low, high],
            "n": len(w)}


PAIRS = (("bundle", "urial_inst_1k"), ("bundle", "zero_shot"), ("urial_inst_1k", "zero_shot"))
#: The issue's target for bundle vs inst_1k: +0.15 on the 1-5 scale or +10 win points, with
#: the 95% interval above 0 (above 0.5 for the win rate).
TARGET_GAIN, TARGET_WIN = 0.15, 0.10


def compare(scores: dict[str, dict]) -> dict:
    from icl_search.study.confirm import paired_gain

    out = {}
    for a, b in PAIRS:
        g = paired_gain(scores[a], scores[b], b)
        out[f"{a} vs {b}"] = {**g.report(), "win": win_rate(scores[a], scores[b])}
    return out


def target_met(comparison: dict) -> bool:
    iv, w = comparison["interval"], comparison["win"]
    by_gain = (comparison["mean"] is not None and comparison["mean"] >= TARGET_GAIN
               and iv is not None and iv[0] is not None and iv[0] > 0)
    by_win = (w["win_rate"] is not None and w["win_rate"] - 0.5 >= TARGET_WIN
              and w["interval"][0] is not None and w["interval"][0] > 0.5)
    return bool(by_gain or by_win)


def reward_dir(spec: str) -> Path | None:
    """The folder of a reward judge spec (`default`, `reward:default`, `reward:DIR`,
    `ablation`: the default recipe with seed=1 and no length covariate), prepared if needed;
    None for a judge that was not trained on the reference data."""
    from icl_search.judge.prepare import prepare_default
    from icl_search.judge.reward import Recipe

    if spec in ("default", "reward:default"):
        return prepare_default()
    if spec == "ablation":
        return prepare_default(recipe=Recipe(**ABLATION))
    if spec.startswith("reward:"):
        return Path(spec.removeprefix("reward:"))
    return None


def known_split(spec: str) -> tuple[Path | None, dict | None]:
    """(folder, manifest) of a reward judge without waiting for its training: a judge another
    process is training now (issue 13 trains the ablation) has no folder yet, and its manifest
    is stood in for by the split `split_groups` draws (it depends on the data only, not on the
    recipe); step 4 checks the real manifest against it. (None, None): not a reward judge."""
    from icl_search.judge.prepare import (
        data_manifest,
        is_complete,
        judge_key,
        judges_dir,
        load_reward_manifest,
        split_groups,
    )
    from icl_search.judge.reward import Recipe

    if spec in ("default", "reward:default", "ablation"):
        recipe = Recipe(**ABLATION) if spec == "ablation" else Recipe()
        folder = judges_dir() / f"reward-{judge_key(data_manifest(DATA), recipe)}"
        if not is_complete(folder):
            _, held_a, held_s = split_groups(DATA)
            return None, {"recipe": recipe.to_dict(), "split": {
                "held_out_alpaca_ids": sorted(g.id for g in held_a),
                "held_out_safety_ids": sorted(g.id for g in held_s)}, "pending": True}
    else:
        folder = reward_dir(spec)
        if folder is None:
            return None, None
    return folder, load_reward_manifest(folder)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # 6 trials = one engine batch: at 160 tokens a batch of 6 trials x 24 queries took ~30 min
    # on the shared 2 cores (load 9-18), so 12 trials did not fit the ~30-60 min budget.
    ap.add_argument("--trials", type=int, default=6, help="study trials (default 6: one batch)")
    ap.add_argument("--search-queries", type=int, default=24)
    ap.add_argument("--confirm-queries", type=int, default=24)
    ap.add_argument("--test-queries", type=int, default=40)
    ap.add_argument("--safety-share", type=float, default=0.25,
                    help="share of just-eval safety queries in each split")
    ap.add_argument("--confirm-top", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                    help=f"the study's max_tokens (default {DEFAULT_MAX_TOKENS}); the test "
                    "split uses the bundle's decoding")
    ap.add_argument("--engine", default="vllm:default")
    ap.add_argument("--judge", default="default", help="the study's judge spec")
    ap.add_argument("--audit", nargs="*", default=["refsim"],
                    help="the study's audit judges ([judge] audit); the first is also a "
                    "column on the test split (default: refsim)")
    ap.add_argument("--independent-judge", default="ablation",
                    help="another judge for the test split ('none' to skip); 'ablation' "
                    "(default) is the default judge's recipe with seed=1 and no length "
                    "covariate, trained on the same split")
    ap.add_argument("--extra-judge", default="logprob:vllm:default",
                    help="a third judge column ('none' to skip); default: Gemma logprob")
    ap.add_argument("--test", type=Path, help="a query file: run only steps 3-4 on it "
                    "(needs --bundle, or a study already run here)")
    ap.add_argument("--bundle", type=Path, help="an exported bundle: skip the study")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "alignment")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    # Everything imported up front: a long run must not pick up a half-edited module late.
    from icl_search.bundle import Bundle
    from icl_search.cache import Cache
    from icl_search.engines import CachedEngine, make_engine
    from icl_search.evalset import load_queries
    from icl_search.feedback.rules import RuleChecker, RuleItem
    from icl_search.io import write_json
    from icl_search.judge import make_judge
    from icl_search.judge.prepare import load_reward_manifest
    from icl_search.study import build_evaluator, load_config, open_study, run_study
    from icl_search.study.confirm import mean_interval, paired_gain  # noqa: F401
    from icl_search.study.export import export_bundle

    t_start = time.time()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    n = {"search": args.search_queries, "confirm": args.confirm_queries,
         "test": args.test_queries}
    judge_specs = {"study_judge": args.judge}
    if args.audit:
        judge_specs["audit_judge"] = args.audit[0]
    if args.independent_judge != "none":
        judge_specs["independent_judge"] = args.independent_judge
    if args.extra_judge != "none":
        judge_specs["gemma_logprob" if args.extra_judge == "logprob:vllm:default"
                    else "extra_judge"] = args.extra_judge
    print("reading the reward judges' held-out splits (they decide the queries) ...",
          flush=True)
    known = {name: known_split(spec) for name, spec in judge_specs.items()}
    dirs = {name: d for name, (d, _) in known.items()}
    manifests = {name: m for name, (_, m) in known.items() if m is not None}
    excl_ids, excl_texts = judge_training(list(manifests.values()))
    splits, split_info = draw_queries(n, args.safety_share, excl_ids, excl_texts)
    split_info["judges"] = {name: {"dir": str(dirs[name]) if dirs[name] else
                                   "being trained (split from split_groups)",
                                   "recipe": m["recipe"],
                                   "held_out": {k: len(v) for k, v in m["split"].items()
                                                if isinstance(v, list)}}
                            for name, m in manifests.items()}
    split_info["same_split"] = len({json.dumps([sorted(m["split"]["held_out_alpaca_ids"]),
                                                sorted(m["split"]["held_out_safety_ids"])])
                                    for m in manifests.values()}) <= 1
    for split, rows in splits.items():
        write_queries(work / f"{split}.jsonl", rows)
    test_file = args.test or work / "test.jsonl"
    bundle_path = args.bundle or work / "bundle.json"
    result: dict = {"load": os.getloadavg(), "cores": os.cpu_count(),
                    "splits": split_info if args.test is None else {"file": str(test_file)}}
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
        export_bundle(open_study(cfg), bundle_path)
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
    leaked = sorted(q.id for q in queries if q.id in excl_ids or _norm(q.query) in excl_texts)
    if args.test is None:  # the code's own check of what draw_queries promised
        assert not leaked, f"test split holds judge-training queries: {leaked}"
    else:  # a user's file is measured as given; how much of it the judges trained on is said
        result["splits"]["judge_training_overlap"] = {"n": len(leaked), "ids": leaked}
        if leaked:
            print(f"  note: {len(leaked)} of {len(queries)} test queries are judge-training "
                  "queries (same id or text); their scores flatter the judges", flush=True)
    print(f"[3/4] answer {len(queries)} test queries: bundle, URIAL inst_1k, zero-shot",
          flush=True)
    t0 = time.time()
    answers, gen_seconds = answer_sets(engine, queries, b)
    for name, ans in answers.items():  # for a blind review (`icl-search review`) and checks
        write_queries(work / f"answers-{name}.jsonl", [
            {"id": q.id, "query": q.query, "answer": a.answer, "category": q.category,
             "hygiene": a.hygiene.to_dict() if a.hygiene else None}
            for q, a in zip(queries, ans)])
    result["test_generation_seconds"] = round(time.time() - t0, 1)
    print("[4/4] judge", flush=True)
    raw = engine.engine if hasattr(engine, "engine") else engine
    judges = {"study_judge": judge}
    for name, spec in judge_specs.items():
        if name in manifests and dirs[name] is None:  # trained meanwhile (or now, waiting)
            print(f"  preparing the {name} ({spec}) ...", flush=True)
            dirs[name] = reward_dir(spec)
            real = load_reward_manifest(dirs[name])[0]["split"]
            used = manifests[name]["split"]
            same = all(sorted(real[k]) == sorted(used[k])
                       for k in ("held_out_alpaca_ids", "held_out_safety_ids"))
            rec = result["splits"].setdefault("judges", {}).setdefault(name, {})
            rec.update(dir=str(dirs[name]), manifest_split_matches=same)
            assert same, f"{dirs[name]}: its held-out split differs from the one the splits used"
        if name == "study_judge":
            continue
        shared = spec.endswith(":vllm:default") and args.engine == "vllm:default"
        judges[name] = make_judge(f"reward:{dirs[name]}" if dirs[name] else spec,
                                  cache=Cache(work / "cache.sqlite3"),
                                  engine=raw if shared else None)
    rules = RuleChecker()
    result["test"] = {"n": len(queries), "file": str(test_file),
                      "generation_seconds": gen_seconds,
                      "answers": {name: answer_stats(a) for name, a in answers.items()}}
    for jname, j in judges.items():
        t0 = time.time()
        scores = {name: judge_scores(j, queries, a) for name, a in answers.items()}
        comps = compare(scores)
        result["test"][jname] = {
            "spec": judge_specs[jname], "dir": str(dirs[jname]) if dirs[jname] else None,
            "means": {name: (float(np.mean([v for v in sc.values() if v is not None]))
                             if any(v is not None for v in sc.values()) else None)
                      for name, sc in scores.items()},
            "comparisons": comps, "target_met": target_met(comps["bundle vs urial_inst_1k"]),
            "seconds": round(time.time() - t0, 1)}
        print(f"  {jname}: {time.time() - t0:.0f}s", flush=True)
    result["test"]["rules_pass_rate"] = {
        name: rules.check([RuleItem(q.id, q.query, a.answer, q.category)
                           for q, a in zip(queries, ans)]).pass_rate
        for name, ans in answers.items()}
    others = [j for j in ("audit_judge", "independent_judge") if j in result["test"]]
    result["target"] = {
        "rule": f"bundle vs urial_inst_1k: gain >= +{TARGET_GAIN} with its 95% interval above "
                f"0, or win rate >= 0.5 + {TARGET_WIN} with its interval above 0.5, under the "
                f"study judge and {', '.join(others) or 'no other judge'}",
        "met": all(result["test"][j]["target_met"] for j in ("study_judge", *others))}
    # The settings actually used: the flags as resolved, plus the test split's decoding (the
    # bundle's, which is the study's only when the study ran here) and the split sizes.
    result["settings"] = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "study_ran": "study_seconds" in result,
        "test_decoding": {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in vars(b.sampling).items()},
        "split_sizes": {k: len(v) for k, v in splits.items()} if args.test is None
        else {"test": len(queries)},
        "judges": {k: (f"reward:{dirs[k]}" if dirs[k] else v) for k, v in judge_specs.items()}}
    result["seconds"] = round(time.time() - t_start, 1)
    result["load_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print_table(result, args.out)
    return 0


def print_table(result: dict, out: Path = RESULTS) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"test split, n={result['test']['n']}")
    for col in ("judge", "comparison", "gain (95% CI)", "p", "verdict", "win rate (95% CI)"):
        t.add_column(col)
    judges = [k for k in ("study_judge", "audit_judge", "independent_judge", "gemma_logprob",
                          "extra_judge") if k in result["test"]]
    for jname in judges:
        j = result["test"][jname]
        for comp, g in j["comparisons"].items():
            iv = g["interval"] or [None, None]
            w = g["win"]
            t.add_row(f"{jname}", comp, f"{_s(g['mean'])} ({_s(iv[0])} to {_s(iv[1])})",
                      _f(g["p_value"]), g.get("verdict", ""),
                      f"{_f(w['win_rate'])} ({_f(w['interval'][0])} to {_f(w['interval'][1])})")
    Console(width=170).print(t)
    m = Table(title="means per context (1-5) and answer lengths")
    ctx = list(result["test"]["answers"])
    m.add_column("")
    for c in ctx:
        m.add_column(c)
    for jname in judges:
        m.add_row(jname, *(_f(result["test"][jname]["means"][c]) for c in ctx))
    a = result["test"]["answers"]
    m.add_row("mean words", *(f"{a[c]['mean_words']}" for c in ctx))
    m.add_row("stopped by max_tokens", *(f"{a[c]['length_stopped']:.0%}" for c in ctx))
    m.add_row("rules pass rate", *(_f(result["test"]["rules_pass_rate"][c]) for c in ctx))
    for key in ("leaked", "loop", "unbalanced", "residual", "max_tokens"):
        m.add_row(f"hygiene: {key}", *(f"{a[c]['hygiene'][key]}/{a[c]['hygiene']['answers']}"
                                       for c in ctx))
    Console(width=170).print(m)
    print(f"target met: {result['target']['met']} ({result['target']['rule']})")
    print(f"total {result['seconds']:.0f}s at load {result['load'][0]:.1f} -> "
          f"{result['load_end'][0]:.1f}; wrote {out}")


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _s(x) -> str:
    return "-" if x is None else f"{x:+.3f}"


if __name__ == "__main__":
    sys.exit(main())
