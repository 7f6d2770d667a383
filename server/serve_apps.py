"""The Serve applications of a Ray cluster, ahead of the media servers that use them.

    python -m server.serve_apps deploy --ray-address HOST:PORT [media-server flags...]
    python -m server.serve_apps status --ray-address HOST:PORT
    python -m server.serve_apps configure MODEL --ray-address HOST:PORT --ray-batch-wait SECONDS

``deploy`` takes the media server's own flags (``--preload``, ``--remote-models``, the pipelines'
model settings, ``--device``, ``--ray-*``) and deploys every remote model those pipelines use,
exactly as a media server with the same flags would on its first session; ``status`` prints each
model application's state and its replicas' batch statistics (batch sizes, which servers they
mixed, seconds in the model and queued, requests ``waiting`` now); ``configure`` changes a running
model's batch wait (``--ray-batch-wait``) in the replica that answers, in place, and prints its
statistics: a replica that replaces it starts with the deployed settings (the cluster test holds
requests in a replica this way before killing it).
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys

from inference.registry import ModelRegistry
from pipelines import PIPELINES
from server.config import parse_settings


def deploy(argv: list[str]) -> None:
    settings = parse_settings(["--inference", "ray", *argv])
    registry = ModelRegistry(settings)
    names = settings.preload or settings.pipelines
    for name in (list(PIPELINES) if "all" in names else names):
        registry.load(PIPELINES[name])  # each remote model's application is deployed on the way
    print(json.dumps(registry.describe()))
    asyncio.run(registry.close())


def status(argv: list[str]) -> None:
    from inference.remote import RayCluster
    settings = parse_settings(["--inference", "ray", *argv])
    RayCluster(settings)  # first: it sets what Ray reads on import (a 127.0.0.1 head stays on 127.0.0.1)
    from ray import serve
    report = {}
    for app, state in serve.status().applications.items():
        report[app] = {"status": str(state.status)}
        if state.status == "RUNNING":
            try:
                report[app]["replica"] = serve.get_app_handle(app).stats.remote().result(timeout_s=10)
            except Exception as exc:  # an application that is not ours
                report[app]["replica"] = repr(exc)
    print(json.dumps(report, indent=2))


def configure(argv: list[str]) -> None:
    from inference.remote import RayCluster
    if not argv or argv[0].startswith("-"):
        sys.exit("configure MODEL --ray-address HOST:PORT --ray-batch-wait SECONDS")
    model, settings = argv[0], parse_settings(["--inference", "ray", *argv[1:]])
    RayCluster(settings)  # before importing ray (see status)
    from ray import serve
    apps = [app for app in serve.status().applications if app.rpartition("-")[0] == model]
    if not apps:
        sys.exit(f"no application of the model {model!r} on {settings.ray_address}")
    report = {app: {"replica": serve.get_app_handle(app).configure.remote(max_wait=settings.ray_batch_wait)
                    .result(timeout_s=30)} for app in apps}
    print(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("deploy", "status", "configure"):
        sys.exit(__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    {"deploy": deploy, "status": status, "configure": configure}[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
