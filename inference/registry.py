"""The models of one server: loaded once, shared by every session, closed with the server.

The seam between pipelines and models is small on purpose:

    models = await context.models.shared(MyPipeline)   # what MyPipeline.load_shared built, once
    result = await models.classifier.predict(item)       # a Model: batched across sessions

``load_shared(settings, registry)`` builds a pipeline's models and wraps each one that sessions
call with ``registry.model(name, predict)``; a pipeline never knows where that model runs. By
default every model runs in this process (a ``Batcher`` on its own worker thread). A model given
as a ``ModelSpec`` (``registry.model(name, spec=ModelSpec.of("pkg.mod:factory", **settings))``)
can also run in a Ray Serve deployment shared by many media servers (``--inference ray``,
inference/remote.py), behind the same ``predict``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Protocol

from inference.batching import Batcher, PredictFn
from inference.spec import ModelSpec

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
        self._cluster = None  # inference.remote.RayCluster, connected on first remote model
        self._cluster_lock = threading.Lock()  # apart: models are made while self._lock is held

    def model(self, name: str, predict: PredictFn | None = None, *, spec: ModelSpec | None = None,
              prepare: Callable[[Any], Any] | None = None, max_batch: int = 16, max_wait: float = 0.02,
              max_pending: int = 256, timeout: float | None = None) -> Model:
        """A model sessions call with ``await model.predict(item)``; ``predict(items) -> results``
        runs on the model's own worker thread, over batches that mix sessions.

        With ``spec`` (and no ``predict``) the model is built here from the spec, or, when this
        server sends ``name`` to Ray (``--inference ray``, ``--remote-models``), in a replica of its
        Serve deployment. ``prepare(item)``, if given, turns what a session passes into what the
        model takes (e.g. a video frame into an array), on a worker thread, before the batch."""
        if spec is not None and self.is_remote(name):
            from inference.remote import RayModel
            model = RayModel(name, spec, self.cluster(), prepare=prepare, max_batch=max_batch,
                             max_wait=max_wait, max_pending=max_pending, metrics=self.metrics)
        else:
            if predict is None:
                predict = spec.predictor()
            if prepare is not None:
                predict = _prepared(predict, prepare)
            if timeout is None:
                timeout = getattr(self.settings, "model_timeout", None)
            model = Batcher(predict, name=name, max_batch=max_batch, max_wait=max_wait, max_pending=max_pending,
                            metrics=self.metrics, timeout=timeout)
        self._models.append(model)
        return model

    def is_remote(self, name: str) -> bool:
        """Whether the model ``name`` (when it has a spec) is served by Ray rather than this process."""
        s = self.settings
        if getattr(s, "inference", "local") != "ray":
            return False
        return not s.remote_models or "all" in s.remote_models or name in s.remote_models

    def cluster(self):
        with self._cluster_lock:
            if self._cluster is None:
                from inference.remote import RayCluster
                self._cluster = RayCluster(self.settings)
            return self._cluster

    def describe(self) -> dict:
        """Where the models run, for ``/health``."""
        if getattr(self.settings, "inference", "local") != "ray":
            return {"mode": "local", "remote": [], "cluster": None}
        return {"mode": "ray", "remote": sorted(m.name for m in self._models if not isinstance(m, Batcher)),
                "requested": self.settings.remote_models or ["all"],
                "cluster": self._cluster.describe() if self._cluster is not None else None}

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
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.close)
            self._cluster = None


def _prepared(predict: PredictFn, prepare: Callable[[Any], Any]) -> PredictFn:
    def predict_prepared(items):
        return predict([prepare(item) for item in items])
    return predict_prepared
