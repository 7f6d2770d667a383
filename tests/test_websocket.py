"""The WebSocket transport runs any audio pipeline, counts against the same capacity as WebRTC,
and speaks the same control protocol."""
from __future__ import annotations

import asyncio

import aiohttp
import numpy as np

from media.audio import to_pcm16
from testing.media import espeak, load_audio
from testing.net import http_get


def ws_url(media_server, path: str = "/ws") -> str:
    return media_server.url.replace("http", "ws") + path


async def receive_until(ws, kind: str, timeout: float = 30) -> list[dict]:
    events = []
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            events.append(msg.json())
            if events[-1]["type"] == kind:
                return events


async def health(media_server) -> dict:
    return await http_get(media_server.url + "/health")


async def test_gender_over_a_websocket(media_server):
    voice = load_audio(espeak("en+f3", "Hello there, this is a test of the voice gender pipeline."), rate=24000)
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(media_server)) as ws:
        await ws.send_json({"type": "ping", "id": 7})  # the control protocol works before a stream
        assert (await receive_until(ws, "pong"))[-1]["id"] == 7
        await ws.send_json({"type": "start_stream", "pipelines": ["gender"], "sample_rate": 24000,
                            "options": {"gender": {"interval": 0.5}}})
        started = (await receive_until(ws, "started"))[-1]
        assert started["pipelines"] == ["gender"] and started["sample_rate"] == 24000
        assert (await health(media_server))["sessions_by_transport"] == {"webrtc": 0, "websocket": 1}
        await ws.send_json({"type": "config", "options": {"interval": 0.6}})  # one pipeline: no name needed
        config = (await receive_until(ws, "config"))[-1]
        assert config["pipeline"] == "gender" and config["options"]["interval"] == 0.6
        for i in range(0, len(voice), 2400):
            await ws.send_bytes(to_pcm16(voice[i:i + 2400]).tobytes())
        await ws.send_json({"type": "stop_stream"})
        events = await receive_until(ws, "stopped", timeout=60)
        results = [e for e in events if e["type"] == "gender"]
        assert results and results[-1]["label"] == "female", events
        assert events[-1]["audio_seconds"] > 2
    await asyncio.sleep(0.2)
    assert (await health(media_server))["sessions"] == 0
    async with aiohttp.ClientSession() as http, http.get(media_server.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'mms_batch_size_count{pipeline="gender"}' in metrics  # the server's model records its batches


async def test_websocket_refuses_what_it_cannot_carry(media_server):
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(media_server)) as ws:
        for start, needle in [
            ({"pipelines": ["talking_head"]}, "needs video_out"),
            ({"pipelines": ["commentary"]}, "needs camera"),
            ({"pipelines": ["nope"]}, "unknown pipeline"),
            ({"pipelines": []}, "non-empty list"),
            ({"pipelines": ["gender"], "sample_rate": 12345}, "unsupported sample_rate"),
            ({"pipelines": ["gender"], "options": {"gender": {"interval": -1}}}, "interval"),
        ]:
            await ws.send_json({"type": "start_stream", **start})
            error = (await receive_until(ws, "error"))[-1]
            assert needle in error["message"], (start, error)
        await ws.send_bytes(b"\x00\x00")
        assert "start_stream" in (await receive_until(ws, "error"))[-1]["message"]
        await ws.send_str("{not json")
        assert "not JSON" in (await receive_until(ws, "error"))[-1]["message"]
        await ws.send_json({"type": "start_stream", "pipelines": ["gender"]})  # still usable
        assert (await receive_until(ws, "started"))[-1]["pipelines"] == ["gender"]
        await ws.send_bytes(b"\x00")
        assert "even number" in (await receive_until(ws, "error"))[-1]["message"]


async def test_capacity_is_counted_once_across_transports(settings, media_server):
    settings.max_sessions = 1
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(media_server)) as ws:
            await ws.send_json({"type": "ping"})
            await receive_until(ws, "pong")
            async with http.get(ws_url(media_server, "/ws/translate")) as refused:
                assert refused.status == 503 and "full" in (await refused.json())["error"]
            async with http.post(media_server.url + "/offer", json={"type": "offer", "sdp": "v=0\r\nm=audio"}) as resp:
                assert resp.status == 503 and "full" in (await resp.json())["error"]
            assert (await health(media_server))["sessions"] == 1
        await asyncio.sleep(0.2)
        async with http.ws_connect(ws_url(media_server)) as ws:  # the slot is free again
            await ws.send_json({"type": "ping"})
            await receive_until(ws, "pong")


async def test_server_shutdown_closes_its_models(settings):
    from aiohttp import web

    from server.app import MediaServer

    server = MediaServer(settings)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    model = server.models.model("probe", lambda items: [x + 1 for x in items])
    assert await model.predict(np.int64(1)) == 2
    await runner.cleanup()
    assert model._executor._shutdown and model._task.done()


async def test_a_failing_pipeline_is_restarted_and_says_so(media_server, monkeypatch):
    from pipelines import PIPELINES
    from pipelines.base import Pipeline

    class Flaky(Pipeline):
        name = "flaky"
        runs = 0

        async def run(self):
            type(self).runs += 1
            if self.runs == 1:
                raise RuntimeError("first run fails")
            self.context.emit("flaky", run=self.runs)
            await asyncio.Event().wait()

    monkeypatch.setitem(PIPELINES, "flaky", Flaky)
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(media_server)) as ws:
        await ws.send_json({"type": "start_stream", "pipelines": ["flaky"]})
        events = await receive_until(ws, "flaky", timeout=10)
    kinds = [e["type"] for e in events]
    assert kinds == ["started", "error", "restarted", "flaky"], events
    error = events[1]
    assert error["pipeline"] == "flaky" and "first run fails" in error["message"] and error["restart_in"] == 1.0
    assert events[2]["failures"] == 1 and events[3]["run"] == 2
