"""talking_head: face analysis, rendering that follows audio (measured in pixels), the torch batch
path against the cv2 path, the REST API and its bad inputs, and WebRTC viewers (mic and api drives)."""
from __future__ import annotations

import asyncio
import io
import time

import aiohttp
import cv2
import numpy as np
import pytest
from PIL import Image

from client import ArrayAudioTrack, StreamClient
from pipelines.talking_head.avatar_render import Pose, Rig, TorchWarper
from pipelines.talking_head.face import FaceAnalyzer, NoFaceError, decode_image, default_portrait_image
from pipelines.talking_head.visemes import mouth_shape
from pipelines.talking_head.avatar import Avatar, BatchTicker
from pipelines.talking_head.rest import AvatarSessions
from talking_head_client import AvatarClient, AvatarAPIError
from testing.images import dark_pixels, mouth_area
from testing.media import espeak, frame_level, load_audio, vowel, write_wav


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture(scope="module")
def rig(analyzer) -> Rig:
    return Rig(analyzer.analyze_image(default_portrait_image(), "default"))


def jpeg(image_bgr: np.ndarray, orientation: int | None = None) -> bytes:
    img = Image.fromarray(image_bgr[:, :, ::-1])
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(out, format="JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


# --- face analysis ---------------------------------------------------------------------------------
def test_landmarks_on_default_portrait(rig):
    lm = rig.landmarks
    assert lm.shape == (68, 2)
    # The astronaut's face is at about x 175-265, y 76-166 of the 512 x 512 photo; the mouth below the
    # nose, the eyes above it, the chin lowest.
    assert 175 <= lm[:, 0].min() and lm[:, 0].max() <= 280 and 70 <= lm[:, 1].min() and lm[:, 1].max() <= 185
    assert lm[36:48, 1].max() < lm[33, 1] < lm[48:68, 1].min() < lm[8, 1]
    assert 35 < rig.mouth_width < 60


def test_no_face_and_not_an_image(analyzer):
    from skimage.data import coffee

    with pytest.raises(NoFaceError):
        analyzer.analyze(jpeg(coffee()[:, :, ::-1].copy()))
    from pipelines.talking_head.face import BadImageError

    with pytest.raises(BadImageError):
        analyzer.analyze(b"definitely not an image")


def test_exif_orientation_is_applied(analyzer):
    upright = default_portrait_image()
    # Stored rotated by 90 degrees with EXIF orientation 6 ("rotate 90 CW to display"): decoding
    # must turn it back upright, and the face must be found where it is in the upright photo.
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    decoded = decode_image(jpeg(stored, orientation=6))
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright.astype(int)).mean() < 6
    lm = analyzer.landmarks(decoded)
    assert abs(lm[30, 0] - 222) < 12 and abs(lm[30, 1] - 128) < 12  # nose tip of the upright face


# --- audio -> mouth -> pixels ------------------------------------------------------------------
def test_mouth_shape_from_audio():
    assert mouth_shape(np.zeros(640, np.float32), 16000).open == 0
    assert mouth_shape(vowel(0.04), 16000).open > 0.8
    assert mouth_shape(vowel(0.04, level=0.003), 16000).open < 0.2
    t = np.arange(640) / 16000
    oo = 0.3 * np.sin(2 * np.pi * 300 * t)  # energy low in the spectrum: rounded lips
    ee = 0.3 * np.sin(2 * np.pi * 2800 * t)  # energy high: spread lips
    assert mouth_shape(oo, 16000).round > 0.5 and mouth_shape(ee, 16000).round < -0.5


