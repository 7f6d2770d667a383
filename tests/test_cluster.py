"""Scaling out (issue 12): a local Ray instance (127.0.0.1, 2 CPUs), the gender model as a Ray Serve
deployment, two media servers and HAProxy in front of them, started as ``make cluster`` does
(server/cluster.py). One scenario, in order: clients through HAProxy (``client.py`` too) reach both
media servers and one deployment's batches hold requests of both; a replica killed while it holds
every session's call gives each session an error event, then results again; a media server killed leaves the other's sessions running and new offers go to
the survivor; stopping the cluster leaves no process and no port behind.

The model is a tiny wav2vec2 classifier written to a temporary folder (nothing is downloaded).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from client import ArrayAudioTrack, StreamClient
from server.balancer import agent_reply, haproxy_config
from server.cluster import ROOT, LocalCluster
from server.cluster import health as cluster_health
from server.ice import restrict_ice_hosts
from testing.media import espeak, load_audio

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (make setup)")


def test_agent_reply_weights_free_capacity():
    assert agent_reply(0, 4, False) == "up 100%\n"
    assert agent_reply(3, 4, False) == "up 25%\n"
    assert agent_reply(4, 4, False) == "up 0%\n"
    assert agent_reply(1, 4, True) == "drain\n"


@needs_haproxy
def test_haproxy_config_is_valid(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config([("m1", "127.0.0.1", 8081, 9081), ("m2", "127.0.0.1", 8082, 0)], port=8080))
    check = subprocess.run([shutil.which("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = config.read_text()
    assert "cookie m1 agent-check agent-port 9081" in text and "use-server m2 if" in text


def replica_stats(cluster: LocalCluster, *command: str) -> dict:
    """``python -m server.serve_apps status`` (or another command): the gender application's replica
    statistics."""
    command = command or ("status",)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # as typed by hand
    out = subprocess.run([sys.executable, "-m", "server.serve_apps", *command, "--ray-address", cluster.ray_address],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    apps = json.loads(out.stdout)
    (app,) = [a for name, a in apps.items() if name.startswith("gender-")]
    return app.get("replica")  # None while the application is not RUNNING (a replica being replaced)


async def open_clients(url: str, voice, count: int) -> list[tuple[StreamClient, dict]]:
    clients = []
    for _ in range(count):
        client = StreamClient(url, ["gender"], {"gender": {"interval": 0.5, "min_speech": 0.3}})
        answer = await client.connect(ArrayAudioTrack(voice, 16000, loop=True))
        clients.append((client, answer))
    return clients


async def next_result(client: StreamClient, timeout: float) -> dict:
    """The next gender result or error event."""
    deadline = time.monotonic() + timeout
    while True:
        event = await client.next_event(timeout=max(0.1, deadline - time.monotonic()))
        if event["type"] in ("gender", "error"):
            return event


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@needs_haproxy
@pytest.mark.timeout(900)
async def test_local_cluster_batches_across_media_servers_and_survives_failures(tmp_path, monkeypatch):
    from tests.test_gender import save_tiny_model

    model = tmp_path / "gender-model"
    save_tiny_model(model, norm="layer", id2label={0: "female", 1: "male"}, mask=True)
    # A home where some ray.init() left a token: Ray would turn token authentication on for the
    # head and its media servers could not connect (server/cluster.py ray_env)
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0123456789abcdef" * 4)
    monkeypatch.setenv("HOME", str(home))
    cluster = LocalCluster(0, 2, num_cpus=2, agent_check=False, server_args=[
        "--pipelines", "gender", "--preload", "gender", "--gender-backend", "wav2vec2", "--gender-model", str(model),
        "--remote-models", "gender", "--ray-max-replicas", "1", "--ray-replica-cpus", "0.5",
        "--ray-batch-wait", "0.25",  # batches wait long enough to gather both servers' requests
        "--max-sessions", "4"])
    restrict_ice_hosts(["127.0.0.1"])  # this process's WebRTC clients: loopback only
    voice = load_audio(espeak("en+f3"))
    clients: list[tuple[StreamClient, dict]] = []
    cli = None
    try:
        await asyncio.to_thread(cluster.start)
        ports = [cluster.port, cluster.ray_port, *(int(u.rpartition(":")[2]) for u in cluster.media_urls.values())]
        pids = {p.pid for proc in cluster.procs for p in proc.tree()}
        for name, url in cluster.media_urls.items():
            _, health = cluster_health(url)
            assert health["server_id"] == name
            assert health["inference"]["mode"] == "ray" and health["inference"]["remote"] == ["gender"]

        # 1. Through HAProxy: sessions on both media servers, results from the shared deployment;
        # client.py's too (alongside, it ends before the replica is killed)
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "client.py", espeak("en+f3"), "--loop", "--url", cluster.url, "--pipelines", "gender",
            "--options", '{"gender": {"interval": 0.5}}', "--duration", "10", "--ice-host", "127.0.0.1",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        clients = await open_clients(cluster.url, voice, 4)
        assert {answer["server_id"] for _, answer in clients} == {"m1", "m2"}
        for client, _ in clients:
            for _ in range(2):
                event = await client.next_event("gender", timeout=60)
                assert event["label"] in ("female", "male") and event["backend"] == "wav2vec2"
        stats = await asyncio.to_thread(replica_stats, cluster)
        assert set(stats["callers"]) == {"m1", "m2"}, stats
        assert stats["mixed_batches"] >= 1, stats  # one batch held requests of both processes
        out = (await asyncio.wait_for(cli.communicate(), 60))[0].decode(errors="replace")
        printed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert cli.returncode == 0 and printed[0]["type"] == "connected", out[-2000:]
        assert any(e["type"] == "gender" and e["backend"] == "wav2vec2" for e in printed), out[-2000:]

        # 2. The replica dies while it holds calls: those calls get error events, then results again
        # once Serve has replaced it. Its batches wait 20 s first (in place: its replacement batches
        # as deployed), so every session's next call is held in the replica when it dies.
        held = await asyncio.to_thread(replica_stats, cluster, "configure", "gender", "--ray-batch-wait", "20")
        assert held["max_wait"] == 20 and held["pid"] == stats["pid"], held
        for _ in range(10):
            if held["waiting"] == len(clients) and 1 < held["oldest_waiting_s"] < 15:
                break  # one call per session, each waiting in a batch under the 20 s wait
            await asyncio.sleep(1)
            held = await asyncio.to_thread(replica_stats, cluster)
        assert held["waiting"] == len(clients) and 1 < held["oldest_waiting_s"] < 15, held
        for client, _ in clients:  # results from before: no session can have one now until its call returns
            while not client.events.empty():
                client.events.get_nowait()
        os.kill(stats["pid"], signal.SIGKILL)
        events = {id(c): [] for c, _ in clients}

        async def until_recovered(client):
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                event = await next_result(client, deadline - time.monotonic())
                events[id(client)].append(event)
                if event["type"] == "gender" and any(e["type"] == "error" for e in events[id(client)]):
                    return
        await asyncio.gather(*(until_recovered(c) for c, _ in clients))
        # Each call the dead replica held failed as an error event of that result (Serve retries a
        # call on another replica only while it is being handed over, not once the replica took
        # it), and every session carried on with results
        for evs in events.values():
            assert evs[0]["type"] == "error", evs  # its held call
            assert evs[0]["pipeline"] == "gender" and "gender (Ray) failed" in evs[0]["message"], evs
            assert evs[-1]["type"] == "gender", evs
        for _ in range(10):
            stats_after = await asyncio.to_thread(replica_stats, cluster)
            if stats_after is not None:
                break
            await asyncio.sleep(3)
        assert stats_after["pid"] != stats["pid"]  # Serve replaced the replica

        # 3. A media server dies: the other one's sessions carry on; new offers go to the survivor
        cluster.media["m1"].popen.kill()
        survivors = [c for c, a in clients if a["server_id"] == "m2"]
        for client in survivors:
            await client.next_event("gender", timeout=30)
        fresh = await open_clients(cluster.url, voice, 2)
        clients += fresh
        assert [a["server_id"] for _, a in fresh] == ["m2", "m2"]
        await fresh[0][0].next_event("gender", timeout=60)
    finally:
        await asyncio.gather(*(c.close() for c, _ in clients), return_exceptions=True)
        if cli is not None and cli.returncode is None:
            cli.kill()
            await cli.wait()
        await asyncio.to_thread(cluster.stop)

    # 4. Stopped: no process it started, no port it listened on
    time.sleep(1)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, [psutil.Process(p).cmdline()[:3] for p in alive]
    assert not [p for p in ports if listening(p)]
    shutil.rmtree(cluster.workdir, ignore_errors=True)  # the logs, kept when something failed
