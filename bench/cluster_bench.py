#!/usr/bin/env python3
"""Cluster benchmark (issue 12): the same load against the embedded server and against a local
cluster (``server/cluster.py``: a Ray head, the Serve applications, 2 media servers, HAProxy; all
on 127.0.0.1), side by side in one run.

The load: ``--sessions`` (1, 4, 8) WebRTC sessions at once, each running ``translation`` (en -> es,
utterance mode) and ``gender`` (wav2vec2), each saying the same few espeak-ng sentences with
pauses (``bench/rooms_bench.py``'s ``SentenceTrack``). In the cluster the Whisper recogniser
(``translation-asr-tiny.en``) and the gender classifier are Ray Serve deployments (one replica
each, batching requests of both media servers); Apertium and espeak-ng stay in the media servers
(see README "Scaling out"). The gender model is a small wav2vec2 classifier with random weights
written to a temporary folder (nothing is downloaded): its compute is small, so its latency shows
what the trip to Ray costs. Measured per level:

* end of a sentence -> first sample of its translated speech at the client, p50 / p95
  (``burst_latencies``: the start of the k-th burst of returned audio minus the moment the k-th
  sentence's last voiced sample left the client);
* the gender result latency the server reports (``latency_ms``: the classifier call), p50 / p95;
* CPU: every process of the setup (the server; or Ray's processes, its replicas, the media
  servers and HAProxy), in cores, over the level;
* batch sizes each model saw (embedded: the server's ``mms_batch_size`` histogram; cluster: each
  replica's own counters, ``python -m server.serve_apps status``);
* where a remote call's time goes: the media server's round trip (``mms_inference_seconds``,
  ``stage="remote"``) split into the replica's queue (arrival to its batch's start), the model
  (its batch's run) and the rest (serialization, Serve's routing, the transport).

Prints markdown tables and writes ``bench/results/cluster.md`` (raw numbers in ``cluster.json``).
Every wait is bounded; the servers and the cluster are always stopped.

    flock /work/wt/bench.lock .venv/bin/python bench/cluster_bench.py [--sessions 1,4,8] [--sentences 3]
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench import harness  # noqa: E402
from bench.rooms_bench import RATE, SentenceTrack, burst_latencies  # noqa: E402
from bench.translation_bench import SENTENCES  # noqa: E402
from client import StreamClient  # noqa: E402
from server.cluster import LocalCluster  # noqa: E402
from testing.media import espeak, load_audio  # noqa: E402
from testing.server import ServerProcess  # noqa: E402

REMOTE = ["gender", "translation-asr-tiny.en"]  # the models the cluster sends to Ray
OPTIONS = {"translation": {"source": "en", "target": "es"}, "gender": {}}


def server_flags(gender_model: Path) -> list[str]:
    return ["--pipelines", "translation,gender", "--preload", "translation,gender",
            "--gender-backend", "wav2vec2", "--gender-model", str(gender_model),
            "--max-sessions", "16", "--max-sessions-per-address", "0", "--offer-burst", "20"]


class Setup:
    """What a level runs against: a URL for the clients, the servers' URLs for /metrics, the
    processes whose CPU counts, and the models' batch statistics."""

    name: str
    url: str
    servers: list[str]

    def processes(self) -> list[psutil.Process]:
        raise NotImplementedError

    def batch_stats(self, metrics: list[dict]) -> dict[str, dict]:
        """{model: {"sizes": {size: batches}, ...}}, cumulative."""
        raise NotImplementedError


class Embedded(Setup):
    def __init__(self, server: ServerProcess):
        self.name, self.server, self.url, self.servers = "embedded", server, server.url, [server.url]

    def processes(self):
        return [self.server.ps, *self.server.ps.children(recursive=True)]

    def batch_stats(self, metrics):
        out = {}
        for model in REMOTE:
            key = f"pipeline={model}"
            cumulative = {m.group(1): v for k, v in metrics[0].items()
                          if (m := re.fullmatch(rf"mms_batch_size_bucket\{{le=([^,]+),{key}\}}", k))}
            out[model] = {"count": metrics[0].get(f"mms_batch_size_count{{{key}}}", 0.0),
                          "sum": metrics[0].get(f"mms_batch_size_sum{{{key}}}", 0.0), "buckets": cumulative}
        return out


