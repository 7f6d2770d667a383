"""Rooms (server/rooms.py): aiortc clients in one room see and hear each other through the server,
get each other's events tagged with the participant, and hear each other translated."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest
from av import AudioResampler

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from media.audio import to_pcm16
from server.auth import AuthError, mint_token, verify_token
from testing.images import dark_pixels, mouth_area, portrait_rig
from testing.media import espeak, frame_level, load_audio, vowel
from testing.net import http_get
from testing.server import in_process
from testing.translation import EN_TEXT, words
from tests.test_resume import offer_sdp
from tests.test_translation import ES_TEXT
from tests.test_translation_server import spanish_words_heard

SECRET = "rooms-secret"


def room_client(url: str, room: str, name: str, pipelines: list[str], options: dict | None = None,
                slots: int = 1, **fields) -> StreamClient:
    client = StreamClient(url, pipelines, options, receive_slots=slots)
    client.body = {"room": room, "display_name": name, **fields}
    return client


async def next_from(client: StreamClient, participant: str, type: str, timeout: float = 90) -> dict:
    """The next ``type`` event of another participant (one's own come untagged)."""
    deadline = time.monotonic() + timeout
    while True:
        event = await client.next_event(type, timeout=max(0.1, deadline - time.monotonic()))
        if "participant" in event:
            assert event["participant"] == participant
            return event


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_two_participants_see_each_other_and_the_room_limit(media_server, settings):
    server = media_server.server
    settings.room_size = 2
    voice = load_audio(espeak("en+f3", "Hello, I am in the room with you."))
    alice = room_client(media_server.url, "r1", "Alice", ["gender"], {"gender": {"interval": 0.5}})
    bob = room_client(media_server.url, "r1", "Bob", [])
    await alice.connect(ArrayAudioTrack(voice, 16000, loop=True), PatternVideoTrack())
    await bob.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True), PatternVideoTrack())
    try:
        assert "a=ptime" not in alice.answer_sdp  # in a room the others hear her: 20 ms packets, even with gender
        room = server.rooms.rooms["r1"]
        health = await http_get(media_server.url + "/health")
        assert health["rooms"] == 1 and health["room_participants"] == 2
        metrics = server.metrics.exposition().decode()
        assert "mms_rooms 1.0" in metrics and "mms_room_participants 2.0" in metrics
        assert (await alice.next_event("room"))["participant"] == alice.session_id
        joined = await alice.next_event("participant_joined")
        assert joined["participant"] == bob.session_id and joined["display_name"] == "Bob"
        seen = await bob.next_event("participant_joined")
        assert seen["participant"] == alice.session_id and seen["display_name"] == "Alice"
        video_mid = seen["slots"]["video"]
        assert video_mid is not None and seen["slots"]["audio"] is not None
        # Bob receives Alice's camera on his slot, and her gender events tagged with her id.
        await wait_until(lambda: bob.counts_by_mid.get(video_mid, 0) >= 10, 30, "Alice's video on Bob's slot")
        gender = await bob.next_event("gender", timeout=60)
        assert gender["participant"] == alice.session_id and gender["label"] in ("male", "female")

        # A third participant over --room-size gets a clear error.
        carol = room_client(media_server.url, "r1", "Carol", [])
        with pytest.raises(RuntimeError, match=r"409.*full"):
            await carol.connect()
        await carol.pc.close()

        # Bob leaves: Alice is told; his relay into her slot stops.
        await bob.close()
        left = await alice.next_event("participant_left", timeout=10)
        assert left["participant"] == bob.session_id
        await wait_until(lambda: all(s.source is None for ss in room.participants[alice.session_id].slots.values()
                                     for s in ss), 10, "Alice's slots to empty")
    finally:
        await bob.close()
        await alice.close()
    await wait_until(lambda: not server.sessions, 10, "the sessions to close")
    assert not server.rooms.rooms  # the room vanished with its last participant
    health = await http_get(media_server.url + "/health")
    assert health["rooms"] == 0 and health["room_participants"] == 0
    for task in asyncio.all_tasks():
        assert "room-speech" not in task.get_name()


