"""Batched inference shared by all sessions of a server: the in-process ``Model``.

Sessions ``await model.predict(item)``; one collector task gathers what arrives within
``max_wait`` (up to ``max_batch`` items), runs ``predict(items) -> results`` once on a worker
thread, and hands each session its own result. The event loop only queues and resolves futures.

A call that runs past the model's ``timeout`` fails its batch with ``ModelTimeout``; the worker
thread it hangs is left to finish on its own and the model carries on with a fresh one, so one
hung call does not hold up later ones (at most ``MAX_HUNG`` threads are left so; while that many
still hang, calls fail at once).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

PredictFn = Callable[[Sequence[Any]], Sequence[Any]]


MAX_HUNG = 2  # worker threads of one model left running past the deadline, at most


class InferenceError(Exception):
    """A result the model could not give; the caller reports it (an ``error`` event) and carries on."""


class Overloaded(InferenceError):
    """More requests are waiting than the model's bounded queue holds; the caller reports it."""


class ModelUnavailable(InferenceError):
    """A remote model did not answer (its replica died, or the cluster is unreachable); later
    calls may succeed once the engine has replaced it."""


class ModelTimeout(Overloaded):
    """The model did not answer within its deadline; callers that skip a result when the model
    is overloaded skip this one the same way."""


class Batcher:
    def __init__(self, predict: PredictFn, *, name: str, max_batch: int = 16, max_wait: float = 0.02,
                 max_pending: int = 256, metrics=None, timeout: float | None = None):
        self._predict_batch = predict
        self.timeout = timeout or None  # seconds one call may take (None or 0: no deadline)
        self._hung: list[Future] = []  # calls past the deadline still running on their threads
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
        self._hung = [f for f in self._hung if not f.done()]
        if len(self._hung) >= MAX_HUNG:
            raise ModelTimeout(f"{self.name} is not answering ({len(self._hung)} calls hung past "
                               f"{self.timeout:g} s)")
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
                results = await self._call([item for item, _ in batch])
            except ModelTimeout as exc:  # running each item again would hang as long again
                for _, fut in batch:
                    fut.done() or fut.set_exception(exc)
                continue
            except Exception as exc:
                await self._isolate(batch, exc)
                continue
            if self.metrics is not None:
                self.metrics.inference.labels(self.name, "batch").observe(time.perf_counter() - t0)
                self.metrics.batch_size.labels(self.name).observe(len(batch))
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)

    async def _call(self, items: list) -> Sequence[Any]:
        """``predict(items)`` on the worker thread, within the deadline."""
        call = self._executor.submit(self._predict_batch, items)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(call), self.timeout)
        except asyncio.TimeoutError:
            # The thread cannot be stopped: leave it to finish, and use a fresh one from now on.
            self._hung.append(call)
            self._executor.shutdown(wait=False)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{self.name}")
            raise ModelTimeout(f"{self.name} did not answer within {self.timeout:g} s") from None

    async def _isolate(self, batch: list, exc: Exception) -> None:
        """The batch failed: run its items one by one, so an item that fails fails only its own
        caller and the others get their results (the collector carries on either way)."""
        if len(batch) == 1:
            batch[0][1].done() or batch[0][1].set_exception(exc)
            return
        for item, fut in batch:
            if fut.done():
                continue
            try:
                (result,) = await self._call([item])
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