def test_rendered_mouth_follows_audio(rig):
    """Silence -> closed, a loud vowel -> open, measured as dark pixels of the rendered frames."""
    clip = np.concatenate([np.zeros(16000, np.float32), vowel(1.0), np.zeros(16000, np.float32)])
    now = [0]
    avatar = Avatar(rig, lambda: (clip[max(0, now[0] - 640):now[0]], 16000), seed=3)
    darks = []
    for frame_index in range(75):  # 3 s at 25 fps
        now[0] = frame_index * 640
        darks.append(dark_pixels(avatar.rig.render(avatar.pose(frame_index / 25)), rig))
    silence, speech, after = darks[5:24], darks[30:49], darks[60:]
    region = mouth_area(rig)
    assert max(silence) < 0.05 * region, silence
    assert min(speech) > 0.3 * region, speech
    assert max(after) < 0.05 * region, after
    # Opening within two frames of the onset (80 ms), closing within four of the end.
    assert darks[26] > 0.2 * region and darks[54] < 0.1 * region, darks[24:56]


def test_speech_opens_and_closes_the_mouth(rig):
    speech = load_audio(espeak("en", "Hello, how are you today? I am fine, thank you."))
    clip = np.concatenate([np.zeros(8000, np.float32), speech])
    now = [0]
    avatar = Avatar(rig, lambda: (clip[max(0, now[0] - 640):now[0]], 16000), seed=4)
    darks, levels = [], []
    for i in range(len(clip) // 640):
        now[0] = i * 640
        darks.append(dark_pixels(avatar.render(), rig))
        levels.append(np.sqrt(np.mean(clip[max(0, now[0] - 640):now[0] or 1] ** 2)))
    assert np.corrcoef(levels, darks)[0, 1] > 0.6
    assert max(darks[:10]) < 40 and max(darks) > 200


def test_blinks_and_idle_motion(rig):
    avatar = Avatar(rig, lambda: (np.zeros(640, np.float32), 16000), seed=5)
    poses = [avatar.pose(i / 25) for i in range(25 * 12)]
    blinks = [p.blink for p in poses]
    assert max(blinks) == 1.0 and 1 <= sum(1 for a, b in zip(blinks, blinks[1:]) if b == 1.0 and a < 1.0) <= 6
    angles = [p.angle for p in poses]
    assert 0.3 < max(angles) - min(angles) < 3.5
    # A blink darkens nothing in the mouth and changes the eyes' pixels.
    open_eyes, closed_eyes = rig.render(Pose()), rig.render(Pose(blink=1.0))
    x0, x1, top, bottom = (int(v) for v in rig.eyes[0])
    assert np.abs(open_eyes[top:bottom + 1, x0:x1].astype(int) - closed_eyes[top:bottom + 1, x0:x1]).mean() > 10


def test_render_time_and_size(rig):
    avatar = Avatar(rig, lambda: (vowel(0.04), 16000), seed=6)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        frame = avatar.render()
        times.append(time.perf_counter() - t0)
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
    assert np.median(times) < 0.02  # 2-3 ms unloaded; far under the 40 ms of a 25 fps frame


# --- GPU batch path, on CPU tensors ---------------------------------------------------------------
def test_torch_batch_matches_cv2(rig, analyzer):
    small_image = cv2.resize(default_portrait_image(), (384, 384), interpolation=cv2.INTER_AREA)
    small = Rig(analyzer.analyze_image(small_image, "small"))
    rigs = [rig, small, rig]
    poses = [Pose(open=0.8, round=0.4, angle=1.2, dx=2.0, dy=-1.0), Pose(open=0.5, blink=0.7, angle=-0.8),
             Pose(round=-0.9, blink=1.0, dx=-1.5)]
    frames = TorchWarper("cpu").render(rigs, poses)
    for r, p, f in zip(rigs, poses, frames):
        expected = r.render(p)
        assert f.shape == expected.shape
        diff = np.abs(f.astype(int) - expected.astype(int))
        assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 3, (diff.mean(), diff.max())


def test_batch_ticker_renders_every_avatar(rig):
    ticker = BatchTicker(TorchWarper("cpu"), fps=25)
    loud = Avatar(rig, lambda: (vowel(0.04), 16000), seed=7)
    quiet = Avatar(rig, lambda: (np.zeros(640, np.float32), 16000), seed=8)
    ticker.avatars.update({loud, quiet})  # tick by hand rather than on the thread
    for _ in range(4):
        assert ticker.tick() == 2
    assert loud.frames == quiet.frames == 4
    assert dark_pixels(loud.batched_frame(), rig) > 10 * max(1, dark_pixels(quiet.batched_frame(), rig))


# --- REST API ----------------------------------------------------------------------------------
async def test_portrait_upload(media_server):
    api = AvatarClient(media_server.url)
    try:
        upload = await api.upload_portrait(jpeg(default_portrait_image()), "astronaut.jpg")
        assert upload["width"] == 512 and upload["height"] == 512 and len(upload["portrait_id"]) == 16
        again = await api.upload_portrait(jpeg(default_portrait_image()), "astronaut.jpg")
        assert again["portrait_id"] == upload["portrait_id"]  # analysed once, cached
        from skimage.data import coffee
        with pytest.raises(AvatarAPIError) as no_face:
            await api.upload_portrait(jpeg(coffee()[:, :, ::-1].copy()), "coffee.jpg")
        assert no_face.value.status == 422 and no_face.value.message == "no face found"
        with pytest.raises(AvatarAPIError) as text:
            await api.upload_portrait(b"hello, I am text", "notes.txt", content_type="text/plain")
        assert text.value.status == 415
        with pytest.raises(AvatarAPIError) as garbage:
            await api.upload_portrait(b"\x89PNG but not really" * 10, "fake.png")
        assert garbage.value.status == 415
        with pytest.raises(AvatarAPIError) as huge:
            await api.upload_portrait(b"\xff\xd8" + bytes(11 * 1024 * 1024), "huge.jpg")
        assert huge.value.status == 413
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{media_server.url}/api/portraits", json={"image": "x"}) as resp:
                assert resp.status == 415 and "error" in await resp.json()
    finally:
        await api.close()


async def test_avatar_session_api(media_server, tmp_path):
    api = AvatarClient(media_server.url)
    try:
        created = await api.create_session(sample_rate=22050, chunk_duration=2.0)
        sid = created["session_id"]
        assert created["state"] == "waiting" and created["portrait_id"] == "default"
        # Raw PCM at the session's rate, WAV at its own rate: both resampled to 16 kHz.
        pcm = (vowel(0.5, rate=22050) * 32767).astype("<i2").tobytes()
        fed = await api.feed_audio(sid, pcm)
        assert fed["accepted_seconds"] == pytest.approx(0.5, abs=0.01) and fed["source_sample_rate"] == 22050
        wav = write_wav(tmp_path / "vowel.wav", vowel(0.25, rate=44100), rate=44100)
        fed = await api.feed_audio(sid, wav.read_bytes())
        assert fed["source_sample_rate"] == 44100 and fed["accepted_seconds"] == pytest.approx(0.25, abs=0.01)
        status = await api.status(sid)
        assert status["state"] == "speaking" and status["buffered_audio_seconds"] == pytest.approx(0.75, abs=0.02)
        assert status["viewer_attached"] is False and status["uptime"] >= 0

        async def refused(coro, code):
            with pytest.raises(AvatarAPIError) as err:
                await coro
            assert err.value.status == code, err.value.message
            return err.value.message

        assert "sample rate" in await refused(api.feed_audio(sid, pcm, sample_rate=1000), 400)
        assert "sample_rate" in await refused(api.feed_audio(sid, pcm, sample_rate="fast"), 400)
        await refused(api.feed_audio(sid, b"\x01\x02\x03"), 400)  # odd byte count
        await refused(api.feed_audio(sid, (vowel(3.0) * 32767).astype("<i2").tobytes(), sample_rate=16000), 413)
        await refused(api.create_session(sample_rate=5), 400)
        await refused(api.create_session(portrait_id="nope"), 404)
        await refused(api.create_session(chunk_duration=-1), 400)
        await refused(api.status("0" * 32), 404)
        await refused(api.feed_audio("0" * 32, pcm), 404)
        await refused(api.delete_session("0" * 32), 404)
        await api.feed_audio(sid, b"", is_final=True)
        assert "is_final" in await refused(api.feed_audio(sid, pcm), 409)
        assert (await api.status(sid))["is_final"] is True
        assert len((await api.status(sid))["errors"]) >= 4
        deleted = await api.delete_session(sid)
        assert deleted["state"] == "closed"
        await refused(api.status(sid), 404)
    finally:
        await api.close()


async def test_idle_avatar_sessions_are_removed(media_server):
    from pipelines.talking_head.rest import avatar_sessions

    registry: AvatarSessions = avatar_sessions(media_server.server.models)
    registry.idle_timeout = 0.3
    api = AvatarClient(media_server.url)
    try:
        sid = (await api.create_session())["session_id"]
        await asyncio.sleep(0.2)
        await api.status(sid)  # activity keeps it
        await asyncio.sleep(0.2)
        assert sid in registry.sessions
        await asyncio.sleep(0.6)
        assert sid not in registry.sessions
        with pytest.raises(AvatarAPIError) as err:
            await api.status(sid)
        assert err.value.status == 404
    finally:
        await api.close()


async def test_offer_with_bad_options(media_server):
    for options, needle in (({"drive": "tv"}, "drive"), ({"drive": "api"}, "avatar_session"),
                            ({"drive": "api", "avatar_session": "missing"}, "unknown avatar session")):
        client = StreamClient(media_server.url, ["talking_head"], {"talking_head": options})
        with pytest.raises(RuntimeError, match=needle):
            await client.connect()
        await client.close()


# --- WebRTC ------------------------------------------------------------------------------------
def received_frames(client: StreamClient) -> list[tuple[float, np.ndarray]]:
    return [(t, f.to_ndarray(format="bgr24")) for t, f in client.received["video"]]


async def test_mic_drive_over_webrtc(media_server, rig):
    """The avatar mirrors the client's voice: 25 fps received, mouth shut in silence, open in speech."""
    clip = np.concatenate([np.zeros(32000, np.float32), vowel(1.5), np.zeros(48000, np.float32)])
    client = StreamClient(media_server.url, ["talking_head"], {"talking_head": {"drive": "mic"}})
    client.keep_frames = 200
    try:
        await client.connect(audio=ArrayAudioTrack(clip, 16000))
        event = await client.next_event("talking_head", timeout=20)
        assert event["portrait_id"] == "default" and event["width"] == 512
        start_count, t0 = client.frame_counts["video"], time.monotonic()
        await asyncio.sleep(5.0)
        fps = (client.frame_counts["video"] - start_count) / (time.monotonic() - t0)
        frames = [(t, f) for t, f in received_frames(client) if t > t0 + 0.1]  # the avatar, not the card before it
    finally:
        await client.close()
    assert fps > 21, f"{fps:.1f} fps"
    assert frames[-1][1].shape == (512, 512, 3)
    darks = [dark_pixels(f, rig) for _, f in frames]
    region = mouth_area(rig)
    assert max(darks) > 0.3 * region, darks
    assert min(darks) < 0.05 * region, darks
    # Steady timing: arrival gaps of the received frames.
    gaps = np.diff([t for t, _ in frames])
    assert np.median(gaps) == pytest.approx(0.04, abs=0.012) and np.percentile(gaps, 95) < 0.15


async def test_api_drive_over_webrtc(media_server, rig):
    """An app feeds audio over REST; a viewer attached to the avatar session hears it and sees the
    mouth move; the session reports frames and ends as finished after is_final."""
    api = AvatarClient(media_server.url)
    sid = (await api.create_session(chunk_duration=1.0))["session_id"]
    viewer = StreamClient(media_server.url, ["talking_head"],
                          {"talking_head": {"drive": "api", "avatar_session": sid}})
    viewer.keep_frames = 400
    try:
        await viewer.connect()
        event = await viewer.next_event("talking_head", timeout=20)
        assert event["avatar_session"] == sid
        shown = time.monotonic()
        await asyncio.sleep(0.5)
        for _ in range(2):  # 2 s of vowel in 1 s chunks, fed in real time
            await api.feed_audio(sid, (vowel(1.0) * 32767).astype("<i2").tobytes())
            await asyncio.sleep(0.8)
        await api.feed_audio(sid, b"", is_final=True)
        status = await api.status(sid)
        assert status["viewer_attached"] and status["frames_generated"] > 25
        deadline = time.monotonic() + 6
        while (await api.status(sid))["state"] != "finished":
            assert time.monotonic() < deadline, await api.status(sid)
            await asyncio.sleep(0.2)
        frames = [(t, f) for t, f in received_frames(viewer) if t > shown + 0.1]
        loud_audio_frames = sum(1 for _, f in viewer.received["audio"] if frame_level(f) > 0.05)
        audio_at, video_at = onset_times(viewer, rig, shown)
    finally:
        await viewer.close()
        await api.close()
    assert loud_audio_frames > 75  # of the 100 frames (2 s) of vowel fed: the viewer hears it
    assert abs(video_at - audio_at) < 0.08, (audio_at, video_at)
    darks = [dark_pixels(f, rig) for _, f in frames]
    region = mouth_area(rig)
    assert max(darks) > 0.3 * region and min(darks) < 0.05 * region, darks


def onset_times(client: StreamClient, rig: Rig, after: float) -> tuple[float, float]:
    """Arrival times (after ``after``) of the first loud received audio frame and of the first
    received video frame whose mouth region is open."""
    region = mouth_area(rig)
    audio_at = next(t for t, f in client.received["audio"] if t > after and frame_level(f) > 0.05)
    video_at = next(t for t, f in received_frames(client) if t > after and dark_pixels(f, rig) > 0.2 * region)
    return audio_at, video_at


async def test_translation_drive_lips_in_sync_with_outbound_audio(media_server, rig):
    """Speech the server plays (as the translation pipeline does, pushing to audio_out) moves the
    lips, and the received sound and the received open mouth arrive together."""
    client = StreamClient(media_server.url, ["talking_head"], {"talking_head": {"drive": "translation"}})
    client.keep_frames = 400
    try:
        await client.connect()
        await client.next_event("talking_head", timeout=20)
        session = media_server.server.sessions[client.session_id]
        await asyncio.sleep(1.0)  # closed mouth, silence
        pushed = time.monotonic()
        session.audio_out.push_audio(vowel(1.0, rate=24000), 24000)
        await asyncio.sleep(2.0)
        audio_at, video_at = onset_times(client, rig, pushed)
    finally:
        await client.close()
    # Same moment within two frames, whatever the machine's load (the benchmark reports the figure).
    assert abs(video_at - audio_at) < 0.08, (audio_at, video_at)


async def test_portrait_option_and_live_switch(media_server):
    """An unknown portrait id is reported and the default shown; a config message switches the
    running avatar to an uploaded portrait."""
    api = AvatarClient(media_server.url)
    flipped = np.ascontiguousarray(default_portrait_image()[:, ::-1])  # another image, same face
    uploaded = (await api.upload_portrait(jpeg(flipped), "mirror.jpg"))["portrait_id"]
    await api.close()
    client = StreamClient(media_server.url, ["talking_head"], {"talking_head": {"portrait": "0123456789abcdef"}})
    try:
        await client.connect()
        error = await client.next_event("error", timeout=20)
        assert error["pipeline"] == "talking_head" and "unknown portrait" in error["message"]
        assert (await client.next_event("talking_head"))["portrait_id"] == "default"
        client.send({"type": "config", "pipeline": "talking_head", "options": {"portrait": uploaded}})
        assert (await client.next_event("config"))["options"]["portrait"] == uploaded
        event = await client.next_event("talking_head", timeout=10)
        assert event["portrait_id"] == uploaded and event["state"] == "showing"
        client.send({"type": "config", "pipeline": "talking_head", "options": {"drive": "karaoke"}})
        assert "drive" in (await client.next_event("error"))["message"]
    finally:
        await client.close()


async def test_batched_path_serves_a_session(settings, media_server, rig, monkeypatch):
    """The --device cuda wiring (BatchTicker thread, grid_sample batch, batched_frame as the video
    source), run on CPU tensors: a session gets the batched avatar, its mouth follows the mic, and
    closing the session takes the avatar out of the batch."""
    from pipelines.talking_head.face import PortraitStore
    from pipelines.talking_head.avatar import TalkingHeadShared
    from pipelines.talking_head.pipeline import TalkingHeadPipeline

    ticker = BatchTicker(TorchWarper("cpu"), settings.video_fps)
    monkeypatch.setattr(TalkingHeadPipeline, "load_shared", classmethod(  # this server's models only
        lambda cls, s, registry: TalkingHeadShared(PortraitStore(FaceAnalyzer(), None), ticker)))
    clip = np.concatenate([np.zeros(24000, np.float32), vowel(1.5), np.zeros(32000, np.float32)])
    client = StreamClient(media_server.url, ["talking_head"], {"talking_head": {"drive": "mic"}})
    client.keep_frames = 200
    try:
        await client.connect(audio=ArrayAudioTrack(clip, 16000))
        await client.next_event("talking_head", timeout=20)
        shown = time.monotonic()
        await asyncio.sleep(4.0)
        assert len(ticker.avatars) == 1 and ticker.ticks > 40
        frames = [f for t, f in received_frames(client) if t > shown + 0.2]
    finally:
        await client.close()
    await asyncio.sleep(0.3)
    assert not ticker.avatars
    darks = [dark_pixels(f, rig) for f in frames]
    region = mouth_area(rig)
    assert max(darks) > 0.3 * region and min(darks) < 0.05 * region, darks


async def test_client_speaks_a_wav_in_real_time(media_server):
    wav = espeak("en", "One two three.")
    seconds = len(load_audio(wav)) / 16000
    api = AvatarClient(media_server.url)
    try:
        sid = (await api.create_session())["session_id"]
        t0 = time.monotonic()
        await api.speak_wav(sid, wav, chunk_seconds=0.25)
        elapsed = time.monotonic() - t0
        status = await api.status(sid)
    finally:
        await api.close()
    assert status["is_final"] and status["fed_audio_seconds"] == pytest.approx(seconds, abs=0.02)
    assert seconds - 0.5 < elapsed < seconds + 1.0  # paced like speech, a little ahead


async def test_inputs_that_would_cost_gigabytes_are_refused_from_their_headers(media_server):
    """A WAV header claiming 1 Hz (resampled to 16 kHz: 16000x the samples) and a PNG declaring
    13000 x 13000 pixels are refused before they are decoded."""
    import struct
    import threading

    import psutil
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (13000, 13000)).save(buffer, "PNG", optimize=True)  # ~0.5 MB on the wire
    process, peak, done = psutil.Process(), [0], threading.Event()  # the server runs in this process
    baseline = process.memory_info().rss

    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    data = np.zeros(20_000, "<i2").tobytes()
    wav = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 1, 2, 2, 16)
           + b"data" + struct.pack("<I", len(data)) + data)
    api = AvatarClient(media_server.url)
    try:
        sid = (await api.create_session())["session_id"]
        with pytest.raises(AvatarAPIError) as refused:
            await api.feed_audio(sid, wav)
        assert refused.value.status == 400 and "unsupported sample rate 1 Hz" in str(refused.value)
    finally:
        await api.close()
    async with aiohttp.ClientSession() as http:
        async with http.post(media_server.url + "/api/portraits", data=buffer.getvalue(),
                             headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 415 and "megapixels" in (await resp.json())["error"]  # BadImageError
    done.set()
    sampler.join()
    grown_mb = (peak[0] - baseline) / 2**20
    assert grown_mb < 200, f"memory grew {grown_mb:.0f} MB while refusing them"
