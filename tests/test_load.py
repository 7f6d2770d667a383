"""Load shedding (server/load.py): the load follows what users would feel, new sessions are
refused above --load-threshold while the current ones carry on, and /health tells a balancer."""
from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import time
from types import SimpleNamespace

import aiohttp
import numpy as np
import psutil
import pytest

from client import ArrayAudioTrack, StreamClient
from media.buffers import LatestFrame
from server.config import Settings
from server.load import LoadMonitor, process_figures, udp_counters
from server.metrics import Metrics
from tracks.outbound import SynthVideoTrack

KEY = "load-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def shedding(settings):
    settings.load_threshold = 0.7
    settings.api_keys = [KEY]
    return settings


async def test_readings_follow_cpu_lag_and_late_video():
    """A busy thread, a blocked event loop and a returned video track that falls behind each
    raise their part; the load is the largest part."""
    metrics = Metrics()
    track = SynthVideoTrack(LatestFrame(), lambda: [], fps=25)
    track.source = lambda: np.zeros((240, 320, 3), np.uint8)  # a picture each tick (not the still card)
    monitor = LoadMonitor(Settings(), metrics, lambda: [SimpleNamespace(id="s", video_out=track)])
    lag = asyncio.get_running_loop().create_task(metrics.monitor_loop_lag())
    try:
        for _ in range(5):
            await track.recv()
        await monitor.sample()  # the first sample only sets the baseline
        me = psutil.Process()
        cpu0, wall0 = me.cpu_times(), time.monotonic()
        stop = time.monotonic() + 1.2

        def spin():  # pure Python: holds a core
            while time.monotonic() < stop:
                sum(range(1000))

        spinner = threading.Thread(target=spin)
        spinner.start()
        while time.monotonic() < stop:
            await asyncio.sleep(0.05)
            time.sleep(0.25)  # the event loop is blocked: lag, and the video track falls behind
            await track.recv()
        spinner.join()
        cpu1, wall1 = me.cpu_times(), time.monotonic()
        await monitor.sample()
    finally:
        lag.cancel()
        track.stop()
    readings, parts = monitor.readings, monitor.parts
    assert track.skipped >= 10 and track.sent >= 8, (track.sent, track.skipped)
    assert readings["video"] > 0.4, readings  # most frames due were skipped
    assert readings["lag"] >= 0.15, readings
    # what the spinner got of a core on a shared machine, over the cores this process may use
    used = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (wall1 - wall0) / monitor.cores
    assert readings["cpu"] > 0.02 and readings["cpu"] == pytest.approx(used, abs=0.05), (readings, used)
    assert parts["video"] > 1.0 and monitor.load == max(parts.values())
    if sys.platform.startswith("linux"):
        assert "udp" in readings and readings["udp"] >= 0
    assert monitor.overloaded()  # the default threshold, 0.7


async def test_round_trip_and_frame_rate_of_a_real_session(media_server):
    server = media_server.server
    client = StreamClient(media_server.url, ["gender"])
    await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True), None)
    try:
        deadline = time.monotonic() + 15
        while server.load.readings.get("rtt") is None or server.load.readings.get("video") is None:
            assert time.monotonic() < deadline, server.load.report()
            await asyncio.sleep(0.25)
        readings = server.load.readings
        assert 0 <= readings["rtt"] < 0.5, readings  # loopback: RTCP and SCTP round trips are short
        assert 0 <= readings["video"] <= 1, readings
    finally:
        await client.close()
    if sys.platform.startswith("linux"):
        received, dropped = udp_counters()
        assert received > 0 and dropped >= 0


async def test_overload_refuses_new_sessions_and_health_says_so(shedding, media_server, monkeypatch):
    server = media_server.server
    ws_url = media_server.url.replace("http", "ws") + "/ws"

    async def no_sample():  # the test sets the parts itself
        pass

    monkeypatch.setattr(server.load, "sample", no_sample)
    async with aiohttp.ClientSession(headers=AUTH) as http, aiohttp.ClientSession() as public:
        async with http.ws_connect(ws_url) as before:  # a session from before the overload
            await before.send_json({"type": "start_stream", "pipelines": ["gender"]})
            assert (await before.receive_json(timeout=30))["type"] == "started"

            server.load.parts["video"] = 1.3  # as a sample sets it: returned video 26% short
            async with http.get(media_server.url + "/health") as resp:
                health = await resp.json()
                assert resp.status == 503 and health["status"] == "overloaded" and health["load"] == 1.3
                assert health["load_detail"]["parts"]["video"] == 1.3 and health["load_detail"]["threshold"] == 0.7
                assert set(health["process"]) == {"tasks", "threads", "pool_threads", "open_fds", "rss_mb", "anon_mb"}
            async with public.get(media_server.url + "/health") as resp:  # a balancer sees the figure only
                health = await resp.json()
                assert resp.status == 503 and health["load"] == 1.3
                assert "load_detail" not in health and "process" not in health
            async with http.post(media_server.url + "/offer",
                                 json={"type": "offer", "sdp": "v=0\r\nm=audio 9 x\r\na=fingerprint:x"}) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "5"
                assert "busy" in (await resp.json())["error"]
            async with http.get(ws_url) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "5"

            await before.send_json({"type": "ping", "id": 3})  # the session it has carries on
            pong = await before.receive_json(timeout=10)
            assert pong["type"] == "pong" and pong["id"] == 3

            server.load.parts["video"] = 0.2  # below the threshold: open again
            async with http.get(media_server.url + "/health") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
            async with http.ws_connect(ws_url) as after:
                await after.send_json({"type": "ping", "id": 4})
                assert (await after.receive_json(timeout=10))["type"] == "pong"
        async with http.get(media_server.url + "/metrics") as resp:
            metrics = await resp.text()
    assert 'mms_sessions_refused_total{reason="load"} 2.0' in metrics
    assert "mms_load_threshold 0.7" in metrics
    assert 'mms_process{figure="open_fds"}' in metrics


async def test_a_zero_threshold_never_refuses(settings, media_server, monkeypatch):
    settings.load_threshold = 0

    async def no_sample():
        pass

    monkeypatch.setattr(media_server.server.load, "sample", no_sample)
    media_server.server.load.parts["cpu"] = 5.0
    async with aiohttp.ClientSession() as http, http.get(media_server.url + "/health") as resp:
        assert resp.status == 200 and (await resp.json())["load"] == 5.0


def test_process_figures():
    figures = process_figures()
    assert figures["threads"] >= 1 and figures["open_fds"] > 0 and figures["rss_mb"] > 10


async def test_the_command_freezes_what_it_loaded_and_a_server_in_tests_does_not():
    import gc

    from server.app import MediaServer

    assert gc.get_freeze_count() == 0
    for freeze in (False, True):
        server = MediaServer(Settings(pipelines=["gender"]), freeze_gc=freeze)
        try:
            await server.preload()
            assert server.ready and (gc.get_freeze_count() > 0) == freeze
        finally:
            gc.unfreeze()
            await server.models.close()
    from server import cli

    assert "MediaServer(settings, freeze_gc=True)" in inspect.getsource(cli.main)