async def test_a_vanished_participant_is_removed_within_the_heartbeat_timeout(media_server, settings):
    settings.heartbeat_timeout = 1.0
    alice = room_client(media_server.url, "r2", "Alice", [])
    bob = room_client(media_server.url, "r2", "Bob", [])
    await alice.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True))
    await bob.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True))
    try:
        await alice.next_event("participant_joined")
        await bob.pc.close()  # gone without a word
        left = await alice.next_event("participant_left", timeout=15)  # heartbeat 1 s; a loaded machine
        assert left["participant"] == bob.session_id
    finally:
        await alice.close()


async def test_a_room_translates_each_speaker_for_the_other(media_server):
    """English speaker, Spanish listener: the listener reads the speaker's translation tagged
    with the speaker's id and hears Spanish on its own returned audio track; then the Spanish
    speaker's English reaches the English one."""
    speech = load_audio(espeak("en-us", EN_TEXT))
    audio = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000, np.float32)])
    spanish = np.concatenate([np.zeros(8000, np.float32), load_audio(espeak("es", ES_TEXT)),
                              np.zeros(16000, np.float32)])
    speaker = room_client(media_server.url, "call", "Ann", ["translation"],
                          {"translation": {"source": "en", "target": "es"}})
    listener = room_client(media_server.url, "call", "Bea", ["translation"],
                           {"translation": {"source": "es", "target": "en"}})
    listener.keep_frames = 1500
    voice = ArrayAudioTrack(np.zeros(16000, np.float32), 16000)  # silent, then (below) speaking Spanish
    await listener.connect(voice)
    await listener.next_event("room")
    await speaker.connect(ArrayAudioTrack(audio, 16000))
    try:
        joined = await listener.next_event("participant_joined")
        assert joined["languages"] == {"speaks": "en", "hears": "en", "translated_to": "es"}
        finals = []
        while not any({"café", "agua", "taza", "vaso"} & set(words(e["text"])) for e in finals):
            event = await next_from(listener, speaker.session_id, "translation")
            assert event["target_lang"] == "es"
            finals.append(event)
        session = media_server.server.sessions[listener.session_id]
        await asyncio.sleep(session.audio_out.queued_seconds + 0.5)
        own_audio_mid = next(t.mid for t in listener.pc.getTransceivers() if t.kind == "audio")
        resampler = AudioResampler(format="flt", layout="mono", rate=16000)
        returned = np.concatenate([f.to_ndarray().reshape(-1) for _, frame in listener.by_mid[own_audio_mid]
                                   for f in resampler.resample(frame)])
        assert (np.abs(returned) > 0.01).sum() > 16000 * 0.5, "no translated speech arrived"
        assert len(spanish_words_heard(returned)) >= 3
        # Ann sends no camera: Bea sees her portrait speak the Spanish (her English is not routed
        # to Bea, so only the translation can open that mouth).
        assert joined["avatar"] is True
        rig = portrait_rig()
        darks = [dark_pixels(f.to_ndarray(format="bgr24"), rig) for _, f in listener.by_mid[joined["slots"]["video"]]]
        assert max(darks) > 0.3 * mouth_area(rig) and min(darks) < 0.05 * mouth_area(rig), darks

        # The other way: Bea speaks Spanish, Ann reads her English (from here on, Bea's own track
        # also carries her own English, as a lone session's does).
        voice.pcm = np.concatenate([np.zeros(voice.pos, np.int16), to_pcm16(spanish)])
        back = await next_from(speaker, listener.session_id, "translation")
        assert back["target_lang"] == "en" and back["source_lang"] == "es" and back["text"]
    finally:
        await speaker.close()
        await listener.close()