class Cluster(Setup):
    def __init__(self, cluster: LocalCluster):
        self.name, self.cluster, self.url = "cluster", cluster, cluster.url
        self.servers = list(cluster.media_urls.values())

    def processes(self):
        return [p for proc in self.cluster.procs for p in proc.tree()]

    def batch_stats(self, metrics):
        out = subprocess.run([sys.executable, "-m", "server.serve_apps", "status", "--ray-address",
                              self.cluster.ray_address], cwd=harness.ROOT, env=self.cluster.env,
                             capture_output=True, text=True, timeout=180)
        apps = json.loads(out.stdout) if out.returncode == 0 else {}
        return {app.rpartition("-")[0]: state.get("replica") or {} for app, state in apps.items()}


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def remote_calls(metrics: list[dict], before: list[dict]) -> dict[str, tuple[float, float]]:
    """{model: (calls, seconds)} of ``mms_inference_seconds`` over a level, every server summed;
    the cluster's media servers observe remote calls as ``stage="remote"``."""
    out: dict[str, list[float]] = {}
    for m1, m0 in zip(metrics, before):
        for model in REMOTE:
            for backend in ("remote", "batch"):
                key = f"pipeline={model},stage={backend}"
                calls = m1.get(f"mms_inference_seconds_count{{{key}}}", 0.0) - m0.get(
                    f"mms_inference_seconds_count{{{key}}}", 0.0)
                seconds = m1.get(f"mms_inference_seconds_sum{{{key}}}", 0.0) - m0.get(
                    f"mms_inference_seconds_sum{{{key}}}", 0.0)
                if calls:
                    c = out.setdefault(f"{model}/{backend}", [0.0, 0.0])
                    c[0] += calls
                    c[1] += seconds
    return {k: (v[0], v[1]) for k, v in out.items()}


async def run_level(setup: Setup, sessions: int, clips: list[np.ndarray], http: aiohttp.ClientSession) -> dict:
    metrics0 = [await harness.get_metrics(http, u) for u in setup.servers]
    batches0 = await asyncio.to_thread(setup.batch_stats, metrics0)
    procs = setup.processes()
    cpu0, t0 = cpu_seconds(procs), time.monotonic()
    clients = []
    for _ in range(sessions):
        client = StreamClient(setup.url, ["translation", "gender"], OPTIONS)
        client.keep_frames = 100_000
        clients.append((client, SentenceTrack(clips)))
    answers = await asyncio.gather(*(c.connect(track) for c, track in clients), return_exceptions=True)
    failed = [repr(a)[:200] for a in answers if isinstance(a, BaseException)]
    await asyncio.sleep(clients[0][1].seconds + 15)  # the last sentence's translation arrives
    latencies, gender, errors, servers = [], [], [], {}
    for (client, track), answer in zip(clients, answers):
        if isinstance(answer, BaseException):
            continue
        servers[answer.get("server_id")] = servers.get(answer.get("server_id"), 0) + 1
        latencies += burst_latencies(client, track.sent)
        for event in harness.drain(client):
            if event["type"] == "gender":
                gender.append(event["latency_ms"] / 1000)
            elif event["type"] == "error":
                errors.append(event.get("message"))
    procs = [*{p.pid: p for p in [*procs, *setup.processes()]}.values()]  # Ray workers started meanwhile
    cpu1, wall = cpu_seconds(procs), time.monotonic() - t0
    metrics1 = [await harness.get_metrics(http, u) for u in setup.servers]
    await asyncio.gather(*(c.close() for c, _ in clients), return_exceptions=True)
    batches1 = await asyncio.to_thread(setup.batch_stats, metrics1)
    cpu = sum(cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0) for pid in cpu1) / wall
    return {"sessions": sessions, "failed": failed, "servers": servers, "sentences": sessions * len(clips),
            "latencies": latencies, "gender": gender, "errors": errors, "cpu_cores": cpu, "wall_s": wall,
            "calls": remote_calls(metrics1, metrics0), "batches": batch_delta(setup.name, batches0, batches1),
            "load": os.getloadavg()}


