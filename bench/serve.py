"""Serving benchmark: N concurrent clients against `icl-search serve` on loopback, with vLLM's
continuous batching vs the same load one request at a time (`--max-concurrency 1`).

A fixed bundle (the `urial_style` preamble + pool examples factual-001, advice-001,
safety-001) is served by two `icl-search serve` processes side by side, one per mode. The load
(R queries from `pools/eval/dev.jsonl`) is split into rounds that alternate between the two
servers, so both modes meet the same machine load (the 2-core machine is shared; vLLM's CPU
kernels slow down sharply when other processes take its cores). In each round, N client
threads (the official `openai` client, streaming chat completions) take requests from one
shared list until it is empty. Decoding is greedy
with a fixed `max_tokens` and `ignore_eos`, so every request does the same work in both modes
(a stop string may still end an answer early; the token counts are in the table). Each server
first answers 2 warm-up requests that are not counted.

Figures: throughput (requests/s and generated tokens/s over the wall time of the whole load),
latency p50/p95 (request sent -> last chunk), time to first token p50/p95 (-> first content
chunk) and errors. Prints a table and writes `bench/results/serve.json`
(`serve-default.json` for `--model default`).

    .venv/bin/python bench/serve.py                    # tiny random Llama, ~3 min
    .venv/bin/python bench/serve.py --model default    # Gemma 3 270M base, ~6 min
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import RESULTS, ROOT  # first: the offline environment and the import path

import httpx
import openai

from icl_search.bundle import Bundle
from icl_search.engines.base import SamplingParams
from icl_search.evalset import load_queries
from icl_search.io import write_json
from icl_search.pool import Pool

SHOTS = ["factual-001", "advice-001", "safety-001"]
KEY = "bench-key"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def start_server(bundle: Path, model: str, port: int, serial: bool, max_model_len: int,
                 log: Path) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-c", "from icl_search.cli import app; app()", "serve", str(bundle),
           "--model", model, "--port", str(port), "--api-key", KEY, "--max-model-len",
           str(max_model_len), "--served-model-name", "bench", "--log-level", "warning"]
    if serial:
        cmd += ["--max-concurrency", "1"]
    t0 = time.perf_counter()
    fh = log.open("w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def one_request(client: openai.OpenAI, query: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft = None
    text = ""
    usage = None
    stream = client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": query}], max_tokens=max_tokens,
        temperature=0.0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - t0
            text += chunk.choices[0].delta.content
    latency = time.perf_counter() - t0
    return {"latency": latency, "ttft": latency if ttft is None else ttft,
            "completion_tokens": usage.completion_tokens if usage else 0}


def run_load(base_url: str, queries: list[str], clients: int, max_tokens: int) -> dict:
    """N client threads drain `queries`; raw per-request records plus the wall time."""
    todo = list(queries)
    lock = threading.Lock()
    done: list[dict] = []
    errors: list[str] = []

    def worker() -> None:
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600)
        while True:
            with lock:
                if not todo:
                    return
                q = todo.pop(0)
            try:
                r = one_request(client, q, max_tokens)
                with lock:
                    done.append(r)
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
    return figures([d for r in rounds for d in r["done"]], [e for r in rounds for e in r["errors"]],
                   sum(r["wall"] for r in rounds), requests)


def figures(done: list[dict], errors: list, wall: float, requests: int) -> dict:
    """Throughput, latency and time-to-first-token figures of finished requests (also what
    bench/serve_vs_vllm.py reports for each server)."""
    lat = [r["latency"] for r in done]
    ttft = [r["ttft"] for r in done]
    tokens = sum(r["completion_tokens"] for r in done)
    return {
        "requests": requests, "ok": len(done), "errors": len(errors),
        "error_samples": errors[:3], "wall_s": round(wall, 3),
        "requests_per_s": round(len(done) / wall, 3), "tokens_per_s": round(tokens / wall, 1),
        "completion_tokens": tokens,
        "latency_p50_s": round(pct(lat, 50), 3), "latency_p95_s": round(pct(lat, 95), 3),
        "ttft_p50_s": round(pct(ttft, 50), 3), "ttft_p95_s": round(pct(ttft, 95), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="tokens per answer (default: 128 tiny, 48 default)")
    ap.add_argument("--rounds", type=int, default=4,
                    help="alternate the modes in this many rounds of requests/rounds each")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    max_tokens = args.max_tokens or (128 if args.model == "tiny" else 48)
    out_path = args.out or RESULTS / ("serve.json" if args.model == "tiny"
                                      else "serve-default.json")

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.model == "tiny":
        from icl_search.models import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny-llama"))
        max_model_len = 4096  # its 512-token vocabulary makes the URIAL prompt ~3,300 tokens
    else:
        from icl_search.models import resolve_model

        model = str(resolve_model("default"))
        max_model_len = 2048
    pool = Pool.load(ROOT / "pools" / "default.jsonl")
    system = (ROOT / "pools" / "system_prompts" / "urial_style.txt").read_text(encoding="utf-8")
    bundle = Bundle.create(model=model, system=system, examples=[pool[i] for i in SHOTS],
                           sampling=SamplingParams(max_tokens=max_tokens))
    bundle_path = bundle.save(tmp / "bench.json")
    dev = [q.query for q in load_queries(ROOT / "pools" / "eval" / "dev.jsonl")]
    queries = [dev[i % len(dev)] for i in range(args.requests)]

    # Both servers run side by side and the load alternates between them in rounds, so a
    # change in the machine's load (it is shared) falls on both modes alike.
    modes = {"batched": False, "one at a time": True}
    servers: dict[str, tuple[subprocess.Popen, str, float]] = {}
    rounds: dict[str, list[dict]] = {m: [] for m in modes}
    loads: list[float] = []
    try:
        for mode, serial in modes.items():
            port = free_port()
            proc, start_s = start_server(bundle_path, model, port, serial, max_model_len,
                                         tmp / f"server-{port}.log")
            servers[mode] = (proc, f"http://127.0.0.1:{port}/v1", start_s)
            run_load(servers[mode][1], dev[-2:], 2, max_tokens)  # warm-up, not counted
        per_round = -(-len(queries) // args.rounds)
        for i in range(args.rounds):
            chunk = queries[i * per_round:(i + 1) * per_round]
            order = list(modes) if i % 2 == 0 else list(reversed(modes))
            for mode in order:
                loads.append(os.getloadavg()[0])
                rounds[mode].append(run_load(servers[mode][1], chunk, args.clients, max_tokens))
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
        for proc, _, _ in servers.values():
            proc.wait()
    results = {m: {**summarise(rounds[m], len(queries)),
                   "server_start_s": round(servers[m][2], 1)} for m in modes}

    b, s = results["batched"], results["one at a time"]
    res = {
        "benchmark": "serve", "model": args.model, "model_path": model,
        "clients": args.clients, "requests": args.requests, "rounds": args.rounds,
        "max_tokens": max_tokens,
        "load_avg_1m": {"min": round(min(loads), 2), "max": round(max(loads), 2)},
        "decoding": "greedy, ignore_eos, streaming chat completions",
        "bundle": f"fixed: urial_style + {', '.join(SHOTS)}",
        "prompt_tokens": None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "modes": results,
        "speedup_throughput": round(b["requests_per_s"] / s["requests_per_s"], 2)
        if s["requests_per_s"] else None,
    }
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    res["prompt_tokens"] = len(tok.encode(bundle.render(queries[0])))
    write_json(out_path, res)

    print(f"\nserve benchmark: model={args.model}, {args.clients} clients, {args.requests} "
          f"requests, max_tokens {max_tokens} (greedy, ignore_eos), prompt ~"
          f"{res['prompt_tokens']} tokens")
    head = (f"{'mode':<15}{'ok':>5}{'err':>5}{'wall s':>9}{'req/s':>8}{'tok/s':>8}"
            f"{'p50 s':>8}{'p95 s':>8}{'ttft50':>8}{'ttft95':>8}")
    print(head)
    for mode, r in results.items():
        print(f"{mode:<15}{r['ok']:>5}{r['errors']:>5}{r['wall_s']:>9.2f}"
              f"{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>8.0f}{r['latency_p50_s']:>8.2f}"
              f"{r['latency_p95_s']:>8.2f}{r['ttft_p50_s']:>8.2f}{r['ttft_p95_s']:>8.2f}")
    print(f"throughput speed-up of batching: {res['speedup_throughput']}x "
          f"(1-min load average during the runs: {res['load_avg_1m']['min']}-"
          f"{res['load_avg_1m']['max']} on {os.cpu_count()} cores)")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
