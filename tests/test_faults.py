"""Faults stay inside their session: a pipeline that raises, a model call that hangs, a model that
fails to load, a client that stops reading. Test-only pipelines are registered per test."""
from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
import numpy as np
import pytest

from client import ArrayAudioTrack, StreamClient
from inference.batching import MAX_HUNG
from pipelines import PIPELINES
from pipelines.base import Pipeline
from server.transports.webrtc import MAX_CHANNEL_BACKLOG


async def next_of(ws, kind: str | tuple[str, ...], timeout: float = 10) -> dict:
    """The next event of ``kind`` (or of one of the kinds) on a WebSocket session, skipping others."""
    kinds, deadline = (kind,) if isinstance(kind, str) else kind, time.monotonic() + timeout
    while True:
        event = await ws.receive_json(timeout=max(0.01, deadline - time.monotonic()))
        if event["type"] in kinds:
            return event


async def start(http, media_server, pipelines: list[str]):
    ws = await http.ws_connect(media_server.url.replace("http", "ws") + "/ws")
    await ws.send_json({"type": "start_stream", "pipelines": pipelines})
    assert (await next_of(ws, "started"))["pipelines"] == pipelines
    return ws


async def round_trip(ws, n: int) -> float:
    t0 = time.monotonic()
    await ws.send_json({"type": "ping", "id": n})
    while (event := await ws.receive_json(timeout=10))["type"] != "pong" or event["id"] != n:
        pass
    return time.monotonic() - t0


class Steady(Pipeline):
    """Answers every text: a pipeline beside the faulty one, or in another session."""
    name = "steady"

    async def run(self):
        await asyncio.Event().wait()

    async def on_text(self, text):
        self.context.emit("steady", text=text)


@pytest.fixture
def register(monkeypatch):
    def add(*classes):
        for cls in classes:
            monkeypatch.setitem(PIPELINES, cls.name, cls)
    add(Steady)
    return add


async def test_a_raising_pipeline_restarts_with_growing_backoff(media_server, register):
    class Broken(Pipeline):
        name = "broken"

        async def run(self):
            raise RuntimeError("broken on purpose")

    register(Broken)
    async with aiohttp.ClientSession() as http:
        faulty = await start(http, media_server, ["broken", "steady"])
        bystander = await start(http, media_server, ["steady"])
        first = await next_of(faulty, "error")
        await next_of(faulty, "restarted", timeout=5)
        second = await next_of(faulty, "error")
        assert "broken on purpose" in first["message"] and first["pipeline"] == "broken"
        assert (first["restart_in"], second["restart_in"]) == (1.0, 2.0)
        await faulty.send_json({"type": "text", "text": "still here"})  # its other pipeline carries on
        assert (await next_of(faulty, "steady"))["text"] == "still here"
        assert await round_trip(bystander, 1) < 2
        await faulty.close()
        await bystander.close()


async def test_a_hung_model_call_times_out_and_does_not_block_others(media_server, register):
    release = threading.Event()
    calls = []

    def predict(items):
        calls.append(list(items))
        if "hang" in items:
            release.wait(30)
        return [f"echo {x}" for x in items]

    class Hangs(Pipeline):
        name = "hangs"

        @classmethod
        def load_shared(cls, settings, registry):
            return registry.model("hangs", predict, timeout=0.5, max_wait=0.0)

        async def run(self):
            await asyncio.Event().wait()

        async def on_text(self, text):
            model = await self.context.models.shared(type(self))
            self.context.emit("hangs", result=await model.predict(text))

    register(Hangs)
    threads = threading.active_count()
    try:
        async with aiohttp.ClientSession() as http:
            one = await start(http, media_server, ["hangs"])
            two = await start(http, media_server, ["hangs"])
            await one.send_json({"type": "text", "text": "hang"})
            error = await next_of(one, "error")
            assert error["pipeline"] == "hangs" and "did not answer within 0.5 s" in error["message"]
            t0 = time.monotonic()  # the same model answers others meanwhile, on a fresh thread
            await two.send_json({"type": "text", "text": "hello"})
            assert (await next_of(two, "hangs"))["result"] == "echo hello"
            assert time.monotonic() - t0 < 2
            await one.send_json({"type": "text", "text": "again"})  # the session carried on
            assert (await next_of(one, "hangs"))["result"] == "echo again"
            for _ in range(MAX_HUNG - 1):  # hang the rest of the threads it may leave behind
                await one.send_json({"type": "text", "text": "hang"})
                assert "did not answer" in (await next_of(one, "error"))["message"]
            assert threading.active_count() <= threads + MAX_HUNG + 1
            n = len(calls)
            await two.send_json({"type": "text", "text": "refused"})  # now it fails fast, not piling up
            assert "not answering" in (await next_of(two, "error", timeout=2))["message"]
            assert len(calls) == n
            release.set()  # the hung calls end: the model serves again
            deadline = time.monotonic() + 5
            while True:
                await two.send_json({"type": "text", "text": "back"})
                if (event := await next_of(two, ("hangs", "error")))["type"] == "hangs":
                    break
                assert time.monotonic() < deadline, event
                await asyncio.sleep(0.1)
            await one.close()
            await two.close()
    finally:
        release.set()