def batch_delta(kind: str, before: dict, after: dict) -> dict[str, dict]:
    """Per model over a level: batches, items, mean and largest size; the cluster's replicas add
    their queue and model seconds and the batches that mixed both media servers."""
    out = {}
    for model in REMOTE:
        a, b = after.get(model) or {}, before.get(model) or {}
        if kind == "embedded":
            count, items = a.get("count", 0) - b.get("count", 0), a.get("sum", 0) - b.get("sum", 0)
            # a histogram: the largest batch is known to the bound of the first bucket holding them all
            full = [float(le) for le, n in a.get("buckets", {}).items() if le != "+Inf"
                    and n - b.get("buckets", {}).get(le, 0) >= count > 0]
            out[model] = {"batches": count, "items": items, "largest_le": min(full) if full else None}
            continue
        if b.get("pid") not in (None, a.get("pid")):
            b = {}  # a new replica: its counters start at zero
        sizes = {int(k): v - (b.get("batch_sizes") or {}).get(k, 0) for k, v in (a.get("batch_sizes") or {}).items()}
        sizes = {k: v for k, v in sizes.items() if v}
        out[model] = {"batches": a.get("batches", 0) - b.get("batches", 0), "items": a.get("items", 0) - b.get("items", 0),
                      "largest": max(sizes, default=None), "sizes": sizes,
                      "mixed": a.get("mixed_batches", 0) - b.get("mixed_batches", 0)}
        for key in ("queue_seconds", "model_item_seconds", "model_seconds"):
            out[model][key] = a.get(key, 0.0) - b.get(key, 0.0)
    return out


def ms(values, q) -> str:
    return f"{harness.pct(values, q) * 1000:.0f}" if values else "–"


def report(runs: dict[str, list[dict]], args, uptimes: dict[str, str]) -> str:
    lines = [f"cluster bench, commit {harness.git_commit()}; {args.sentences} sentences per session; "
             f"2 media servers + Ray (num_cpus 2, one replica per model) vs one embedded server; all on 127.0.0.1", ""]
    for name, up in uptimes.items():
        lines.append(f"* `uptime` before {name}: {up}")
    lines += ["", "### Latency and CPU", ""]
    rows = []
    by_level = {}
    for name, levels in runs.items():
        for r in levels:
            by_level.setdefault(r["sessions"], {})[name] = r
            servers = " ".join(f"{k}:{v}" for k, v in sorted(r["servers"].items())) if name == "cluster" else "1 server"
            rows.append([name, str(r["sessions"]), servers,
                         f"{len(r['latencies'])}/{r['sentences']}", f"{ms(r['latencies'], 50)} / {ms(r['latencies'], 95)}",
                         f"{len(r['gender'])}", f"{ms(r['gender'], 50)} / {ms(r['gender'], 95)}",
                         f"{r['cpu_cores']:.2f}", str(len(r["errors"]) + len(r["failed"]))])
    lines.append(harness.markdown_table(
        ["setup", "sessions", "on servers", "translations heard", "end of speech → translated audio p50 / p95 (ms)",
         "gender results", "gender latency p50 / p95 (ms)", "CPU (cores)", "errors"], rows))
    lines += ["", "Cluster / embedded at the same load (p50 end of speech → translated audio, p50 gender latency, CPU):", ""]
    ratio_rows = []
    for sessions, pair in sorted(by_level.items()):
        if len(pair) < 2 or not all(pair[k]["latencies"] and pair[k]["gender"] for k in pair):
            continue
        e, c = pair["embedded"], pair["cluster"]
        ratio_rows.append([str(sessions),
                           f"{harness.pct(c['latencies'], 50) / harness.pct(e['latencies'], 50):.2f}×",
                           f"{harness.pct(c['gender'], 50) / harness.pct(e['gender'], 50):.2f}×",
                           f"{c['cpu_cores'] / max(e['cpu_cores'], 1e-6):.2f}×"])
    lines.append(harness.markdown_table(["sessions", "translated audio p50", "gender latency p50", "CPU"], ratio_rows))
    lines += ["", "### Batches and where a model call's time goes", ""]
    rows = []
    for name, levels in runs.items():
        for r in levels:
            for model in REMOTE:
                b = r["batches"].get(model, {})
                backend = "remote" if name == "cluster" else "batch"
                calls, seconds = r["calls"].get(f"{model}/{backend}", (0.0, 0.0))
                if name == "cluster":
                    items = b.get("items") or 0
                    rt = seconds / calls if calls else None
                    queue = b["queue_seconds"] / items if items else None
                    model_s = b["model_item_seconds"] / items if items else None
                    rest = rt - queue - model_s if None not in (rt, queue, model_s) else None
                    sizes = " ".join(f"{k}×{v}" for k, v in sorted(b.get("sizes", {}).items()))
                    fmt = lambda x: f"{x * 1000:.0f}" if x is not None else "–"  # noqa: E731
                    rows.append([name, str(r["sessions"]), model, f"{b.get('batches', 0):.0f}",
                                 f"{items / b['batches']:.2f}" if b.get("batches") else "–", sizes or "–",
                                 str(b.get("mixed", "–")), fmt(rt), fmt(queue), fmt(model_s), fmt(rest)])
                else:
                    mean = b.get("items", 0) / b["batches"] if b.get("batches") else None
                    rows.append([name, str(r["sessions"]), model, f"{b.get('batches', 0):.0f}",
                                 f"{mean:.2f}" if mean else "–",
                                 f"≤ {b['largest_le']:g}" if b.get("largest_le") else "–", "–",
                                 f"{seconds / calls * 1000:.0f}" if calls else "–", "–",
                                 f"{seconds / calls * 1000:.0f}" if calls else "–", "–"])
    lines.append(harness.markdown_table(
        ["setup", "sessions", "model", "batches", "mean batch", "sizes (size×batches)", "batches mixing m1+m2",
         "call (ms)", "queued in replica (ms)", "model (ms)", "rest: serialization, routing, transport (ms)"], rows))
    lines += ["", "Embedded: a call is its batch's run (the server's batcher, queue not split out); sizes from the "
              "`mms_batch_size` histogram (largest: its bucket's bound). Cluster: per request, from the media "
              "servers' round trip and the replica's own clock."]
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


