"""Integration tests: an aiortc client against the in-process server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import weakref

import aiohttp
import numpy as np
import pytest

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from media import codecs, opus
from testing.media import espeak, load_audio
from testing.net import assert_loopback, http_get, server_pair


async def post(url, **kwargs):
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/offer", **kwargs) as resp:
            return resp.status, await resp.json()


async def wait_until(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


# --- HTTP endpoints ------------------------------------------------------------------------------
async def test_health_and_metrics(media_server):
    health = await http_get(media_server.url + "/health")
    metrics = await http_get(media_server.url + "/metrics", text=True)
    page = await http_get(media_server.url + "/", text=True)
    assert health["status"] == "ok" and health["sessions"] == 0 and health["device"] == "cpu"
    assert "gender" in health["pipelines"] and health["uptime"] >= 0
    for name in ("mms_sessions", "mms_frames_in_total", "mms_frames_out_total", "mms_frames_dropped_total",
                 "mms_event_loop_lag_seconds_bucket", "mms_inference_seconds"):
        assert name in metrics
    assert "<html" in page.lower()


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "JSON"),
    (b"[1, 2]", 400, "object"),
    (json.dumps({"type": "offer"}).encode(), 400, "sdp"),
    (json.dumps({"sdp": "garbage", "type": "offer"}).encode(), 400, "SDP"),
    (json.dumps({"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nbroken", "type": "offer"}).encode(), 400, "SDP"),
    (json.dumps({"sdp": "v=0", "type": "answer"}).encode(), 400, "offer"),
    (json.dumps({"sdp": "v=0", "type": "offer", "pipelines": ["gender", "telepathy"]}).encode(), 400, "gender"),
    (json.dumps({"sdp": "v=0", "type": "offer", "pipelines": "gender"}).encode(), 400, "list"),
    (json.dumps({"sdp": "v=0\r\nm=x", "type": "offer", "options": {"gender": {"colour": 1}}}).encode(), 400, "colour"),
    (json.dumps({"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=setup:actpass", "type": "offer"}).encode(),
     400, "fingerprint"),  # a ghost: could never connect
])
async def test_offer_errors(media_server, body, status, needle):
    code, answer = await post(media_server.url, data=body, headers={"Content-Type": "application/json"})
    assert code == status and needle in answer["error"], answer
    assert not media_server.server.sessions


async def test_unknown_pipeline_error_names_valid_ones(media_server):
    code, answer = await post(media_server.url, json={"sdp": "v=0", "type": "offer", "pipelines": ["nope"]})
    assert code == 400 and "nope" in answer["error"] and "gender" in answer["error"]


async def test_offer_body_too_large(media_server):
    code, answer = await post(media_server.url, json={"sdp": "v=0" + "a" * 400_000, "type": "offer"})
    assert code == 413 and "too large" in answer["error"]


async def test_every_error_is_json_and_nesting_is_refused(media_server):
    nested = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads
    async with aiohttp.ClientSession() as http:
        for method, path, body, status, needle in [
            ("POST", "/offer", nested, 400, "nested too deeply"),
            ("POST", "/api/avatar/sessions", nested, 400, "nested too deeply"),
            ("GET", "/no/such/page", None, 404, "Not Found"),
            ("GET", "/offer", None, 405, "Not Allowed"),
            ("POST", "/api/avatar/sessions", "x" * 400_000, 413, "body size"),
        ]:
            async with http.request(method, media_server.url + path, data=body,
                                    headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == status and resp.content_type == "application/json", (path, resp.status)
                assert needle in (await resp.json())["error"], (path, await resp.text())
        async with http.ws_connect(media_server.url.replace("http", "ws") + "/ws") as ws:
            await ws.send_str("[" * 30_000 + "]" * 30_000)  # within the message size limit
            error = await ws.receive_json(timeout=10)
            assert error["type"] == "error" and "nested too deeply" in error["message"]
            await ws.send_json({"type": "ping", "id": 1})
            assert (await ws.receive_json(timeout=10))["type"] == "pong"  # the socket carries on


async def test_too_many_sessions(settings, media_server):
    media_server.server.settings.max_sessions = 1
    first = StreamClient(media_server.url, ["gender"])
    await first.connect()
    try:
        second = StreamClient(media_server.url, ["gender"])
        with pytest.raises(RuntimeError, match="503"):
            await second.connect()
        await second.close()
    finally:
        await first.close()
    await wait_until(lambda: not media_server.server.sessions)


# --- a real session ------------------------------------------------------------------------------
async def test_gender_session_end_to_end_over_loopback(media_server):
    voice = load_audio(espeak("en+f3"))
    client = StreamClient(media_server.url, ["gender"], {"gender": {"interval": 0.5}})
    client.keep_frames = 3
    answer = await client.connect(ArrayAudioTrack(voice, 16000, loop=True), PatternVideoTrack())
    try:
        ready = await client.next_event("ready")
        assert ready["session_id"] == answer["session_id"] and ready["pipelines"] == ["gender"]
        results = [await client.next_event("gender", timeout=15) for _ in range(3)]
        assert all(r["label"] == "female" for r in results), results
        assert all(0.5 <= r["score"] <= 1 and r["backend"] == "pitch" for r in results)
        assert all(isinstance(r["t"], float) for r in results)
        assert_loopback(client.selected_pair())
        session = media_server.server.sessions[answer["session_id"]]
        assert_loopback(server_pair(session))
        # Returned media: video at the fixed rate, audio silence as Opus DTX (a packet per 400 ms).
        start = dict(client.frame_counts)
        await asyncio.sleep(2.0)
        video_fps = (client.frame_counts["video"] - start["video"]) / 2.0
        audio_fps = (client.frame_counts["audio"] - start["audio"]) / 2.0
        assert 18 <= video_fps <= 30, video_fps
        assert 1.5 <= audio_fps <= 4, audio_fps
        assert session.audio_out.opus and session.audio_out.timestamp > 48000  # the play clock runs
        frame = client.received["video"][-1][1].to_ndarray(format="bgr24")
        assert frame.shape == (240, 320, 3)  # the user's own video, returned
        assert session.audio.end > 16000 and session.camera.received > 10
    finally:
        await client.close()
    await wait_until(lambda: not media_server.server.sessions)


async def test_session_without_camera_gets_placeholder_card(media_server):
    client = StreamClient(media_server.url, ["gender"])
    client.keep_frames = 1
    await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True), None)
    try:
        await wait_until(lambda: client.frame_counts["video"] >= 5)
        frame = client.received["video"][-1][1].to_ndarray(format="bgr24")
        assert frame.shape == (360, 640, 3)
    finally:
        await client.close()


async def test_data_channel_contract(media_server):
    client = StreamClient(media_server.url, ["gender"])
    await client.connect()
    try:
        await client.next_event("ready")
        client.send({"type": "ping", "id": 7})
        assert (await client.next_event("pong"))["id"] == 7
        for bad, needle in [("{oops", "JSON"), ('"just a string"', "type"), ('{"type": 3}', "type"),
                            ('{"type": "dance"}', "unknown message type"),
                            ('{"type": "text"}', "text"), ('{"type": "text", "text": "   "}', "text"),
                            (json.dumps({"type": "text", "text": "x" * 20000}), "too long"),
                            (json.dumps({"type": "x", "pad": "y" * 70000}), "too large"),
                            ('{"type": "config", "pipeline": "nope"}', "not active"),
                            ('{"type": "config", "pipeline": "gender", "options": {"interval": -1}}', "interval"),
                            ('{"type": "config", "pipeline": "gender", "options": [1]}', "object")]:
            client.send(bad)
            event = await client.next_event("error")
            assert needle in event["message"], (bad, event)
        client.channel.send(b"\x00\x01binary")
        assert "binary" in (await client.next_event("error"))["message"]
        client.send({"type": "config", "pipeline": "gender", "options": {"interval": 2.0}})
        ack = await client.next_event("config")
        assert ack["pipeline"] == "gender" and ack["options"]["interval"] == 2.0
        client.send({"type": "text", "text": "hello"})  # accepted silently by gender
        client.send({"type": "ping", "id": 8})  # the session carried on through all of that
        assert (await client.next_event("pong"))["id"] == 8
    finally:
        await client.close()


async def test_config_changes_the_running_pipeline(media_server):
    voice = load_audio(espeak("en"))
    client = StreamClient(media_server.url, ["gender"], {"gender": {"interval": 0.4}})
    await client.connect(ArrayAudioTrack(voice, 16000, loop=True), None)
    try:
        first = await client.next_event("gender", timeout=15)
        second = await client.next_event("gender", timeout=15)
        assert first["label"] == second["label"] == "male"
        assert second["t"] - first["t"] < 1.0
        client.send({"type": "config", "pipeline": "gender", "options": {"interval": 2.5}})
        await client.next_event("config")
        a = await client.next_event("gender", timeout=15)
        b = await client.next_event("gender", timeout=15)
        assert b["t"] - a["t"] >= 2.4
    finally:
        await client.close()


# --- lifetime ------------------------------------------------------------------------------------
async def test_heartbeat_closes_a_silent_client(settings, media_server):
    media_server.server.settings.heartbeat_timeout = 1.5
    media_server.server.settings.resume_seconds = 0  # no waiting for a resume (tests/test_resume.py)
    silent = StreamClient(media_server.url, ["gender"])  # no media, no pings
    await silent.connect()
    talking = StreamClient(media_server.url, ["gender"])
    await talking.connect()
    try:
        await asyncio.sleep(0.5)
        assert len(media_server.server.sessions) == 2
        for _ in range(8):  # 4 s of pings keep one alive
            talking.send({"type": "ping", "id": 1})
            await asyncio.sleep(0.5)
        assert list(media_server.server.sessions) == [talking.session_id]
    finally:
        await silent.close()
        await talking.close()
    await wait_until(lambda: not media_server.server.sessions)


async def test_client_close_tears_session_down(media_server):
    client = StreamClient(media_server.url, ["gender"])
    await client.connect(ArrayAudioTrack(np.zeros(1600, np.float32), 16000, loop=True), PatternVideoTrack())
    session = media_server.server.sessions[client.session_id]
    tasks = set(session._tasks)
    assert tasks
    await client.close()
    await wait_until(lambda: not media_server.server.sessions)
    assert all(t.done() for t in tasks)
    assert session.audio_out.readyState == "ended" and session.video_out.readyState == "ended"
    assert session.pc.connectionState == "closed"


def _threads():
    # Worker pools (asyncio's default executor, the per-model inference thread) are reused, not leaked.
    pooled = ("ThreadPoolExecutor", "asyncio_", "infer-")
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith(pooled))


async def test_fifty_connect_disconnect_cycles_leave_nothing_behind(media_server):
    voice = load_audio(espeak("en"))[:16000]

    async def cycle(refs):
        client = StreamClient(media_server.url, ["gender"])
        await client.connect(ArrayAudioTrack(voice, 16000, loop=True), PatternVideoTrack())
        refs.append(weakref.ref(media_server.server.sessions[client.session_id]))
        await asyncio.sleep(0.05)
        await client.close()
        await wait_until(lambda: not media_server.server.sessions)

    warm: list = []
    for _ in range(3):
        await cycle(warm)
    await asyncio.sleep(0.5)
    gc.collect()
    tasks_before = len(asyncio.all_tasks())
    threads_before = _threads()
    refs: list = []
    for _ in range(50):
        await cycle(refs)
    await asyncio.sleep(1.0)
    gc.collect()
    assert not media_server.server.sessions
    assert len(asyncio.all_tasks()) <= tasks_before, [t.get_name() for t in asyncio.all_tasks()]
    assert _threads() == threads_before
    alive = [r for r in refs if r() is not None]
    assert not alive, f"{len(alive)} sessions still referenced"


async def test_inbound_audio_is_released_without_reordering_delay(media_server):
    client = StreamClient(media_server.url, ["gender"])
    await client.connect(ArrayAudioTrack(np.zeros(1600, np.float32), 16000, loop=True), None)
    try:
        session = media_server.server.sessions[client.session_id]
        receivers = [t.receiver for t in session.pc.getTransceivers() if t.kind == "audio"]
        assert receivers and all(r._RTCRtpReceiver__jitter_buffer._prefetch == 1 for r in receivers)
        await wait_until(lambda: session.audio.end > 8000)
        # decoded on the loop (media/codecs.py), not on aiortc's decoder thread
        decoding = [r._RTCRtpReceiver__decoder_queue for r in receivers]
        assert all(isinstance(d, codecs.InlineDecoding) and d.decoded >= 25 for d in decoding)
        # Opus straight to the pipelines' 16 kHz (media/opus.py): nothing records or relays it
        assert all(isinstance(d._decoder, opus.Opus16k) and d.rate == 16000 for d in decoding)
    finally:
        await client.close()
