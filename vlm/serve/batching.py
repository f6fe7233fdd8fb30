"""Micro-batching: encode requests from concurrent clients share one forward pass.

A model call on a batch of 16 costs little more than on a batch of 1, so requests that arrive while the
model is busy (or within `max_wait_ms` of each other) are run together, on one worker thread that owns
the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    inputs: int = 0


class MicroBatcher:
    """`await submit(inputs)` -> the rows of `fn(all inputs of the batch)` that belong to `inputs`."""

    def __init__(self, fn: Callable[[list], np.ndarray], executor: concurrent.futures.Executor,
                 max_batch: int = 32, max_wait_ms: float = 2.0):
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, inputs: list) -> np.ndarray:
        if self._queue is None:  # created lazily, inside the server's event loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((inputs, future))
        return await future

    async def _collect(self) -> list[tuple[list, asyncio.Future]]:
        jobs = [await self._queue.get()]
        self._drain(jobs)
        if self.max_wait > 0 and self._size(jobs) < self.max_batch:
            await asyncio.sleep(self.max_wait)  # give clients that are about to send a chance to join
            self._drain(jobs)
        return jobs

    def _drain(self, jobs: list) -> None:
        while self._size(jobs) < self.max_batch and not self._queue.empty():
            jobs.append(self._queue.get_nowait())

    @staticmethod
    def _size(jobs: list) -> int:
        return sum(len(inputs) for inputs, _ in jobs)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [job for job in await self._collect() if not job[1].cancelled()]  # clients gone
            if not jobs:
                continue
            inputs = [x for job_inputs, _ in jobs for x in job_inputs]
            try:
                outputs = await loop.run_in_executor(self.executor, self.fn, inputs)
            except Exception as e:  # an internal error fails this batch's requests, not the worker
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.stats.requests += len(jobs)
            self.stats.batches += 1
            self.stats.inputs += len(inputs)
            start = 0
            for job_inputs, future in jobs:
                if not future.done():
                    future.set_result(outputs[start : start + len(job_inputs)])
                start += len(job_inputs)
