"""Serving against the limit: `icl-search serve` with per-query retrieval vs vLLM's own
OpenAI server (`python -m vllm.entrypoints.openai.api_server`) on the same model and load.

The bundle is a retrieval bundle (the `urial_style` preamble, kNN k=3 over
`pools/default.jsonl`, all-MiniLM-L6-v2): every request is embedded, searched and rendered on
the request path. The icl-search server starts with an empty embedding cache (its own
`ICL_SEARCH_HOME`), and the queries are distinct just-eval instructions (read from
`../shared/data/just-eval/` at run time; `pools/eval/dev.jsonl` when absent), so no query
embedding is a cache hit. vLLM's server gets the prompts icl-search renders, already rendered
(`Bundle.prepare` with the same token budget the server applies), through `/v1/completions`
with the same stop strings; icl-search gets the bare query through its `/v1/completions`.
Both servers get the same engine flags (`engine_flags`: the context window, seed 0, prefix
caching, and on CPU eager mode and a 512 MiB KV cache, on GPU 0.4 of its memory each), through
`icl-search serve`'s own flags and `--engine-arg`, as `vllm serve` flags. Every request's prompt token count must agree
between the two servers: that is checked and reported (`prompt_tokens_agree`).

Load: N client threads (the official `openai` client, streaming) drain the requests; the
requests are split into rounds that alternate between the two servers (both stay up side by
side), so a change in the shared machine's load falls on both alike. Decoding is greedy with a
fixed `max_tokens` and `ignore_eos`, so both do the same work (a stop string may still end an
answer early; token counts are reported). Each server answers 2 uncounted warm-up requests.

Figures per server: requests/s and generated tok/s over the wall time of the whole load,
latency p50/p95 (request sent -> last chunk), time to first token p50/p95, errors; and the
ratios icl-search / vLLM. Also the CPU time each server spent on its rounds (`cpu_s`: user +
system seconds of the server process and of its children, vLLM's engine core included, read
before and after each of its rounds), split into the front end (HTTP, retrieval, tokenising)
and the engine: on a shared machine the wall-clock ratio moves with the other jobs' load, the
CPU seconds per request much less. Targets: throughput >= 0.95 of vLLM's, p50 latency within +10%.
`--torch-arm` starts a third server side by side, `icl-search serve` with its query embedder
on PyTorch (`ICL_SEARCH_EMBED_BACKEND=torch`) instead of onnxruntime, in the same rotating
rounds: what the onnx backend buys, on the same load. Each round runs the same requests on
every server back to back, so the per-round throughput ratios (median and range, in the
JSON) show how much of the whole-run ratio is the machine.
Prints a table and writes `bench/results/serve-vs-vllm.json` (`serve-vs-vllm-default.json`
for `--model default`).

    .venv/bin/python bench/serve_vs_vllm.py                    # tiny random Llama, ~3 min
    .venv/bin/python bench/serve_vs_vllm.py --model default    # Gemma 3 270M base
    .venv/bin/python bench/serve_vs_vllm.py --requests 512 --rounds 16 --torch-arm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import RESULTS, ROOT, sibling  # first: the offline environment and the import path

import httpx
import openai
import psutil

from icl_search.bundle import Bundle
from icl_search.engines.base import SamplingParams
from icl_search.engines.vllm import DEFAULT_CPU_KV_CACHE_BYTES
from icl_search.evalset import load_queries
from icl_search.index import Embedder, EmbeddingCache, PoolIndex
from icl_search.io import write_json
from icl_search.pool import Pool
from icl_search.prompt import Budget

_sb = sibling("serve")  # its server start-up, load and summary helpers
free_port, pct, KEY = _sb.free_port, _sb.pct, _sb.KEY

POOL = ROOT / "pools" / "default.jsonl"
SYSTEM = ROOT / "pools" / "system_prompts" / "urial_style.txt"
JUST_EVAL = ROOT.parent / "shared" / "data" / "just-eval" / "instructions.dev.jsonl"
#: per model: context window and answer length
#: the optional third server: icl-search with its query embedder on PyTorch
TORCH_ARM = "icl-search-torch"
SETTINGS = {"tiny": {"max_model_len": 4096, "max_tokens": 128},
            "default": {"max_model_len": 2048, "max_tokens": 48}}


def queries_for(n: int, max_chars: int) -> list[str]:
    """`n` distinct queries: just-eval instructions when present, else the dev eval set."""
    texts: list[str] = []
    if JUST_EVAL.is_file():
        with JUST_EVAL.open(encoding="utf-8") as fh:
            texts = [json.loads(line)["instruction"] for line in fh if line.strip()]
    if not texts:
        texts = [q.query for q in load_queries(ROOT / "pools" / "eval" / "dev.jsonl")]
    texts = [t for t in dict.fromkeys(texts) if len(t) <= max_chars]
    return texts[:n]


def wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def engine_flags(max_model_len: int) -> list[str]:
    """The engine flags both servers get (vLLM's spelling; `icl-search serve` has the same
    flags, and takes the rest as `--engine-arg`)."""
    from icl_search.engines.vllm import _has_gpu

    flags = ["--max-model-len", str(max_model_len), "--seed", "0", "--enable-prefix-caching"]
    if not _has_gpu():
        return flags + ["--enforce-eager", "--kv-cache-memory-bytes",
                        str(DEFAULT_CPU_KV_CACHE_BYTES)]
    return flags + ["--gpu-memory-utilization", "0.4"]  # two servers share the GPU


def as_serve_flags(flags: list[str]) -> list[str]:
    """vLLM flags -> `icl-search serve` flags: its own where it has one, else --engine-arg."""
    own = {"--max-model-len", "--enforce-eager", "--kv-cache-memory-bytes",
           "--gpu-memory-utilization"}
    out: list[str] = []
    i = 0
    while i < len(flags):
        flag = flags[i]
        has_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        value = flags[i + 1] if has_value else "true"
        if flag in own:
            out += [flag] + ([value] if has_value else [])
        else:
            out += ["--engine-arg", f"{flag[2:].replace('-', '_')}={value}"]
        i += 2 if has_value else 1
    return out


def start_icl(bundle: Path, model: str, port: int, max_model_len: int, home: Path,
              log: Path, backend: str | None = None) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-c", "from icl_search.cli import app; app()", "serve", str(bundle),
           "--model", model, "--port", str(port), "--api-key", KEY,
           *as_serve_flags(engine_flags(max_model_len)),
           "--served-model-name", "bench", "--log-level", "warning"]
    env = {**os.environ, "ICL_SEARCH_HOME": str(home)}  # an empty embedding cache
    if backend:
        env["ICL_SEARCH_EMBED_BACKEND"] = backend
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    wait_healthy(proc, f"http://127.0.0.1:{port}/health", log)
    return proc, time.perf_counter() - t0


def start_vllm(model: str, port: int, max_model_len: int, log: Path
               ) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--host", "127.0.0.1", "--port", str(port), "--api-key", KEY,
           "--served-model-name", "bench", *engine_flags(max_model_len),
           "--disable-log-stats", "--uvicorn-log-level", "warning"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_healthy(proc, f"http://127.0.0.1:{port}/health", log)
    return proc, time.perf_counter() - t0


def cpu_seconds(proc: subprocess.Popen) -> dict[str, float]:
    """User + system CPU seconds so far of a server process (`front`) and its children
    (`engine`: vLLM's engine core and helpers)."""
    def used(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.NoSuchProcess:
            return 0.0
    root = psutil.Process(proc.pid)
    return {"front": used(root), "engine": sum(used(c) for c in root.children(recursive=True))}


def one_request(client: openai.OpenAI, prompt: str, body: dict) -> dict:
    t0 = time.perf_counter()
    ttft = None
    usage = None
    stream = client.completions.create(model="bench", prompt=prompt, stream=True,
                                       stream_options={"include_usage": True}, **body)
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].text and ttft is None:
            ttft = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    return {"latency": latency, "ttft": latency if ttft is None else ttft,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "prompt_tokens": usage.prompt_tokens if usage else None}


def run_load(base_url: str, jobs: list[tuple[int, str]], clients: int, body: dict) -> dict:
    """N client threads drain `jobs` ((request number, prompt)); records keyed by number."""
    todo = list(jobs)
    lock = threading.Lock()
    done: dict[int, dict] = {}
    errors: list[str] = []

    def worker() -> None:
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600)
        while True:
            with lock:
                if not todo:
                    return
                i, prompt = todo.pop(0)
            try:
                r = one_request(client, prompt, body)
                with lock:
                    done[i] = r
            except Exception as exc:  # noqa: BLE001 - counted, not fatal: the figure is the error count
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - t0, "done": done, "errors": errors}


