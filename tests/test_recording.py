"""Session recording: a translated WebRTC session recorded with --record-dir plays back with
PyAV (four streams with frames), with its events and captions timed on its media; a file whose
server was killed mid-session still reads; limits, write errors and access rules."""
from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import av
import numpy as np

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from server.auth import mint_token
from server.ice import restrict_ice_hosts
from testing.media import espeak, load_audio
from testing.net import LOOPBACK
from testing.server import ServerProcess
from testing.translation import EN_TEXT, SPANISH_WORDS, words

KEY, SECRET = "recording-test-key", "recording-test-secret"


def read_recording(path: Path) -> dict[str, dict]:
    """Per stream title: its frames' count, duration and, for audio, the mono samples (48 kHz)."""
    out: dict[str, dict] = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            out[stream.metadata["title"]] = {"frames": 0, "end": 0.0, "samples": []}
        for packet in container.demux():
            if packet.stream.type not in ("audio", "video"):
                continue
            info = out[packet.stream.metadata["title"]]
            for frame in packet.decode():
                info["frames"] += 1
                info["end"] = max(info["end"], float(frame.time or 0))
                if packet.stream.type == "audio":
                    info["samples"].append((float(frame.time), frame.to_ndarray().reshape(-1) / 32768))
    return out


def level_at(samples: list, start: float, seconds: float) -> float:
    """RMS level of a recorded audio stream between ``start`` and ``start + seconds``."""
    parts = [x for t, x in samples if start <= t < start + seconds]
    return float(np.sqrt(np.mean(np.concatenate(parts) ** 2))) if parts else 0.0


def cues(vtt: str) -> list[tuple[float, float, str]]:
    def secs(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    assert vtt.startswith("WEBVTT\n\n")
    found = re.findall(r"(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)\n(.+)\n", vtt)
    return [(secs(a), secs(b), text) for a, b, text in found]


async def test_recorded_translation_session(settings, media_server, tmp_path):
    settings.record_dir = str(tmp_path)
    security = media_server.server.security  # credentials required from now on
    security.keys, security.secret = {KEY}, SECRET
    speech = load_audio(espeak("en-us", EN_TEXT))
    audio = np.concatenate([np.zeros(8000, np.float32), speech])
    client = StreamClient(media_server.url, ["translation"], {"translation": {"source": "en", "target": "es"}},
                          token=KEY, record=True)
    try:
        await client.connect(audio=ArrayAudioTrack(audio, 16000), video=PatternVideoTrack())
        started = await client.next_event("recording", timeout=10)
        assert started["state"] == "started" and started["url"] == f"/recordings/{client.session_id}"
        spoken = []
        while not any({"café", "agua", "taza", "vaso"} & set(words(e["text"])) for e in spoken):
            spoken.append(await client.next_event("translation", timeout=60))
        session = media_server.server.sessions[client.session_id]
        # recorded at 48 kHz: aiortc's Opus decoder, not the one straight to 16 kHz (media/opus.py)
        assert all(t.receiver._RTCRtpReceiver__decoder_queue.rate is None
                   for t in session.pc.getTransceivers() if t.kind == "audio")
        await asyncio.sleep(session.audio_out.queued_seconds + 0.5)  # the translation plays out
        await session.close()  # the recording is complete once the session has closed
    finally:
        await client.close()

    folder = tmp_path / client.session_id
    streams = read_recording(folder / "session.mkv")
    assert set(streams) == {"person audio", "person video", "returned audio", "returned video"}
    for name, info in streams.items():
        assert info["frames"] > 25, (name, info["frames"])
        assert info["end"] > 4.0, (name, info["end"])

    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert {"ready", "recording", "transcript", "translation"} <= set(kinds)
    assert events[-1]["type"] == "recording" and events[-1]["state"] == "stopped"
    assert events[-1]["reason"] == "session ended" and events[-1]["bytes"] > 10_000

    # Captions: the translation's cue starts when its speech is heard on the returned audio, the
    # transcript's cue spans the person's speech, both on the recording's clock.
    translated = cues((folder / "translation.vtt").read_text())
    assert translated and SPANISH_WORDS & set(words(" ".join(c[2] for c in translated))), translated
    returned = streams["returned audio"]["samples"]
    previous_end = 0.0
    for start, end, _ in translated:  # sound from the cue's start; silence before, unless speech before it
        assert level_at(returned, start, min(0.5, end - start)) > 0.01, (start, end)
        assert start - previous_end < 0.1 or level_at(returned, start - 0.5, 0.45) < 0.01, (start, end)
        previous_end = end
    transcribed = cues((folder / "transcript.vtt").read_text())
    assert transcribed and "coffee" in " ".join(c[2] for c in transcribed).lower(), transcribed
    person = streams["person audio"]["samples"]
    for start, end, _ in transcribed:
        assert level_at(person, start, end - start) > 0.02, (start, end)

    # Served over HTTP, behind the server's authentication.
    url = f"{media_server.url}/recordings/{client.session_id}"
    auth = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=auth) as r:
            listing = await r.json()
            assert r.status == 200 and not listing["recording"], listing
        names = {f["name"]: f for f in listing["files"]}
        assert {"session.mkv", "events.jsonl", "transcript.vtt", "translation.vtt"} <= set(names)
        async with http.get(media_server.url + names["session.mkv"]["url"], headers=auth) as r:
            assert r.status == 200 and r.content_type == "video/x-matroska"
            assert await r.read() == (folder / "session.mkv").read_bytes()
        async with http.get(url) as r:
            assert r.status == 401
        gender_only = {"Authorization": f"Bearer {mint_token(SECRET, 60, ['gender'])}"}
        async with http.get(url, headers=gender_only) as r:
            assert r.status == 403
        translation = {"Authorization": f"Bearer {mint_token(SECRET, 60, ['translation'])}"}
        async with http.get(url + "/translation.vtt", headers=translation) as r:
            assert r.status == 200 and (await r.text()).startswith("WEBVTT")
        (tmp_path / "secret.txt").write_text("no")
        for bad in ("/../secret.txt", "/..%2Fsecret.txt", "/%2E%2E%2Fsecret.txt", "/session.json/../../secret.txt",
                    "/nope.mkv"):
            async with http.get(url + bad, headers=auth) as r:
                assert r.status == 404 and "no" != await r.text(), bad
        async with http.get(f"{media_server.url}/recordings/..%2F..%2Fetc", headers=auth) as r:
            assert r.status == 404


