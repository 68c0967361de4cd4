"""Generation benchmark: batched vs one-at-a-time throughput, prefix caching on vs off for a
batch sharing a long URIAL prefix, and the share of `generate_answers` spent outside the engine.

Queries are the first ones of `pools/eval/dev.jsonl`; prompts are URIAL prompts rendered with
`pools/system_prompts/urial_style.txt`. All decoding is greedy with a fixed `max_tokens` and no
stop strings, so runs differ only in how the work reaches vLLM; tokens/s counts the tokens
actually generated (a model may still end early on EOS; the table shows the counts).

(a) batch vs single: N prompts (preamble + query) in one `generate` call vs the same N prompts
    in N calls. The prefix cache is reset before each side, so neither reuses the other's work.
(b) prefix caching: N prompts sharing a long prefix (the preamble + the study's baseline
    examples factual-001, advice-001, safety-001: 1,189 Gemma tokens), on an engine
    with prefix caching on vs a separate engine with it off (the first engine is deleted
    before the second is built). Two calls each: "cold" (the prefix is new to the engine) and
    "repeat" (a second batch of N other queries after the first, the situation of a study's
    later chunks). Each engine first answers one unrelated warm-up prompt.
(c) outside-engine share: `generate_answers` on the (b) batch and prefix with the (a)
    answer length (a realistic batch: long shared context, full answers), timed with
    `Timing`. Two shares are reported: the library's (`Timing.outside_share`: everything but
    the engine call) and a strict one (everything but the time inside `vllm.LLM.generate`, so
    a cache wrapper's lookups and writes count as outside). Runs: the bare engine, a
    `CachedEngine` on a new cache file (cold: every prompt misses and is written), and the same
    call again (warm: all hits, no model call; its absolute time is what matters).

Prints a table and writes `bench/results/generation.json` (`generation-default.json` for
`--model default`).

    .venv/bin/python bench/generation.py                    # tiny random Llama, ~1-2 min
    .venv/bin/python bench/generation.py --model default    # Gemma 3 270M base, ~6 min
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import tempfile
import time
from pathlib import Path

from _common import POOLS, RESULTS  # first: the offline environment and the import path

from icl_search.cache import Cache
from icl_search.engines import CachedEngine, SamplingParams
from icl_search.engines.vllm import VLLMEngine
from icl_search.evalset import load_queries
from icl_search.generation import Timing, generate_answers
from icl_search.io import write_json
from icl_search.pool import Pool
from icl_search.prompt import Template

SYSTEM = POOLS / "system_prompts" / "urial_style.txt"
POOL = POOLS / "default.jsonl"
EVAL = POOLS / "eval" / "dev.jsonl"
#: per model: context window, KV cache bound (enough for a whole batch of long prompts)
SETTINGS = {"tiny": {"max_model_len": 4096, "kv_cache_memory_bytes": 128 * 2**20},
            "default": {"max_model_len": 2048, "kv_cache_memory_bytes": 1024 * 2**20}}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def timed_generate(engine: VLLMEngine, prompts: list[str], params: SamplingParams) -> dict:
    t = time.perf_counter()
    outs = engine.generate(prompts, params)
    wall = time.perf_counter() - t
    toks = sum(c.completion_tokens for c in outs)
    return {"prompts": len(prompts), "wall_s": wall, "generated_tokens": toks,
            "prompt_tokens": sum(c.prompt_tokens for c in outs),
            "tokens_per_s": toks / wall, "length_finishes": sum(c.finish_reason == "length"
                                                                for c in outs),
            "texts": [c.text for c in outs]}


def build_engine(model: str, prefix_caching: bool) -> tuple[VLLMEngine, float]:
    t = time.perf_counter()
    eng = VLLMEngine(model, enable_prefix_caching=prefix_caching, **SETTINGS[MODEL_KIND])
    return eng, time.perf_counter() - t


def warm_up(engine: VLLMEngine, template: Template, system: str, params: SamplingParams) -> None:
    engine.generate([template.render(system, [], "Say hello.")], params.replace(max_tokens=4))
    engine.llm.reset_prefix_cache()


def bench_generate_answers(engine: VLLMEngine, wrapped, queries, system, shots, params,
                           n: int) -> dict:
    timing = Timing()
    inside0 = engine.stats.engine_seconds
    calls0 = engine.stats.calls
    answers = generate_answers(wrapped, queries, system=system, examples=shots, params=params,
                               batch_size=n, timing=timing)
    inside = engine.stats.engine_seconds - inside0
    return {"total_s": timing.total, "engine_call_s": timing.engine,
            "inside_vllm_s": inside, "outside_share": timing.outside_share,
            "strict_outside_share": (timing.total - inside) / timing.total,
            "model_calls": engine.stats.calls - calls0,
            "cached_answers": sum(a.cached for a in answers),
            "errors": sum(a.finish_reason == "error" for a in answers)}


def main() -> None:
    global MODEL_KIND
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny")
    ap.add_argument("--n", type=int, default=16, help="prompts per batch")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="tokens per answer in (a) and (c) (default: 128 tiny, 64 default)")
    ap.add_argument("--prefix-max-tokens", type=int, default=16,
                    help="tokens per answer in (b)")
    ap.add_argument("--examples", default="factual-001,advice-001,safety-001",
                    help="pool ids of the shared prefix's examples in (b) and (c)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    MODEL_KIND = args.model
    out_path = args.out or RESULTS / ("generation.json" if args.model == "tiny"
                                      else "generation-default.json")
    max_tokens = args.max_tokens or (128 if args.model == "tiny" else 64)
    n = args.n

    tmp = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    if args.model == "tiny":
        from icl_search.models import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny-llama"))
    else:
        from icl_search.models import resolve_model

        model = str(resolve_model("default"))
    template = Template()
    system = SYSTEM.read_text(encoding="utf-8")
    pool = Pool.load(POOL)
    queries = load_queries(EVAL)
    if len(queries) < 2 * n:
        raise SystemExit(f"--n {n}: {EVAL} has only {len(queries)} queries (need 2n)")
    batch1, batch2 = queries[:n], queries[n:2 * n]
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0, repetition_penalty=1.0,
                            stop=())
    short = greedy.replace(max_tokens=args.prefix_max_tokens)
    loads = {"start": load_avg()}
    res: dict = {"model": args.model, "model_path": model, "n": n, "max_tokens_ac": max_tokens,
                 "max_tokens_b": args.prefix_max_tokens,
                 "decoding": "greedy, repetition_penalty 1.0, no stop strings"}

    # -- engine with prefix caching on: (a), (b on), (c) -------------------------------------
    eng, load_s = build_engine(model, True)
    res["engine_load_s"] = {"prefix_on": load_s}
    warm_up(eng, template, system, greedy)

    prompts = [template.render(system, [], q.query) for q in batch1]
    eng.llm.reset_prefix_cache()
    batched = timed_generate(eng, prompts, greedy)
    eng.llm.reset_prefix_cache()
    singles = [timed_generate(eng, [p], greedy) for p in prompts]
    single = {"prompts": n, "wall_s": sum(s["wall_s"] for s in singles),
              "generated_tokens": sum(s["generated_tokens"] for s in singles),
              "length_finishes": sum(s["length_finishes"] for s in singles)}
    single["tokens_per_s"] = single["generated_tokens"] / single["wall_s"]
    same_text = sum(a == b["texts"][0] for a, b in zip(batched["texts"], singles))
    res["a_batch_vs_single"] = {
        "batch": {k: v for k, v in batched.items() if k != "texts"}, "single": single,
        "speedup": batched["tokens_per_s"] / single["tokens_per_s"],
        "identical_texts": same_text,
    }
    loads["after_a"] = load_avg()

    shots = [pool[i] for i in args.examples.split(",")]
    prefix_tokens = eng.count_tokens(template.render_context(system, shots))
    res["prefix"] = {"examples": [e.id for e in shots], "tokens": prefix_tokens}
    long1 = [template.render(system, shots, q.query) for q in batch1]
    long2 = [template.render(system, shots, q.query) for q in batch2]
    eng.llm.reset_prefix_cache()
    on = {"cold": timed_generate(eng, long1, short), "repeat": timed_generate(eng, long2, short)}
    loads["after_b_on"] = load_avg()

    eng.llm.reset_prefix_cache()
    c_runs = {"engine": bench_generate_answers(eng, eng, batch1, system, shots, greedy, n)}
    cache = Cache(tmp / "cache.sqlite3")
    cached = CachedEngine(eng, cache)
    eng.llm.reset_prefix_cache()
    c_runs["cached_cold"] = bench_generate_answers(eng, cached, batch1, system, shots, greedy, n)
    c_runs["cached_warm"] = bench_generate_answers(eng, cached, batch1, system, shots, greedy, n)
    cache.close()
    res["c_outside_engine"] = c_runs
    loads["after_c"] = load_avg()

    del eng, cached
    gc.collect()

    # -- a separate engine with prefix caching off: (b off) -----------------------------------
    eng, load_s = build_engine(model, False)
    res["engine_load_s"]["prefix_off"] = load_s
    warm_up(eng, template, system, greedy)
    off = {"cold": timed_generate(eng, long1, short), "repeat": timed_generate(eng, long2, short)}
    loads["after_b_off"] = load_avg()
    del eng
    gc.collect()

    res["b_prefix_caching"] = {}
    for phase in ("cold", "repeat"):
        res["b_prefix_caching"][phase] = {
            "on": {k: v for k, v in on[phase].items() if k != "texts"},
            "off": {k: v for k, v in off[phase].items() if k != "texts"},
            "speedup": off[phase]["wall_s"] / on[phase]["wall_s"],
            "identical_texts": sum(a == b for a, b in zip(on[phase]["texts"],
                                                           off[phase]["texts"])),
        }
    res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "platform": platform.platform(), "load_avg_1m": loads,
                      "note": "shared machine: other jobs ran concurrently; one run each"}
    write_json(out_path, res)

    a = res["a_batch_vs_single"]
    print(f"\ngeneration benchmark: model={args.model}, n={n}, greedy, "
          f"load avg {loads['start']} -> {loads['after_b_off']} on {os.cpu_count()} CPUs\n")
    print(f"(a) {'mode':<28}{'wall s':>9}{'gen tok':>9}{'tok/s':>9}")
    for name, r in ((f"batch of {n}", a["batch"]), ("one at a time", a["single"])):
        print(f"    {name:<28}{r['wall_s']:>9.2f}{r['generated_tokens']:>9}"
              f"{r['tokens_per_s']:>9.1f}")
    print(f"    speed-up {a['speedup']:.2f}x (max_tokens {max_tokens}; identical texts "
          f"{a['identical_texts']}/{n})\n")
    print(f"(b) shared prefix {prefix_tokens} tokens ({len(shots)} examples), "
          f"max_tokens {args.prefix_max_tokens}")
    print(f"    {'call':<10}{'on s':>9}{'off s':>9}{'off/on':>9}{'same text':>11}")
    for phase, r in res["b_prefix_caching"].items():
        print(f"    {phase:<10}{r['on']['wall_s']:>9.2f}{r['off']['wall_s']:>9.2f}"
              f"{r['speedup']:>8.2f}x{r['identical_texts']:>8}/{n}")
    print(f"\n(c) generate_answers, batch of {n} with the (b) prefix, max_tokens {max_tokens}")
    print(f"    {'run':<14}{'total s':>9}{'in vLLM s':>11}{'outside':>9}{'strict':>9}"
          f"{'model calls':>13}")
    for name, r in c_runs.items():
        print(f"    {name:<14}{r['total_s']:>9.3f}{r['inside_vllm_s']:>11.3f}"
              f"{r['outside_share']:>9.2%}{r['strict_outside_share']:>9.2%}"
              f"{r['model_calls']:>13}")
    print(f"\nwrote {out_path}")


MODEL_KIND = "tiny"

if __name__ == "__main__":
    main()
