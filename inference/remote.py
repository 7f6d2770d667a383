"""Models served by Ray Serve, shared by every media server of a cluster (``--inference ray``).

Each remote model is one Serve application, named after the model and its spec's digest (the same
settings give the same name on every media server): one ``ModelReplica`` deployment that builds
the model from its ``ModelSpec`` and batches with ``@serve.batch``, so one batch mixes the
requests of every session of every media server. Replicas reserve ``num_cpus`` (or a ``num_gpus``
fraction) and Serve scales them on ongoing requests. A media server that finds the application
missing deploys it; ``python -m server.serve_apps deploy`` does it ahead of time.

``RayModel`` is the client side, the same ``Model`` a pipeline gets in-process: ``await
model.predict(item)``. A call whose replica dies raises ``ModelUnavailable`` (the pipeline emits an
``error`` event for that result); Serve replaces the replica and later calls succeed.

What stays in the media server, close to the media: silero VAD (32 ms chunks, state per session),
the pitch backends (a few ms of numpy), the avatar renderer (tied to the video clock) — a network
round trip per chunk or frame would cost more than the model.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from inference.batching import ModelUnavailable, Overloaded
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

NAMESPACE = "mms"  # the Ray namespace of every media server and of `python -m server.serve_apps`
CALL_TIMEOUT = 60.0  # seconds a call may wait for a replica (one that is starting, loading its model)


def _deployment():
    """The Serve deployment class, defined on first use so that ``import ray`` stays optional."""
    from ray import serve

    @serve.deployment(max_ongoing_requests=256, health_check_period_s=2, health_check_timeout_s=10)
    class ModelReplica:
        """One replica of a model: built from its spec, batching requests from every caller."""

        def __init__(self, spec: ModelSpec, max_batch: int, max_wait: float):
            self.spec = spec
            self.predict = spec.predictor()
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="replica")  # the loop stays free
            self.max_batch, self.max_wait = max_batch, max_wait
            self.batch.set_max_batch_size(max_batch)
            self.batch.set_batch_wait_timeout_s(max_wait)
            self.batches = 0
            self.items = 0
            self.mixed = 0  # batches that held requests from more than one media server
            self.sizes: Counter = Counter()
            self.callers: Counter = Counter()
            self.model_seconds = 0.0  # in the model, summed over batches
            self.model_item_seconds = 0.0  # in the model, summed over requests
            self.queue_seconds = 0.0  # from a request's arrival to its batch's start, summed over requests
            self.waiting: dict[int, float] = {}  # requests received, not yet answered: their arrival

        async def __call__(self, caller: str, item: Any) -> tuple[bool, Any]:
            key = id(asyncio.current_task())
            self.waiting[key] = arrived = time.monotonic()
            try:
                return await self.batch((caller, item, arrived))
            finally:
                del self.waiting[key]

        def configure(self, max_batch: int | None = None, max_wait: float | None = None) -> dict:
            """Changes this replica's batching in place (``python -m server.serve_apps configure``);
            a replica that replaces it starts with the deployed settings."""
            if max_batch:
                self.max_batch = max_batch
                self.batch.set_max_batch_size(max_batch)
            if max_wait:
                self.max_wait = max_wait
                self.batch.set_batch_wait_timeout_s(max_wait)
            return self.stats()

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
        async def batch(self, requests: list[tuple[str, Any, float]]) -> list[tuple[bool, Any]]:
            loop = asyncio.get_running_loop()
            items = [item for _, item, _ in requests]
            self.queue_seconds += sum(time.monotonic() - arrived for _, _, arrived in requests)
            t0 = time.perf_counter()
            try:
                results = [(True, r) for r in await loop.run_in_executor(self.executor, self.predict, items)]
            except Exception:  # one bad item must fail only its own caller: retry them one by one
                results = []
                for item in items:
                    try:
                        results.append((True, (await loop.run_in_executor(self.executor, self.predict, [item]))[0]))
                    except Exception as exc:
                        results.append((False, exc))
            seconds = time.perf_counter() - t0
            self.model_seconds += seconds
            self.model_item_seconds += seconds * len(requests)  # each request waits for its whole batch
            callers = {caller for caller, _, _ in requests}
            self.batches += 1
            self.items += len(requests)
            self.mixed += len(callers) > 1
            self.sizes[len(requests)] += 1
            self.callers.update(caller for caller, _, _ in requests)
            return results

        def stats(self) -> dict:
            return {"pid": os.getpid(), "batches": self.batches, "items": self.items,
                    "mixed_batches": self.mixed, "batch_sizes": dict(self.sizes),
                    "callers": dict(self.callers), "model_seconds": round(self.model_seconds, 3),
                    "queue_seconds": round(self.queue_seconds, 3),
                    "model_item_seconds": round(self.model_item_seconds, 3),
                    "max_batch": self.max_batch, "max_wait": self.max_wait,
                    "waiting": len(self.waiting),
                    "oldest_waiting_s": round(time.monotonic() - min(self.waiting.values(), default=time.monotonic()), 3)}

    return ModelReplica


def app_name(name: str, spec: ModelSpec) -> str:
    return f"{name}-{spec.digest}"


class RayCluster:
    """This process's connection to the Ray cluster and the Serve applications it uses."""

    def __init__(self, settings):
        self.settings = settings
        self.address = settings.ray_address
        self.caller = settings.server_id or f"{settings.host}:{settings.port}"
        self._lock = threading.Lock()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.address.rpartition(":")[0] in ("127.0.0.1", "localhost"):  # read when ray is imported
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep the driver on 127.0.0.1
        import ray
        from ray import serve
        if not ray.is_initialized():
            ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False,
                     logging_level=logging.WARNING)
        serve.start(proxy_location="Disabled")  # no HTTP proxy: media servers call deployment handles

    def handle(self, name: str, spec: ModelSpec, *, max_batch: int, max_wait: float):
        """A handle on the model's application, deployed first if the cluster lacks it (blocking)."""
        from ray import serve
        app = app_name(name, spec)
        with self._lock:
            try:
                status = serve.status().applications.get(app)
                if status is not None and status.status in ("RUNNING", "DEPLOYING"):
                    return serve.get_app_handle(app)
            except Exception:
                log.debug("no application %s yet", app, exc_info=True)
            s = self.settings
            gpus = s.ray_replica_gpus or (0.25 if s.device.startswith("cuda") else 0.0)
            replicas = max(1, s.ray_max_replicas)
            deployment = _deployment().options(
                name=name,
                ray_actor_options={"num_cpus": s.ray_replica_cpus, "num_gpus": gpus},
                autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": replicas,
                                    "target_ongoing_requests": max_batch,
                                    "upscale_delay_s": 5, "downscale_delay_s": 60})
            log.info("deploying %s on the Ray cluster at %s", app, self.address)
            return serve.run(deployment.bind(spec, max_batch, s.ray_batch_wait or max_wait), name=app,
                             route_prefix=None)

    def describe(self) -> dict:
        return {"address": self.address, "server_id": self.caller}

    def close(self) -> None:
        import ray
        if ray.is_initialized():
            ray.shutdown()