async def test_offer_asking_to_record_without_record_dir(media_server):
    async with aiohttp.ClientSession() as http:
        for record, message in ((True, "--record-dir"), ("yes", "true or false")):
            async with http.post(media_server.url + "/offer",
                                 json={"sdp": "v=0\r\n", "type": "offer", "record": record}) as r:
                assert r.status == 400 and message in (await r.json())["error"]
        async with http.get(media_server.url + "/recordings/" + "0" * 32) as r:
            assert r.status == 404 and "--record-dir" in (await r.json())["error"]


async def test_limits_and_write_errors_stop_the_recording_not_the_session(settings, media_server, tmp_path):
    settings.record_dir, settings.record_max_seconds = str(tmp_path), 1.0
    client = StreamClient(media_server.url, ["gender"], record=True)
    try:
        await client.connect(video=PatternVideoTrack())
        assert (await client.next_event("recording", timeout=10))["state"] == "started"
        stopped = await client.next_event("recording", timeout=10)
        assert stopped["state"] == "stopped" and stopped["reason"] == "duration limit (1 s)", stopped
        client.send({"type": "ping", "id": 1})
        assert (await client.next_event("pong"))["id"] == 1
    finally:
        await client.close()
    with av.open(str(tmp_path / client.session_id / "session.mkv")) as container:
        assert len(container.streams) == 4 and container.duration  # closed properly: seekable

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    settings.record_dir, settings.record_max_seconds = str(blocked), 0
    client = StreamClient(media_server.url, ["gender"], record=True)
    try:
        await client.connect()
        error = await client.next_event("error", timeout=10)
        assert error["message"].startswith("recording stopped:"), error
        stopped = await client.next_event("recording", timeout=10)
        assert stopped["state"] == "stopped" and stopped["reason"].startswith("error:")
        client.send({"type": "ping", "id": 2})
        assert (await client.next_event("pong"))["id"] == 2
    finally:
        await client.close()


async def test_recording_of_a_killed_server_still_plays(tmp_path):
    restrict_ice_hosts([LOOPBACK])  # this process's client too, as the in-process server does
    server = ServerProcess.script("recording", tmp_path / "server.log", "--pipelines", "gender",
                                  "--record-dir", str(tmp_path))
    speech = load_audio(espeak("en-us", EN_TEXT))
    async with server:
        client = StreamClient(server.url, ["gender"], record=True)
        try:
            await client.connect(audio=ArrayAudioTrack(speech, 16000, loop=True), video=PatternVideoTrack())
            await client.next_event("recording", timeout=10)
            await asyncio.sleep(4.0)
            server.proc.kill()  # SIGKILL: nothing is closed or flushed on the way out
            await asyncio.to_thread(server.proc.wait, 10)
        finally:
            await client.close()
    folder = tmp_path / client.session_id
    streams = read_recording(folder / "session.mkv")
    assert len(streams) == 4
    for name, info in streams.items():
        assert info["frames"] > 10, (name, info)
        assert info["end"] > 2.0, (name, info)  # all but the last second or so
    assert level_at(streams["person audio"]["samples"], 0, 10) > 0.01
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert events[0]["type"] == "recording" and events[0]["state"] == "started"


async def test_a_writer_that_falls_behind_drops_frames_and_never_blocks(tmp_path, monkeypatch):
    from server import recording

    slow = recording._Files.write

    def write(self, kind, item, at):
        if kind.endswith("video"):
            time.sleep(0.01)  # a slow disk or encoder
        slow(self, kind, item, at)

    monkeypatch.setattr(recording._Files, "write", write)
    told: list[tuple[str, dict]] = []
    recorder = recording.Recorder(tmp_path, "0" * 32, ["gender"], 0, 0, lambda type, **f: told.append((type, f)))
    recorder.start()
    frame = av.VideoFrame.from_ndarray(np.zeros((240, 320, 3), np.uint8), format="bgr24")
    tap = recorder.tap("returned_video")
    t0 = time.perf_counter()
    for _ in range(1000):
        tap(frame)
    assert time.perf_counter() - t0 < 0.5  # handed over, not encoded, on the event loop
    recorder.event("ping", {}, '{"type": "ping"}')  # events are kept even when media is dropped
    await recorder.close()
    assert recorder.dropped > 500
    stopped = told[-1][1]
    assert told[-1][0] == "recording" and stopped["state"] == "stopped" and stopped["dropped"] == recorder.dropped
    lines = (tmp_path / ("0" * 32) / "events.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"type": "ping"} and json.loads(lines[-1])["dropped"] == recorder.dropped
    with av.open(str(tmp_path / ("0" * 32) / "session.mkv")) as container:
        video = [s for s in container.streams if s.metadata["title"] == "returned video"][0]
        assert sum(1 for _ in container.decode(video)) == 1000 - recorder.dropped
