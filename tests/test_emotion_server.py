"""The emotion pipeline in a real session: an aiortc client over loopback sends the astronaut photo
as video, typed sentences, speech; bad input gets error events and the session carries on."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from testing.images import astronaut
from testing.media import espeak, load_audio
from testing.net import assert_loopback, server_pair

FIRST_EVENT_TIMEOUT = 60  # the first session of a process loads the models (MiniLM, torch)


@pytest.fixture
def settings(settings):
    settings.pipelines = ["emotion"]
    return settings


async def next_emotion(client: StreamClient, predicate=lambda e: True, timeout: float = 15.0) -> dict:
    """The next emotion event for which ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        event = await client.next_event("emotion", timeout=max(0.1, deadline - time.monotonic()))
        if predicate(event):
            return event


async def next_error(client: StreamClient, needle: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        event = await client.next_event("error", timeout=max(0.1, deadline - time.monotonic()))
        if needle in event["message"]:
            return event


def silence() -> ArrayAudioTrack:
    return ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True)


async def test_astronaut_video_is_happy_and_drawn_on_video(media_server):
    client = StreamClient(media_server.url, ["emotion"])
    client.keep_frames = 2
    answer = await client.connect(silence(), PatternVideoTrack(512, 512, image=astronaut()))
    try:
        event = await next_emotion(client, timeout=FIRST_EVENT_TIMEOUT)
        events = [event] + [await next_emotion(client) for _ in range(4)]
        for e in events:
            assert e["label"] == "happy", (e["t"], e["label"], e["score"], e["modalities"])
            assert e["modalities"]["face"]["label"] == "happy" and e["modalities"]["face"]["backend"] == "fer-tflite"
            assert e["modalities"]["voice"] is None and e["modalities"]["text"] is None
            assert e["fusion"] == "confidence-weighted" and e["flag"] is None
            assert set(e["scores"]) == {"neutral", "happy", "sad", "angry", "surprise", "fear", "disgust"}
            assert abs(sum(e["scores"].values()) - 1) < 0.01 and e["response"]
        # about once a second (the machine running the tests may be busy: judge the median)
        gaps = np.diff([e["t"] for e in events])
        assert 0.8 < np.median(gaps) < 1.3 and gaps.min() > 0.15 and gaps.max() < 3, gaps
        session = media_server.server.sessions[answer["session_id"]]
        badge, = session.overlay_items()
        assert badge.label == "happy" and badge.title == "emotion" and badge.rows[0][:2] == ("face", "happy")
        assert_loopback(client.selected_pair())
        assert_loopback(server_pair(session))
        # the returned video carries the badge: its top-right corner is darkened
        await asyncio.sleep(0.5)
        frame = client.received["video"][-1][1].to_ndarray(format="bgr24")
        assert frame.shape[:2] == (512, 512)
        corner = (slice(20, 60), slice(-120, -30))
        assert frame[corner].mean() < astronaut()[corner].mean() - 40
    finally:
        await client.close()


async def test_typed_sentences_sad_angry_and_crisis(media_server):
    client = StreamClient(media_server.url, ["emotion"])
    await client.connect(silence(), PatternVideoTrack())  # a video without a face
    try:
        await client.next_event("ready", timeout=15)
        client.send({"type": "text", "text": "I feel so down and empty today, like nothing matters."})
        sad = await next_emotion(client, lambda e: e["modalities"]["text"] is not None, FIRST_EVENT_TIMEOUT)
        assert sad["label"] == "sad" and sad["modalities"]["face"] is None, sad
        assert sad["modalities"]["text"]["source"] == "typed" and sad["modalities"]["text"]["weight"] == 1.0
        assert "like nothing matters" in sad["modalities"]["text"]["text"] and sad["flag"] is None

        sent = time.monotonic()
        client.send({"type": "text", "text": "You broke my phone again and didn't even apologise, I'm so angry!"})
        angry = await next_emotion(client, lambda e: e["label"] == "angry", 5)
        assert time.monotonic() - sent < 1.5  # a new sentence is reflected at once, not at the next tick
        assert angry["response"] != sad["response"]

        client.send({"type": "text", "text": "I don't want to live anymore, I keep thinking about suicide."})
        crisis = await next_emotion(client, lambda e: e["flag"] == "crisis", 5)
        assert "988" in crisis["response"] and "findahelpline.com" in crisis["response"]
        session = media_server.server.sessions[client.session_id]
        assert any(badge.alert and badge.title == "crisis" for badge in session.overlay_items())
        # a video with frames but no face: said once, and the session carries on
        error = await next_error(client, "no face found", 10)
        assert error["pipeline"] == "emotion"
        assert (await next_emotion(client))["flag"] == "crisis"
    finally:
        await client.close()


async def test_bad_text_gets_errors_and_session_carries_on(media_server):
    client = StreamClient(media_server.url, ["emotion"])
    await client.connect(silence(), None)
    try:
        await client.next_event("ready", timeout=15)
        client.send({"type": "text", "text": "   "})
        assert "non-empty" in (await client.next_event("error"))["message"]
        client.send({"type": "text", "text": "sad " * 3000})
        assert "too long" in (await client.next_event("error"))["message"]
        client.send('{"type": "text", "text": "I am \\ud800 lost"}')  # an unpaired surrogate: not UTF-8
        error = await client.next_event("error", timeout=FIRST_EVENT_TIMEOUT)
        assert error["pipeline"] == "emotion" and "UTF-8" in error["message"]
        client.channel.send(b"\xff\xfe binary")
        assert "binary" in (await client.next_event("error"))["message"]
        client.send({"type": "text", "text": "We won the championship, this is the best day of my life!"})
        event = await next_emotion(client, lambda e: e["modalities"]["text"] is not None)
        assert event["label"] == "happy"
        client.send({"type": "config", "pipeline": "emotion", "options": {"face_fps": 100}})
        assert "face_fps" in (await client.next_event("error"))["message"]
    finally:
        await client.close()


async def test_transcript_and_voice_modalities(media_server):
    speech = load_audio(espeak("en", "I walked to the station this morning and waited for the train. "
                                     "It was late again, so I read the news and drank my coffee."))
    client = StreamClient(media_server.url, ["emotion"], {"emotion": {"interval": 0.5}})
    await client.connect(ArrayAudioTrack(speech, 16000, loop=True), None)
    try:
        voiced = await next_emotion(client, lambda e: e["modalities"]["voice"] is not None, FIRST_EVENT_TIMEOUT)
        voice = voiced["modalities"]["voice"]
        assert voice["method"] == "prosody-heuristic" and voice["heuristic"] is True
        assert -1 <= voice["arousal"] <= 1 and -1 <= voice["valence"] <= 1
        assert set(voice["scores"]) == {"neutral", "happy", "sad", "angry"}
        assert 70 < voice["pitch_hz"] < 200  # espeak's default male voice
        # speech recognition, when it runs, publishes the person's words: they count as text
        session = media_server.server.sessions[client.session_id]
        session.publish("transcript", {"text": "I'm so angry, they cancelled my train again!",
                                       "language": "en", "final": True})
        heard = await next_emotion(client, lambda e: e["modalities"]["text"] is not None)
        assert heard["modalities"]["text"]["source"] == "speech" and heard["modalities"]["text"]["label"] == "angry"
        assert heard["modalities"]["voice"] is not None and heard["label"] == "angry"
        pipeline = session.pipelines["emotion"]
        before = pipeline.mfcc_frames
        for _ in range(3):
            await next_emotion(client)
        assert pipeline.mfcc_frames > before > 0  # the MFCC history (for the fusion network) grows
    finally:
        await client.close()
