"""What every benchmark script shares: the offline environment, the import path, the results
folder, loading a sibling script, and the machine line each results JSON records.

Import it first, before anything that imports vLLM or transformers (they read the
environment at import time):

    import _common  # noqa: F401  (sets the environment)
    from _common import RESULTS, machine

A script run as `python bench/NAME.py` has bench/ on `sys.path`, so `import _common` works
from any working directory.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

# Offline: no hub lookups, no LiteLLM cost-map download; vLLM's engine in-process on CPU, so
# a benchmark's timings do not include a second process's start-up.
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "LITELLM_LOCAL_MODEL_COST_MAP": "True", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
       "VLLM_LOGGING_LEVEL": "ERROR"}
for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
POOLS = ROOT / "pools"


def sibling(name: str) -> ModuleType:
    """Another script of bench/ as a module (bench/ is not a package), loaded once."""
    key = f"bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def load_avg() -> float:
    """The 1-minute load average, rounded: every figure says how loaded the cores were."""
    return round(os.getloadavg()[0], 2)


def machine(**extra: Any) -> dict[str, Any]:
    """The `machine` entry of a results JSON: cores, Python, platform, plus what the run adds
    (its load averages, thread counts)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), **extra}