async def main_async(args) -> None:
    from tests.test_gender import save_tiny_model

    harness.loopback_only()
    clips = [load_audio(espeak("en-us", english), rate=RATE) for english, _ in SENTENCES[:args.sentences]]
    work = Path(tempfile.mkdtemp(prefix="mms-bench-"))
    model = work / "gender-model"
    save_tiny_model(model, norm="layer", id2label={0: "female", 1: "male"}, mask=True)
    flags = server_flags(model)
    runs, uptimes = {}, {}
    async with aiohttp.ClientSession() as http:
        if "embedded" in args.setups:
            uptimes["embedded"] = uptime()
            server = ServerProcess.script("embedded", harness.RESULTS / "cluster-embedded.log",
                                          *flags)
            async with server:
                setup = Embedded(server)
                await run_level(setup, 1, clips[:1], http)  # warm-up: first inferences and connections
                runs["embedded"] = []
                for sessions in args.sessions:
                    runs["embedded"].append(await run_level(setup, sessions, clips, http))
                    print(f"embedded x{sessions}: {summary(runs['embedded'][-1])}", file=sys.stderr, flush=True)
        if "cluster" in args.setups:
            uptimes["cluster"] = uptime()
            cluster = LocalCluster(0, 2, num_cpus=2, workdir=work / "cluster", server_args=[
                *flags, "--remote-models", ",".join(REMOTE), "--ray-max-replicas", "1", "--ray-replica-cpus", "1"])
            try:
                await asyncio.to_thread(cluster.start)
                setup = Cluster(cluster)
                await run_level(setup, 2, clips[:1], http)  # warm-up, both media servers
                runs["cluster"] = []
                for sessions in args.sessions:
                    runs["cluster"].append(await run_level(setup, sessions, clips, http))
                    print(f"cluster x{sessions}: {summary(runs['cluster'][-1])}", file=sys.stderr, flush=True)
            finally:
                await asyncio.to_thread(cluster.stop)
    harness.publish("cluster", report(runs, args, uptimes), {"runs": runs, "uptime": uptimes})
    shutil.rmtree(work, ignore_errors=True)  # the model and the cluster's logs (kept when it failed)


def summary(r: dict) -> str:
    return (f"heard {len(r['latencies'])}/{r['sentences']}, p50 {ms(r['latencies'], 50)} ms, gender p50 "
            f"{ms(r['gender'], 50)} ms, cpu {r['cpu_cores']:.2f}, errors {len(r['errors'])} {r['failed'][:1]}, "
            f"load {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--sessions", type=harness.int_list, default=harness.int_list("1,4,8"),
                        help="concurrent sessions, comma-separated levels (default 1,4,8)")
    parser.add_argument("--sentences", type=int, default=3, help="sentences each session says")
    parser.add_argument("--setups", default="embedded,cluster", help="embedded, cluster or both")
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
