"""The prep batcher (`icl_search.serve.batch.MicroBatcher`) and `serve`'s engine arguments.

The batcher runs here on a real thread pool; the executor records each batch as it is handed
over, so "started at once" is checked by what happened, never by a clock.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from typer.testing import CliRunner

from icl_search.cli import app
from icl_search.cli.serve import parse_engine_args, serve_engine
from icl_search.serve.batch import MicroBatcher


class RecordingPool(ThreadPoolExecutor):
    """One worker thread, like the server's prep thread; remembers every batch handed to it."""

    def __init__(self):
        super().__init__(max_workers=1)
        self.batches: list[list[str]] = []

    def submit(self, fn, /, *args, **kwargs):
        self.batches.append(list(args[0]))
        return super().submit(fn, *args, **kwargs)


async def _ticks(n: int = 5) -> None:
    for _ in range(n):  # let the loop run what is ready, without any timer
        await asyncio.sleep(0)


def test_a_lone_job_starts_at_once_and_jobs_arriving_meanwhile_share_the_next_batch():
    gate = threading.Event()

    def work(jobs: list[str]) -> list[str]:
        if jobs == ["a"]:
            gate.wait()  # "a" is being embedded while b, c, d arrive
        return [j.upper() for j in jobs]

    async def main() -> None:
        pool = RecordingPool()
        batcher = MicroBatcher(work, pool)
        first = asyncio.create_task(batcher.submit("a"))
        await _ticks()
        # Handed over alone within a few loop turns: nothing waits for company.
        assert pool.batches == [["a"]]
        rest = [asyncio.create_task(batcher.submit(j)) for j in "bcd"]
        await _ticks()
        assert pool.batches == [["a"]]  # b, c, d wait while "a" is in the prep thread
        gate.set()
        assert await first == "A"
        assert await asyncio.gather(*rest) == ["B", "C", "D"]
        assert pool.batches == [["a"], ["b", "c", "d"]]
        assert batcher.stats == {"batches": 2, "jobs": 4, "largest": 3}
        # Idle again: the next lone job is again a batch of its own.
        assert await batcher.submit("e") == "E"
        assert pool.batches[-1] == ["e"]
        pool.shutdown()

    asyncio.run(main())


def test_one_bad_job_fails_alone_and_a_failing_batch_fails_all_of_its_jobs():
    def work(jobs: list[str]) -> list[object]:
        if "boom" in jobs:
            raise RuntimeError("the embedder broke")
        return [ValueError(f"bad {j}") if j.startswith("x") else j for j in jobs]

    async def main() -> None:
        pool = RecordingPool()
        batcher = MicroBatcher(work, pool)
        out = await asyncio.gather(*(batcher.submit(j) for j in ("ok", "x1", "fine")),
                                   return_exceptions=True)
        assert out[0] == "ok" and out[2] == "fine"
        assert isinstance(out[1], ValueError) and str(out[1]) == "bad x1"
        assert pool.batches == [["ok", "x1", "fine"]]  # submitted together: one batch
        out = await asyncio.gather(*(batcher.submit(j) for j in ("boom", "other")),
                                   return_exceptions=True)
        assert all(isinstance(e, RuntimeError) and "embedder broke" in str(e) for e in out)
        assert await batcher.submit("after") == "after"  # still serving
        pool.shutdown()

    asyncio.run(main())


def test_a_caller_that_left_before_its_batch_started_is_skipped():
    gate = threading.Event()

    def work(jobs: list[str]) -> list[str]:
        if jobs == ["a"]:
            gate.wait()
        return jobs

    async def main() -> None:
        pool = RecordingPool()
        batcher = MicroBatcher(work, pool)
        first = asyncio.create_task(batcher.submit("a"))
        await _ticks()
        gone = asyncio.create_task(batcher.submit("gone"))
        kept = asyncio.create_task(batcher.submit("kept"))
        await _ticks()
        gone.cancel()  # the client disconnected while waiting
        await _ticks()
        gate.set()
        assert await first == "a" and await kept == "kept"
        assert pool.batches == [["a"], ["kept"]]
        pool.shutdown()

    asyncio.run(main())


def test_max_batch_splits_a_crowd():
    async def main() -> None:
        pool = RecordingPool()
        batcher = MicroBatcher(lambda jobs: jobs, pool, max_batch=2)
        assert await asyncio.gather(*(batcher.submit(str(i)) for i in range(5))) == \
            [str(i) for i in range(5)]
        assert [len(b) for b in pool.batches] == [2, 2, 1]
        pool.shutdown()

    asyncio.run(main())
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda jobs: jobs, ThreadPoolExecutor(1), max_batch=0)


# -- serve's engine arguments -----------------------------------------------------------------
def test_engine_args_are_read_as_json_else_text_and_reach_the_engine(tiny_model_dir):
    args = parse_engine_args(["max_num_seqs=4", "enable-chunked-prefill=false",
                              "--quantization=fp8", "long_prefill_token_threshold=0"])
    assert args == {"max_num_seqs": 4, "enable_chunked_prefill": False,
                    "quantization": "fp8", "long_prefill_token_threshold": 0}
    engine = serve_engine(str(tiny_model_dir), max_model_len=512, enforce_eager=True,
                          gpu_memory_utilization=0.3,
                          engine_args={"max_num_seqs": 4, "enable_chunked_prefill": False})
    got = engine.engine_args
    assert got["max_num_seqs"] == 4 and got["enable_chunked_prefill"] is False
    assert got["max_model_len"] == 512 and got["enforce_eager"] is True
    if engine.device == "cuda":  # only a GPU engine takes a memory share
        assert got["gpu_memory_utilization"] == 0.3


@pytest.mark.parametrize("flag, message", [
    ("max_num_seq=4", "max_num_seq: not a vLLM engine argument; did you mean 'max_num_seqs'?"),
    ("max_model_len=512", "--engine-arg max_model_len: set it with --max-model-len instead"),
    ("gpu_memory_utilization=0.5", "set it with --gpu-memory-utilization instead"),
    ("max_num_seqs", "expected NAME=VALUE"),
])
def test_bad_engine_args_end_in_one_message_before_anything_loads(tmp_path, flag, message):
    res = CliRunner().invoke(app, ["serve", str(tmp_path / "none.json"), "--engine-arg", flag])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output