async def test_each_listener_hears_the_speaker_in_its_own_language(media_server):
    """A Spanish speaker (its own translation: into English), an English and a French listener (no
    pipelines of their own): the speech is recognised once, by the speaker's pipeline; each
    listener reads the translation into its language, tagged with the speaker and the language,
    and hears it on its own audio track. When the French listener leaves, French is no longer made."""
    speech = np.concatenate([np.zeros(8000, np.float32), load_audio(espeak("es", ES_TEXT)),
                             np.zeros(16000, np.float32)])
    eve = room_client(media_server.url, "three", "Eve", [], hear="en")
    fay = room_client(media_server.url, "three", "Fay", [], hear="fr")
    bea = room_client(media_server.url, "three", "Bea", ["translation"],
                      {"translation": {"source": "es", "target": "en"}}, slots=2)
    for listener in (eve, fay):
        listener.keep_frames = 1500
        await listener.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True))
        await listener.next_event("room")
    await bea.connect(ArrayAudioTrack(speech, 16000))
    try:
        room = media_server.server.rooms.rooms["three"]
        speaker = room.participants[bea.session_id]
        await wait_until(lambda: len(room.others(speaker)) == 2, 30, "everyone to be present")
        assert room._other_languages(speaker) == {"fr"}  # English is her own pipeline's target
        texts = {}
        for listener, language in ((eve, "en"), (fay, "fr")):
            events = []
            while not any("restaurant" in e["text"].lower() for e in events):
                event = await next_from(listener, bea.session_id, "translation")
                assert event["target_lang"] == language and event["source_lang"] == "es" and event["text"]
                events.append(event)
            texts[language] = " ".join(e["text"] for e in events)
            own_audio_mid = next(t.mid for t in listener.pc.getTransceivers() if t.kind == "audio")
            seconds = sum(e["audio_seconds"] for e in events)
            heard = lambda: 0.02 * sum(frame_level(f) > 0.01 for _, f in listener.by_mid[own_audio_mid])  # noqa: E731
            await wait_until(lambda: heard() > 0.3 * seconds, seconds + 10, f"the {language} speech on its audio")
        assert texts["en"] != texts["fr"], texts
        await fay.close()
        await wait_until(lambda: len(room.others(speaker)) == 1, 10, "Fay to leave")
        assert room._other_languages(speaker) == set()
    finally:
        await fay.close()
        await eve.close()
        await bea.close()


async def test_room_names_tokens_and_bad_fields(settings):
    """``POST /rooms`` names are unguessable; a token bound to a room joins that room only; bad
    participant fields answer 400 and leave no room behind."""
    settings.auth_secret = SECRET
    headers = {"Authorization": f"Bearer {mint_token(SECRET, 60, room='ours')}"}
    async with in_process(settings) as running, aiohttp.ClientSession(headers=headers) as http:
        names = set()
        for _ in range(2):
            async with http.post(running.url + "/rooms") as resp:
                assert resp.status == 200
                names.add((await resp.json())["room"])
        assert len(names) == 2 and all(len(n) >= 22 for n in names)
        sdp = await offer_sdp()
        for body, status, message in [
                ({"room": "theirs"}, 403, "own room"), ({}, 403, "own room"),
                ({"room": "ours", "display_name": 7}, 400, "display_name"),
                ({"room": "ours", "original_volume": 2}, 400, "original_volume"),
                ({"room": "ours", "hear": "Spanish!"}, 400, "hear")]:
            async with http.post(running.url + "/offer", json={"sdp": sdp, "type": "offer", "pipelines": [],
                                                               **body}) as resp:
                assert resp.status == status and message in (await resp.json())["error"], body
        assert not running.server.rooms.rooms and not running.server.sessions
    with pytest.raises(AuthError, match="own room"):
        verify_token(SECRET, mint_token(SECRET, 60, room="ours")).check_room("theirs")


class FakeSession:
    """What a Room touches of a session: its id, taps, emit, spawn, pipelines."""

    def __init__(self, id: str):
        self.id, self.taps, self.pipelines, self.events, self.room = id, [], {}, [], None
        self.audio_out = None

    def emit(self, type, **fields):
        self.events.append({"type": type, **fields})
        for tap in self.taps:
            tap(type, fields)

    def spawn(self, coro, name):
        coro.close()