def summarise(rounds: list[dict], requests: int) -> dict:
    cpu = {k: sum(r["cpu"][k] for r in rounds) for k in ("front", "engine")}
    done = [d for r in rounds for d in r["done"].values()]
    out = _sb.figures(done, [e for r in rounds for e in r["errors"]],
                      sum(r["wall"] for r in rounds), requests)
    out["cpu_s"] = {"front": round(cpu["front"], 2), "engine": round(cpu["engine"], 2),
                    "total": round(cpu["front"] + cpu["engine"], 2)}
    out["cpu_s_per_request"] = round((cpu["front"] + cpu["engine"]) / max(1, len(done)), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="tokens per answer (default: 128 tiny, 48 default)")
    ap.add_argument("--rounds", type=int, default=4,
                    help="alternate the servers in this many rounds of requests/rounds each")
    ap.add_argument("--k", type=int, default=3, help="examples retrieved per query")
    ap.add_argument("--max-query-chars", type=int, default=300)
    ap.add_argument("--fixed", action="store_true",
                    help="serve a fixed bundle (the k first pool examples) instead: no retrieval "
                         "on the request path, to separate its cost from the server's")
    ap.add_argument("--torch-arm", action="store_true",
                    help="a third server side by side: icl-search serve with the query "
                         "embedder on PyTorch (ICL_SEARCH_EMBED_BACKEND=torch) instead of "
                         "onnxruntime, to measure what the onnx backend buys")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    settings = SETTINGS[args.model]
    max_tokens = args.max_tokens or settings["max_tokens"]
    max_model_len = settings["max_model_len"]
    out_path = args.out or RESULTS / ("serve-vs-vllm.json" if args.model == "tiny"
                                      else "serve-vs-vllm-default.json")

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-vllm-"))
    if args.model == "tiny":
        from icl_search.models import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny-llama"))
    else:
        from icl_search.models import resolve_model

        model = str(resolve_model("default"))

    # The retrieval bundle and its index (built here with a throw-away embedding cache, so
    # the server's own cache, in its own ICL_SEARCH_HOME, starts empty).
    pool = Pool.load(POOL)
    index_dir = tmp / "default.index"
    PoolIndex.build(pool, Embedder(cache=EmbeddingCache(tmp / "build-emb.sqlite3"))
                    ).save(index_dir)
    sampling = SamplingParams(max_tokens=max_tokens)
    bundle_path = tmp / "bench.json"
    context = ({"examples": pool.examples[:args.k]} if args.fixed else
               {"selection": {"strategy": "knn", "k": args.k}, "pool_path": POOL,
                "index_dir": index_dir})
    bundle = Bundle.create(model=model, system=SYSTEM.read_text(encoding="utf-8"),
                           sampling=sampling, bundle_path=bundle_path, **context)
    bundle_path = bundle.save(bundle_path)
    bundle = Bundle.load(bundle_path)
    queries = queries_for(args.requests + 2, args.max_query_chars)
    warm, queries = queries[:2], queries[2:]
    if len(queries) < args.requests:
        raise SystemExit(f"only {len(queries)} distinct queries of <= {args.max_query_chars} "
                         "characters are available")

    # What vLLM's server is sent: the prompt icl-search renders for the query, with the
    # budget the server applies (the target tokenizer, the same context window).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    budget = Budget(lambda text: len(tok.encode(text)), max_model_len)
    t = time.perf_counter()
    rendered = {q: bundle.prepare(q, budget=budget, max_tokens=max_tokens).prompt
                for q in warm + queries}
    render_s = time.perf_counter() - t
    stops = list(dict.fromkeys(list(bundle.sampling.stop) + list(bundle.template.stop)))
    common = {"max_tokens": max_tokens, "temperature": 0.0,
              "extra_body": {"ignore_eos": True,
                             "repetition_penalty": bundle.sampling.repetition_penalty}}
    bodies = {"icl-search": common,
              "vllm": {**common, "stop": stops}}
    prompts = {"icl-search": {i: q for i, q in enumerate(queries)},
               "vllm": {i: rendered[q] for i, q in enumerate(queries)}}
    if args.torch_arm:
        bodies[TORCH_ARM] = common
        prompts[TORCH_ARM] = prompts["icl-search"]

    servers: dict[str, tuple[subprocess.Popen, str, float]] = {}
    rounds: dict[str, list[dict]] = {m: [] for m in bodies}
    loads: list[float] = []
    timeline: list[dict] = []  # each round in the order run: which server, wall, CPU, load
    try:
        for name, body in bodies.items():
            port = free_port()
            log = tmp / f"{name}-{port}.log"
            if name == "vllm":
                proc, start_s = start_vllm(model, port, max_model_len, log)
            else:  # each icl-search server its own home: an empty embedding cache each
                proc, start_s = start_icl(bundle_path, model, port, max_model_len,
                                          tmp / f"home-{name}", log,
                                          "torch" if name == TORCH_ARM else None)
            servers[name] = (proc, f"http://127.0.0.1:{port}/v1", start_s)
            warm_prompts = warm if name != "vllm" else [rendered[q] for q in warm]
            run_load(servers[name][1], list(enumerate(warm_prompts)), 2, body)
        per_round = -(-args.requests // args.rounds)
        for i in range(args.rounds):
            ids = list(range(i * per_round, min(args.requests, (i + 1) * per_round)))
            names = list(bodies)  # the order rotates: each server goes first in turn
            order = (names if i % 2 == 0 else names[::-1]) if len(names) == 2 else \
                names[i % len(names):] + names[:i % len(names)]
            for name in order:
                loads.append(os.getloadavg()[0])
                cpu0 = cpu_seconds(servers[name][0])
                rounds[name].append(run_load(servers[name][1],
                                             [(j, prompts[name][j]) for j in ids],
                                             args.clients, bodies[name]))
                cpu1 = cpu_seconds(servers[name][0])
                rounds[name][-1]["cpu"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
                timeline.append({"round": i, "server": name,
                                 "wall_s": round(rounds[name][-1]["wall"], 2),
                                 "cpu_s": {k: round(v, 2) for k, v in
                                           rounds[name][-1]["cpu"].items()},
                                 "load_1m": round(loads[-1], 2)})
        # How the icl-search server's prep batcher grouped the requests (warm-up included).
        prep = httpx.get(servers["icl-search"][1].removesuffix("/v1") + "/health",
                         timeout=30).json().get("prep")
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
        for proc, _, _ in servers.values():
            proc.wait()

    results = {n: {**summarise(rounds[n], args.requests),
                   "server_start_s": round(servers[n][2], 1)} for n in bodies}
    per = {n: {j: r for rd in rounds[n] for j, r in rd["done"].items()} for n in bodies}
    both = sorted(set(per["icl-search"]) & set(per["vllm"]))
    prompt_agree = sum(per["icl-search"][j]["prompt_tokens"] == per["vllm"][j]["prompt_tokens"]
                       for j in both)
    tokens_agree = sum(per["icl-search"][j]["completion_tokens"]
                       == per["vllm"][j]["completion_tokens"] for j in both)
    ours, ref = results["icl-search"], results["vllm"]

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    def per_round(name: str) -> dict:
        """Throughput ratio name / vLLM of each round (the same requests, run back to back):
        its median and range say how much of the whole-run ratio is the machine."""
        xs = sorted(b["wall"] / a["wall"] for a, b in zip(rounds[name], rounds["vllm"]))
        return {"median": round(statistics.median(xs), 3), "min": round(xs[0], 3),
                "max": round(xs[-1], 3), "rounds": len(xs)}

    res = {
        "benchmark": "serve-vs-vllm", "model": args.model, "model_path": model,
        "clients": args.clients, "requests": args.requests, "rounds": args.rounds,
        "max_tokens": max_tokens, "max_model_len": max_model_len,
        "bundle": (f"fixed: urial_style + the first {args.k} pool examples" if args.fixed else
                   f"retrieval: urial_style + kNN k={args.k} over pools/default.jsonl"),
        "queries": "distinct just-eval instructions" if JUST_EVAL.is_file() else "dev eval set",
        "decoding": "greedy, ignore_eos, streaming /v1/completions, the template's stop strings",
        "render_ms_per_query_in_bench": round(render_s / len(rendered) * 1e3, 2),
        "prompt_tokens_mean": round(sum(per["vllm"][j]["prompt_tokens"] or 0 for j in both)
                                    / max(1, len(both)), 1),
        "prompt_tokens_agree": f"{prompt_agree}/{len(both)}",
        "completion_tokens_agree": f"{tokens_agree}/{len(both)}",
        "icl_prep_batches": prep,
        "load_avg_1m": {"min": round(min(loads), 2), "max": round(max(loads), 2)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "servers": results,
        "rounds_run": timeline,
        "ratios_icl_over_vllm": {
            "requests_per_s": ratio(ours["requests_per_s"], ref["requests_per_s"]),
            "tokens_per_s": ratio(ours["tokens_per_s"], ref["tokens_per_s"]),
            "latency_p50": ratio(ours["latency_p50_s"], ref["latency_p50_s"]),
            "latency_p95": ratio(ours["latency_p95_s"], ref["latency_p95_s"]),
            "ttft_p50": ratio(ours["ttft_p50_s"], ref["ttft_p50_s"]),
            "cpu_s_per_request": ratio(ours["cpu_s_per_request"], ref["cpu_s_per_request"]),
            "cpu_s_front": ratio(ours["cpu_s"]["front"], ref["cpu_s"]["front"]),
            "cpu_s_engine": ratio(ours["cpu_s"]["engine"], ref["cpu_s"]["engine"]),
            "throughput_per_round": per_round("icl-search"),
        },
    }
    if args.torch_arm:
        t = results[TORCH_ARM]
        res["ratios_torch_arm_over_vllm"] = {
            "requests_per_s": ratio(t["requests_per_s"], ref["requests_per_s"]),
            "latency_p50": ratio(t["latency_p50_s"], ref["latency_p50_s"]),
            "cpu_s_front": ratio(t["cpu_s"]["front"], ref["cpu_s"]["front"]),
            "throughput_per_round": per_round(TORCH_ARM),
        }
    r = res["ratios_icl_over_vllm"]
    res["targets"] = {"throughput_at_least_0.95": (r["requests_per_s"] or 0) >= 0.95,
                      "p50_within_10pct": (r["latency_p50"] or 99) <= 1.10}
    write_json(out_path, res)

    print(f"\nserving vs vLLM's server: model={args.model}, {args.clients} clients, "
          f"{args.requests} requests in {args.rounds} alternating rounds, max_tokens "
          f"{max_tokens} (greedy, ignore_eos), prompt ~{res['prompt_tokens_mean']:.0f} tokens")
    print(f"{'server':<17}{'ok':>5}{'err':>5}{'wall s':>9}{'req/s':>8}{'tok/s':>8}"
          f"{'p50 s':>8}{'p95 s':>8}{'ttft50':>8}{'ttft95':>8}{'cpu front':>10}{'cpu eng':>9}")
    for name, x in results.items():
        print(f"{name:<17}{x['ok']:>5}{x['errors']:>5}{x['wall_s']:>9.2f}"
              f"{x['requests_per_s']:>8.2f}{x['tokens_per_s']:>8.0f}{x['latency_p50_s']:>8.2f}"
              f"{x['latency_p95_s']:>8.2f}{x['ttft_p50_s']:>8.2f}{x['ttft_p95_s']:>8.2f}"
              f"{x['cpu_s']['front']:>10.1f}{x['cpu_s']['engine']:>9.1f}")
    print(f"icl-search / vLLM: throughput {r['requests_per_s']} (target >= 0.95), p50 latency "
          f"{r['latency_p50']} (target <= 1.10), TTFT p50 {r['ttft_p50']}, CPU s per request "
          f"{r['cpu_s_per_request']}; prompt tokens agree "
          f"{res['prompt_tokens_agree']}, completion tokens {res['completion_tokens_agree']}; "
          f"icl-search prep batches {prep}; "
          f"load {res['load_avg_1m']['min']}-{res['load_avg_1m']['max']} on {os.cpu_count()} "
          f"cores")
    pr = r["throughput_per_round"]
    print(f"per round (same requests back to back): throughput ratio median {pr['median']}, "
          f"range {pr['min']}-{pr['max']} over {pr['rounds']} rounds")
    if args.torch_arm:
        tr = res["ratios_torch_arm_over_vllm"]
        print(f"{TORCH_ARM} / vLLM: throughput {tr['requests_per_s']} (per round median "
              f"{tr['throughput_per_round']['median']}), p50 latency {tr['latency_p50']}, "
              f"front-end CPU {tr['cpu_s_front']}")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
