"""The micro-batcher in front of the server's prep thread: requests that arrive together are
prepared together, so their queries are embedded in one encode call and searched in one
FAISS batch.

There is no timer. An idle batcher hands a request to the prep thread at once, alone; the
requests that arrive while that batch is being worked on wait, and all of them (up to
`max_batch`) go together into the next call. A lone request is therefore never held back
waiting for company, and under load the embedder's cost per query falls with the batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

J = TypeVar("J")
T = TypeVar("T")

#: Jobs per batch at most: beyond this an encode call gains nothing and its latency grows.
MAX_BATCH = 64


class MicroBatcher(Generic[J, T]):
    """`await submit(job)` -> that job's result from `work(batch)`, run on `executor`.

    `work` takes the jobs of one batch and returns one result per job, in order; a result
    that is an exception is raised to that job's caller only (one bad request does not fail
    the others). An exception raised by `work` itself fails the whole batch. A caller that
    gives up (a client that disconnected) is skipped if its batch has not started.

    `stats`: batches run, jobs prepared, and the largest batch so far.
    """

    def __init__(self, work: Callable[[list[J]], Sequence[T | BaseException]],
                 executor: Executor, *, max_batch: int = MAX_BATCH):
        if max_batch < 1:
            raise ValueError(f"max_batch: expected an integer >= 1, got {max_batch}")
        self._work, self._executor, self.max_batch = work, executor, max_batch
        self._waiting: deque[tuple[J, asyncio.Future]] = deque()
        self._worker: asyncio.Task | None = None
        self.stats = {"batches": 0, "jobs": 0, "largest": 0}

    async def submit(self, job: J) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._waiting.append((job, fut))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await fut

    def _next_batch(self) -> list[tuple[J, asyncio.Future]]:
        batch: list[tuple[J, asyncio.Future]] = []
        while self._waiting and len(batch) < self.max_batch:
            job, fut = self._waiting.popleft()
            if not fut.done():  # its caller went away while it waited
                batch.append((job, fut))
        return batch

    async def _drain(self) -> None:
        # Runs while jobs are waiting; it ends (with no await between the last check and the
        # end) as soon as none is, so the next `submit` starts a new one.
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch = self._next_batch()
            if not batch:
                continue
            self.stats["batches"] += 1
            self.stats["jobs"] += len(batch)
            self.stats["largest"] = max(self.stats["largest"], len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self._work,
                                                     [job for job, _ in batch])
            except asyncio.CancelledError:  # the server is stopping
                for _, fut in batch:
                    fut.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                results = [exc] * len(batch)
            if len(results) != len(batch):
                results = [RuntimeError(f"batch work returned {len(results)} results for "
                                        f"{len(batch)} jobs")] * len(batch)
            for (_, fut), result in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)


__all__ = ["MAX_BATCH", "MicroBatcher"]