def test_events_are_shared_by_choice():
    """Gender and translation always reach the others, tagged; emotion only with ``share``;
    nothing of a participant whose connection is lost; forwarded events are not forwarded again."""
    from server.rooms import Room, participant_options
    room = Room("x", 4, on_empty=lambda room: None)
    sessions = {name: FakeSession(name) for name in ("ann", "bea", "cy")}
    for name, share in (("ann", ["emotion"]), ("bea", []), ("cy", [])):
        room.join(sessions[name], participant_options({"display_name": name, "share": share}, None))
        room.participants[name].present = True
    sessions["ann"].emit("emotion", label="happy")
    sessions["bea"].emit("emotion", label="sad")
    sessions["bea"].emit("gender", label="female")
    sessions["bea"].emit("pong", id=1)
    got = lambda who: [(e["type"], e.get("participant"), e.get("label")) for e in sessions[who].events]  # noqa: E731
    assert got("cy") == [("emotion", "ann", "happy"), ("gender", "bea", "female")]
    assert got("ann") == [("emotion", None, "happy"), ("gender", "bea", "female")]  # her own: untagged
    room.detach(sessions["bea"])
    sessions["bea"].emit("gender", label="female")
    assert ("participant_left", "bea", None) in got("cy") and got("cy").count(("gender", "bea", "female")) == 1


async def test_a_participant_without_camera_is_shown_as_a_talking_head(media_server):
    """Alice sends audio only: Bob receives, on her video slot, her portrait whose mouth opens
    while she speaks and shuts in her silences. It is rendered only while Bob's slot shows it."""
    rig = portrait_rig()
    clip = np.concatenate([np.zeros(24000, np.float32), vowel(1.0), np.zeros(24000, np.float32)])
    alice = room_client(media_server.url, "heads", "Alice", [])
    bob = room_client(media_server.url, "heads", "Bob", [])
    bob.keep_frames = 200
    await alice.connect(ArrayAudioTrack(clip, 16000, loop=True))
    room = media_server.server.rooms.rooms["heads"]
    standin = room.participants[alice.session_id].standin
    await wait_until(lambda: standin._rig is not None, 30, "Alice's portrait to load")
    await asyncio.sleep(0.5)
    assert not standin.tracks  # alone in the room: nobody sees her, nothing is rendered
    await bob.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True), PatternVideoTrack())
    try:
        seen = await bob.next_event("participant_joined")
        assert seen["participant"] == alice.session_id and seen["avatar"] is True
        assert (await alice.next_event("participant_joined"))["avatar"] is False  # Bob sends his camera
        mid = seen["slots"]["video"]
        await wait_until(lambda: bob.counts_by_mid.get(mid, 0) >= 100, 30, "Alice's talking head on Bob's slot")
        rendering = standin.tracks[None]  # her voice's head: Bob hears her untranslated
    finally:
        await bob.close()
    await alice.next_event("participant_left", timeout=10)
    assert not standin.tracks and rendering.readyState == "ended"
    await asyncio.sleep(0.2)  # (a frame being drawn when it stopped)
    rendered = rendering.sent
    await asyncio.sleep(0.5)
    assert rendering.sent == rendered
    await alice.close()
    frames = [f.to_ndarray(format="bgr24") for _, f in bob.by_mid[mid]]
    assert frames[-1].shape == (512, 512, 3)
    darks = [dark_pixels(f, rig) for f in frames]
    assert max(darks) > 0.3 * mouth_area(rig), darks
    assert min(darks) < 0.05 * mouth_area(rig), darks


def test_a_silent_talking_head_is_rendered_five_times_a_second():
    from server.standin import QuietRate

    now, audio = [0.0], [np.zeros(640, np.float32)]
    rate = QuietRate(lambda: np.zeros((4, 4, 3), np.uint8), lambda: (audio[0], 16000), clock=lambda: now[0])
    frames = []
    for _ in range(25):  # one second of ticks, silent
        frames.append(rate())
        now[0] += 0.04
    assert rate.rendered == 5 and len({id(f) for f in frames}) == 5
    audio[0] = np.full(640, 0.2, np.float32)  # speech in the lips' window: every tick
    for _ in range(10):
        rate()
        now[0] += 0.04
    assert rate.rendered == 15


