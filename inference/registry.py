"""The models of one server: loaded once, shared by every session, closed with the server.

The seam between pipelines and models is small on purpose:

    models = await context.models.shared(MyPipeline)   # what MyPipeline.load_shared built, once
    result = await models.classifier.predict(item)       # a Model: batched across sessions

``load_shared(settings, registry)`` builds a pipeline's models and wraps each one that sessions
call with ``registry.model(name, predict)``; a pipeline never knows where that model runs. Today
every model runs in this process (a ``Batcher`` on its own worker thread); a remote engine plugs
in here, behind the same ``predict``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Protocol

from inference.batching import Batcher, PredictFn

log = logging.getLogger(__name__)


class Model(Protocol):
    name: str

    async def predict(self, item: Any) -> Any:
        """The result for one item (raises ``Overloaded`` when too many are waiting)."""


class ModelRegistry:
    def __init__(self, settings, metrics=None):
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()  # loading twice in parallel would double the memory
        self._shared: dict[tuple, Any] = {}
        self._models: list[Batcher] = []
        self._closables: list[Any] = []
        self._closed = False

    def model(self, name: str, predict: PredictFn, *, max_batch: int = 16, max_wait: float = 0.02,
              max_pending: int = 256, timeout: float | None = None) -> Model:
        """A model sessions call with ``await model.predict(item)``; ``predict(items) -> results``
        runs on the model's own worker thread, over batches that mix sessions. A call that takes
        longer than ``timeout`` seconds (default ``--model-timeout``) raises ``ModelTimeout``."""
        if timeout is None:
            timeout = getattr(self.settings, "model_timeout", None)
        model = Batcher(predict, name=name, max_batch=max_batch, max_wait=max_wait, max_pending=max_pending,
                        metrics=self.metrics, timeout=timeout)
        self._models.append(model)
        return model

    def keep(self, key: tuple, make: Callable[[], Any]) -> Any:
        """Server-wide state that is not a model (e.g. REST avatar sessions): made once; closed
        with the registry if it has a ``close()``."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = value = make()
                if hasattr(value, "close"):
                    self._closables.append(value)
            return self._shared[key]

    def load(self, cls) -> Any:
        """``cls.load_shared(settings, self)``, once per pipeline and ``shared_key``; blocking
        (call it on a worker thread, or use ``shared``)."""
        if self._closed:
            raise RuntimeError("the model registry is closed")
        return self.keep(("pipeline", cls.name, *cls.shared_key(self.settings)),
                         lambda: cls.load_shared(self.settings, self))

    async def shared(self, cls) -> Any:
        return await asyncio.to_thread(self.load, cls)

    async def close(self) -> None:
        """Stop every model's collector and worker thread and close what was kept."""
        self._closed = True
        await asyncio.gather(*(model.close() for model in self._models), return_exceptions=True)
        for value in self._closables:
            try:
                result = value.close()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("closing %r failed", value)
        self._models.clear()
        self._closables.clear()
        self._shared.clear()
