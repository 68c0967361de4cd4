"""The study's generation path against raw `vllm.LLM.generate` on the same prompts.

A study batch is `--trials` trials (the baseline, then seeded random draws through the real
search space, as `bench/study.py` draws them: 3 preambles, k in [0, 3], fixed / kNN / MMR /
hybrid over `pools/default.jsonl`) on the first `--queries` queries of `pools/eval/dev.jsonl`.

* study path: `Evaluator.evaluate` on the whole batch as `icl-search study run` builds it
  (`build_evaluator`: selection, URIAL rendering, token budgeting with the target tokenizer,
  a `CachedEngine` over the engine, one engine call, cleaning), with a new, empty cache file
  each round (every prompt is a miss and is written: the cost of the cache, not its savings)
  and the judge left out (a judge that scores nothing; its time is subtracted anyway);
* raw: the prompts that round's study batch rendered, in one `vllm.LLM.generate` call on the
  same `LLM` object with the same decoding (greedy, the template's stop strings).

The prefix cache is reset before each side, so neither reuses the other's prefill; the two
sides alternate over `--rounds` rounds (order flipped each round) so both meet the same
machine load. Generated tokens/s = completion tokens / wall time of the side; the two sides'
completion-token totals are reported (greedy: they should match). Target: the study path
>= 0.90 of raw generated tok/s on the default model. Set-up (engine load, FAISS index, eval
query embeddings) is common to both and not timed. Prints a table and writes
`bench/results/study-vs-raw.json` (`study-vs-raw-default.json` for `--model default`).

    .venv/bin/python bench/study_vs_raw.py --model default   # Gemma 3 270M base
    .venv/bin/python bench/study_vs_raw.py                   # tiny random Llama, quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import RESULTS, load_avg, machine, sibling  # first: offline env, import path

from icl_search.engines.vllm import VLLMEngine
from icl_search.io import write_json
from icl_search.judge import ItemJudgement, JudgeResult
from icl_search.pool import Pool
from icl_search.study import build_evaluator, load_config

_sb = sibling("study")  # its config writer and trial draws


class NoJudge:
    """The judge is outside this measurement: it scores nothing and takes no time."""

    id = "none"

    def score(self, items):
        return JudgeResult([ItemJudgement(it.id, it.category, {}) for it in items], self.id)


def raw_side(engine: VLLMEngine, prompts: list[str], params) -> dict:
    from vllm import SamplingParams as VSP

    sp = VSP(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
             repetition_penalty=params.repetition_penalty, stop=list(params.stop) or None)
    engine.llm.reset_prefix_cache()
    t = time.perf_counter()
    outs = engine.llm.generate(prompts, sp, use_tqdm=False)
    wall = time.perf_counter() - t
    return {"wall_s": wall, "prompts": len(prompts),
            "completion_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
            "prompt_tokens": sum(len(o.prompt_token_ids or ()) for o in outs)}


def study_side(cfg, engine: VLLMEngine, specs, positions, cache_path: Path) -> tuple[dict, list]:
    cfg = cfg.model_copy(update={"cache": cache_path})
    evaluator = build_evaluator(cfg, engine=engine, judge=NoJudge(), say=lambda m: None)
    engine.llm.reset_prefix_cache()
    t = time.perf_counter()
    per_spec = evaluator.evaluate(specs, positions)
    wall = time.perf_counter() - t - evaluator.stats.judge_seconds
    recs = [r for rows in per_spec for r in rows if r.prompt]
    return ({"wall_s": wall, "prompts": len(recs),
             "completion_tokens": sum(r.completion_tokens for r in recs),
             "engine_s": evaluator.stats.gen_seconds,
             "judge_s_subtracted": evaluator.stats.judge_seconds,
             "cache_misses": evaluator.stats.generated - evaluator.stats.gen_cached},
            [r.prompt for r in recs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny")
    ap.add_argument("--trials", type=int, default=4, help="trials in the batch")
    ap.add_argument("--queries", type=int, default=16, help="eval queries per trial")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="answer length (default: 64 tiny, 48 default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.max_tokens = args.max_tokens or (64 if args.model == "tiny" else 48)
    args.batch_trials = args.trials
    out_path = args.out or RESULTS / ("study-vs-raw.json" if args.model == "tiny"
                                      else "study-vs-raw-default.json")

    tmp = Path(tempfile.mkdtemp(prefix="bench-study-raw-"))
    if args.model == "tiny":
        from icl_search.models import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny-generator", score_prior=0.0, seed=1))
    else:
        from icl_search.models import resolve_model

        model = str(resolve_model("default"))
    cfg = load_config(_sb.write_config(tmp, model, model, args))
    pool = Pool.load(cfg.path(cfg.pool.path))
    specs, _ = _sb.draw_specs(cfg, pool.ids, args.trials, 0, args.seed)
    positions = list(range(args.queries))
    engine = _sb.build_engine(model, args.model, True)

    # Warm-up (not counted): the first calls touch cold code paths and memory.
    _, warm_prompts = study_side(cfg, engine, specs[:1], positions[:2], tmp / "warm.sqlite3")
    d = cfg.decoding
    from icl_search.engines import SamplingParams
    from icl_search.prompt import Template

    template = Template.from_dict(cfg.template)
    params = SamplingParams(max_tokens=d.max_tokens, temperature=d.temperature, top_p=d.top_p,
                            repetition_penalty=d.repetition_penalty, stop=template.stop)
    raw_side(engine, warm_prompts, params)

    rounds = []
    for i in range(args.rounds):
        row: dict = {"load_avg_1m": load_avg()}
        # The raw side needs the study's prompts: on even rounds the study goes first and
        # hands them over; on odd rounds the raw side reuses the previous round's (the
        # prompts are the same every round: same specs, queries and pool).
        if i % 2 == 0:
            row["study"], prompts = study_side(cfg, engine, specs, positions,
                                               tmp / f"cache-{i}.sqlite3")
            row["raw"] = raw_side(engine, prompts, params)
        else:
            row["raw"] = raw_side(engine, prompts, params)
            row["study"], again = study_side(cfg, engine, specs, positions,
                                             tmp / f"cache-{i}.sqlite3")
            assert again == prompts, "the study rendered different prompts between rounds"
        for side in ("study", "raw"):
            row[side]["tokens_per_s"] = row[side]["completion_tokens"] / row[side]["wall_s"]
        row["ratio"] = row["study"]["tokens_per_s"] / row["raw"]["tokens_per_s"]
        rounds.append(row)
        print(f"round {i + 1}: study {row['study']['tokens_per_s']:.1f} tok/s, raw "
              f"{row['raw']['tokens_per_s']:.1f} tok/s, ratio {row['ratio']:.3f} "
              f"(load {row['load_avg_1m']})", flush=True)

    def total(side: str, key: str) -> float:
        return sum(r[side][key] for r in rounds)

    agg = {side: {"wall_s": total(side, "wall_s"),
                  "completion_tokens": int(total(side, "completion_tokens")),
                  "tokens_per_s": total(side, "completion_tokens") / total(side, "wall_s")}
           for side in ("study", "raw")}
    res = {
        "benchmark": "study-vs-raw", "model": args.model, "model_path": model,
        "trials": len(specs), "queries": args.queries, "prompts_per_round": len(prompts),
        "max_tokens": args.max_tokens, "rounds": args.rounds,
        "decoding": "greedy, repetition_penalty 1.1, the template's stop strings",
        "prompt_tokens_mean": rounds[0]["raw"]["prompt_tokens"] / len(prompts),
        "specs": [_sb.describe(s) for s in specs],
        "rounds_detail": rounds, "total": agg,
        "ratio_tokens_per_s": agg["study"]["tokens_per_s"] / agg["raw"]["tokens_per_s"],
        "ratio_median_of_rounds": statistics.median(r["ratio"] for r in rounds),
        "completion_tokens_equal": agg["study"]["completion_tokens"]
        == agg["raw"]["completion_tokens"],
        "machine": machine(),
    }
    res["target_at_least_0.90"] = res["ratio_tokens_per_s"] >= 0.90
    write_json(out_path, res)

    print(f"\nstudy path vs raw LLM.generate: model={args.model}, {len(specs)} trials x "
          f"{args.queries} queries = {len(prompts)} prompts (~{res['prompt_tokens_mean']:.0f} "
          f"prompt tokens), max_tokens {args.max_tokens}, {args.rounds} alternating rounds")
    print(f"{'side':<8}{'wall s':>9}{'gen tokens':>12}{'tok/s':>9}")
    for side, a in agg.items():
        print(f"{side:<8}{a['wall_s']:>9.2f}{a['completion_tokens']:>12}{a['tokens_per_s']:>9.1f}")
    print(f"study / raw: {res['ratio_tokens_per_s']:.3f} (median of rounds "
          f"{res['ratio_median_of_rounds']:.3f}; target >= 0.90); completion tokens equal: "
          f"{res['completion_tokens_equal']}")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