def test_translated_speech_drives_the_stand_in():
    """The translated avatar's lips read routed speech on the server's clock: an utterance plays
    from now, the next after it, and nothing after the last."""
    from pipelines.talking_head.visemes import mouth_shape
    from server.standin import SpeechTimeline
    now = [100.0]
    timeline = SpeechTimeline(clock=lambda: now[0])
    assert not np.abs(timeline.window()[0]).any()
    assert timeline.push(vowel(0.5), 16000) and timeline.push(vowel(0.5, rate=24000), 24000)
    for t, speaking in ((100.02, True), (100.6, True), (100.98, True), (101.2, False)):
        now[0] = t
        samples, rate = timeline.window()
        assert (mouth_shape(samples, rate).open > 0.5) == speaking, t


class QueueTrack:
    """A relayed track stand-in: its frames are what the test puts in its queue."""

    kind = "audio"

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()

    async def recv(self):
        return await self.queue.get()

    def stop(self):
        pass


async def test_a_slot_reader_cancelled_as_its_frame_arrives_is_cancelled():
    """The room teardown hang: aiortc stops a sender by cancelling its task, which reads the slot.
    Cancelled in the instant its relayed frame arrived, the read must end cancelled: a read that
    returned the frame instead (Python 3.11's asyncio.wait_for loses a cancel that races with the
    awaited result, CPython gh-86296) left the sender reading forever and its peer connection's
    close waiting on it (the room then never stopped the slot: it does so after the close)."""
    from av import AudioFrame

    from server.slots import Slot

    class Relay:
        @staticmethod
        def subscribe(track, buffered):
            return track

    source = QueueTrack()
    slot = Slot("audio", "1")
    slot.feed("someone", source, Relay)
    frame = AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
    frame.sample_rate = 48000
    for _ in range(3):
        reader = asyncio.ensure_future(slot.recv())
        await asyncio.sleep(0.01)  # waiting on the frame
        source.queue.put_nowait(frame)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        source.queue = asyncio.Queue()
    slot.feed(None)  # (no source: waiting for one, cancelled as it comes)
    reader = asyncio.ensure_future(slot.recv())
    await asyncio.sleep(0.01)
    slot.feed("someone", source, Relay)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    slot.stop()


async def test_a_participant_closes_while_a_sender_ignores_its_cancel(media_server, monkeypatch):
    """However a sender's reading task takes its cancel, a participant's close does not wait on it:
    the room ends the participant's receive slots before its peer connection closes, and a slot
    that has ended ends its reader (before, the slots were stopped after the close, which waited
    for such a sender until the 10 s bound)."""
    from server.slots import Slot

    recv = Slot.recv

    async def stubborn(self):  # a reader that takes no cancel while its track is live
        while True:
            try:
                return await recv(self)
            except asyncio.CancelledError:
                if self.readyState != "live":
                    raise
    monkeypatch.setattr(Slot, "recv", stubborn)
    alice = room_client(media_server.url, "stubborn", "Alice", [])
    bob = room_client(media_server.url, "stubborn", "Bob", [])
    await alice.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True), PatternVideoTrack())
    await bob.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True), PatternVideoTrack())
    try:
        mid = (await bob.next_event("participant_joined"))["slots"]["video"]
        await wait_until(lambda: bob.counts_by_mid.get(mid, 0) >= 5, 30, "Alice's video on Bob's slot")
        session = media_server.server.sessions[bob.session_id]
        started = time.monotonic()
        await session.close()
        assert time.monotonic() - started < 7  # (the close's bound, CLOSE_SECONDS, is 10 s)
    finally:
        await bob.close()
        await alice.close()
