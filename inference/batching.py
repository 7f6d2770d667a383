"""Batched inference shared by all sessions of a server: the in-process ``Model``.

Sessions ``await model.predict(item)``; one collector task gathers what arrives within
``max_wait`` (up to ``max_batch`` items), runs ``predict(items) -> results`` once on a worker
thread, and hands each session its own result. The event loop only queues and resolves futures.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

PredictFn = Callable[[Sequence[Any]], Sequence[Any]]


class InferenceError(Exception):
    """A result the model could not give; the caller reports it (an ``error`` event) and carries on."""


class Overloaded(InferenceError):
    """More requests are waiting than the model's bounded queue holds; the caller reports it."""


class ModelUnavailable(InferenceError):
    """A remote model did not answer (its replica died, or the cluster is unreachable); later
    calls may succeed once the engine has replaced it."""


class Batcher:
    def __init__(self, predict: PredictFn, *, name: str, max_batch: int = 16, max_wait: float = 0.02,
                 max_pending: int = 256, metrics=None):
        self._predict_batch = predict
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.metrics = metrics
        self._queue: asyncio.Queue | None = None
        self._max_pending = max_pending
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread per model: torch/onnx already use every core inside one call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    async def predict(self, item: Any) -> Any:
        """The result for one item, computed in a batch with whatever other sessions sent."""
        loop = asyncio.get_running_loop()
        if self._task is None:  # started on first use, on the server's loop
            self._loop = loop
            self._queue = asyncio.Queue(self._max_pending)
            self._task = loop.create_task(self._collect(), name=f"batcher-{self.name}")
        elif self._loop is not loop:
            raise RuntimeError(f"model {self.name!r} belongs to another event loop (one registry per server)")
        future = loop.create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.name} is overloaded ({self._max_pending} requests waiting)") from None
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._predict_batch, [item for item, _ in batch])
            except Exception as exc:
                await self._isolate(loop, batch, exc)
                continue
            if self.metrics is not None:
                self.metrics.inference.labels(self.name, "batch").observe(time.perf_counter() - t0)
                self.metrics.batch_size.labels(self.name).observe(len(batch))
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)

    async def _isolate(self, loop, batch: list, exc: Exception) -> None:
        """The batch failed: run its items one by one, so an item that fails fails only its own
        caller and the others get their results (the collector carries on either way)."""
        if len(batch) == 1:
            batch[0][1].done() or batch[0][1].set_exception(exc)
            return
        for item, fut in batch:
            if fut.done():
                continue
            try:
                (result,) = await loop.run_in_executor(self._executor, self._predict_batch, [item])
            except Exception as item_exc:
                fut.done() or fut.set_exception(item_exc)
            else:
                fut.done() or fut.set_result(result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)