class RayModel:
    """A ``Model`` whose batches run in a Ray Serve deployment (shared by many media servers)."""

    def __init__(self, name: str, spec: ModelSpec, cluster: RayCluster, *, prepare: Callable | None = None,
                 max_batch: int = 16, max_wait: float = 0.02, max_pending: int = 256, metrics=None):
        self.name = name
        self.spec = spec
        self.app = app_name(name, spec)
        self.cluster = cluster
        self.prepare = prepare
        self.max_pending = max_pending
        self.metrics = metrics
        self.pending = 0
        self.handle = cluster.handle(name, spec, max_batch=max_batch, max_wait=max_wait)

    async def predict(self, item: Any) -> Any:
        if self.pending >= self.max_pending:
            raise Overloaded(f"{self.name} is overloaded ({self.max_pending} requests waiting)")
        self.pending += 1
        t0 = time.perf_counter()
        try:
            if self.prepare is not None:
                item = await asyncio.to_thread(self.prepare, item)
            response = self.handle.remote(self.cluster.caller, item)
            try:
                ok, value = await asyncio.wait_for(_result(response), CALL_TIMEOUT)
            except asyncio.TimeoutError:
                response.cancel()
                raise ModelUnavailable(f"{self.name} (Ray) did not answer within {CALL_TIMEOUT:.0f} s") from None
            except asyncio.CancelledError:
                response.cancel()
                raise
            except Exception as exc:  # the replica died, the cluster went away, ...
                log.warning("remote model %s failed: %r", self.name, exc)
                raise ModelUnavailable(f"{self.name} (Ray) failed: {type(exc).__name__}") from exc
        finally:
            self.pending -= 1
        if self.metrics is not None:
            self.metrics.inference.labels(self.name, "remote").observe(time.perf_counter() - t0)
        if not ok:
            raise value  # the model itself raised for this item, as the in-process path would
        return value

    async def stats(self) -> dict:
        """The statistics of the replica that answers (batch sizes, callers)."""
        return await self.handle.stats.remote()

    async def close(self) -> None:
        pass


async def _result(response):
    return await response
