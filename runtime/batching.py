"""Micro-batching: concurrent requests share one forward pass.

A worker takes the first waiting request, then keeps collecting until the batch
holds `max_batch` images or `max_wait_ms` has passed, runs the batch in a
single inference thread (off the event loop), and answers each request with
its own slice. If a batch fails, each request is run alone so that one bad
request cannot fail the others.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch


@dataclass
class Job:
    pixels: torch.Tensor  # (n, C, H, W) in [0, 1]
    top_k: int
    step: int | None
    future: asyncio.Future = field(default=None)


class MicroBatcher:
    def __init__(self, holder, metrics, max_batch: int, max_wait_ms: float):
        self.holder, self.metrics = holder, metrics
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m2kd-infer")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=False)

    async def submit(self, pixels: torch.Tensor, top_k: int, step: int | None):
        job = Job(pixels, top_k, step, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _collect(self) -> list[Job]:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        size, deadline = len(batch[0].pixels), loop.time() + self.max_wait
        while size < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                job = await asyncio.wait_for(self.queue.get(), remaining)
            except asyncio.TimeoutError:
                break
            batch.append(job)
            size += len(job.pixels)
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.metrics.batch_size.observe(sum(len(j.pixels) for j in batch))
            try:
                answers = await loop.run_in_executor(self.executor, self._run, batch)
            except Exception:  # isolate the failing request(s)
                answers = []
                for job in batch:
                    try:
                        answers.append(await loop.run_in_executor(self.executor, self._run,
                                                                  [job]))
                    except Exception as e:
                        answers.append([e])
                answers = [a[0] for a in answers]
            for job, answer in zip(batch, answers):
                if job.future.done():
                    continue
                if isinstance(answer, Exception):
                    job.future.set_exception(answer)
                else:
                    job.future.set_result(answer)

    def _run(self, batch: list[Job]) -> list[tuple]:
        """Jobs with the same (top_k, step) share a forward pass; one model for all."""
        model = self.holder.current  # taken once: a reload cannot change it mid-batch
        answers: list[tuple | None] = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(batch):
            groups.setdefault((job.top_k, job.step), []).append(i)
        for (top_k, step), members in groups.items():
            pixels = torch.cat([batch[i].pixels for i in members])
            predictions = model.predict(pixels, top_k, step)
            start = 0
            for i in members:
                n = len(batch[i].pixels)
                answers[i] = (predictions[start:start + n], model)
                start += n
        return answers