async def test_a_model_that_fails_to_load(media_server, register):
    loads = {"attempts": 0, "broken": True}

    class Fragile(Pipeline):
        name = "fragile"

        @classmethod
        def load_shared(cls, settings, registry):
            loads["attempts"] += 1
            if loads["broken"]:
                raise OSError("weights not found")
            return "model"

        async def run(self):
            self.context.emit("fragile", model=await self.context.models.shared(type(self)))
            await asyncio.Event().wait()

    register(Fragile)
    async with aiohttp.ClientSession() as http:
        other = await start(http, media_server, ["steady"])
        first = await start(http, media_server, ["fragile", "steady"])
        error = await next_of(first, "error")
        assert error["pipeline"] == "fragile" and "weights not found" in error["message"] and error["restart_in"]
        await first.send_json({"type": "text", "text": "a"})  # its other pipeline carries on
        assert (await next_of(first, "steady"))["text"] == "a"
        await other.send_json({"type": "text", "text": "b"})  # and so do other sessions
        assert (await next_of(other, "steady"))["text"] == "b"
        loads["broken"] = False  # e.g. the weights arrived: a later session loads them
        later = await start(http, media_server, ["fragile"])
        assert (await next_of(later, "fragile"))["model"] == "model"
        assert loads["attempts"] >= 2
        assert (await next_of(first, "fragile", timeout=10))["model"] == "model"  # its restart, too
        for ws in (other, first, later):
            await ws.close()


async def test_a_client_that_stops_reading_its_data_channel(media_server, register):
    """The server's backlog for it stays bounded (events dropped and counted) and the server
    stays responsive for others."""
    class Chatty(Pipeline):
        name = "chatty"

        async def run(self):
            padding = "x" * 16384
            for n in range(100_000):
                self.context.emit("chatty", n=n, padding=padding)
                await asyncio.sleep(0.01)  # 1.6 MB/s

    register(Chatty)
    server = media_server.server
    client = StreamClient(media_server.url, ["chatty"])
    await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True), None)
    try:
        await client.next_event("chatty", timeout=10)  # it reads, at first
        session = server.sessions[client.session_id]
        dropped = server.metrics.events_dropped._value.get()
        for transceiver in client.pc.getTransceivers():  # then reads nothing more at all
            for protocol in transceiver.receiver.transport.transport._connection._protocols:
                protocol.transport.pause_reading()
        async with aiohttp.ClientSession() as http:
            other = await start(http, media_server, ["steady"])
            trips, backlog = [], []
            for n in range(12):  # 3 s
                trips.append(await round_trip(other, n))
                backlog.append(session.peer.channel.bufferedAmount)
                await asyncio.sleep(0.25)
            await other.close()
        assert max(backlog) <= MAX_CHANNEL_BACKLOG + 20_000, backlog  # bounded
        assert server.metrics.events_dropped._value.get() - dropped > 10  # dropped, counted
        assert max(trips) < 1.0, trips  # others are served meanwhile
        assert client.session_id in server.sessions  # and it still is a session (its media arrives)
    finally:
        await client.close()
