"""Unit tests: buffers, resampling, outbound tracks, configuration, ICE restriction, the
pipeline interface."""
from __future__ import annotations

import asyncio
import fractions
import time

import aioice.ice
import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipelines import PIPELINES
from pipelines.base import OptionError, Pipeline
from server.config import Settings, parse_settings
from server.ice import restrict_ice_hosts
from media.audio import MonoResampler
from media.buffers import AudioOverrun, AudioRing, LatestFrame
from tracks.outbound import FRAME_SAMPLES, OUT_RATE, SpeechAudioTrack, SynthVideoTrack, resample
from tracks.overlay import Badge


# --- AudioRing -----------------------------------------------------------------------------------
def test_ring_keeps_absolute_sample_clock_across_wraparound():
    ring = AudioRing(seconds=1.0, sample_rate=100)  # capacity 100 samples
    data = np.arange(250, dtype=np.float32)
    for chunk in np.array_split(data, 7):
        ring.write(chunk)
    assert ring.end == 250 and ring.start == 150
    np.testing.assert_array_equal(ring.read(160, 250), data[160:250])
    np.testing.assert_array_equal(ring.latest(30), data[220:250])
    with pytest.raises(AudioOverrun):
        ring.read(149, 160)
    with pytest.raises(ValueError):
        ring.read(240, 251)


def test_ring_write_larger_than_capacity_keeps_the_newest():
    ring = AudioRing(seconds=1.0, sample_rate=100)
    ring.write(np.arange(5, dtype=np.float32))
    ring.write(np.arange(1000, 1300, dtype=np.float32))
    assert ring.end == 305
    np.testing.assert_array_equal(ring.read(205, 305), np.arange(1200, 1300))


async def test_ring_wait_for_wakes_when_samples_arrive():
    ring = AudioRing(seconds=1.0, sample_rate=100)
    waiter = asyncio.create_task(ring.wait_for(30))
    ring.write(np.zeros(20, np.float32))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    ring.write(np.zeros(20, np.float32))
    await asyncio.wait_for(waiter, 1)


def test_latest_frame_counts_frames_replaced_unread():
    drops = []
    latest = LatestFrame(on_drop=lambda: drops.append(1))
    latest.put("a")
    latest.put("b")  # "a" never read
    assert latest.take() == "b"
    latest.put("c")
    assert latest.dropped == 1 and len(drops) == 1 and latest.received == 3
    assert latest.take() == "c" and latest.take() == "c"


# --- resampling ----------------------------------------------------------------------------------
def _tone(freq, rate, seconds=1.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x, rate):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


@pytest.mark.parametrize("rate,layout", [(48000, "stereo"), (44100, "mono"), (8000, "mono"), (16000, "stereo")])
def test_inbound_resampler_gives_16k_mono_float(rate, layout):
    tone = _tone(440, rate)
    channels = 2 if layout == "stereo" else 1
    pcm = (np.repeat(tone[None, :], channels, axis=0) * 32767).astype(np.int16)
    resampler = MonoResampler()
    out = []
    for start in range(0, len(tone), rate // 50):  # 20 ms frames, as WebRTC delivers them
        chunk = pcm[:, start:start + rate // 50]
        frame = av.AudioFrame.from_ndarray(chunk.T.reshape(1, -1).copy(), format="s16", layout=layout)
        frame.sample_rate = rate
        out.append(resampler(frame))
    out = np.concatenate(out)
    assert out.dtype == np.float32
    assert abs(len(out) - 16000) < 400  # 1 s, give or take the resampler's delay
    assert abs(_peak_hz(out, 16000) - 440) < 3
    assert 0.3 < np.abs(out[2000:]).max() < 0.6


def test_mono_resampler_averages_channels_whatever_the_layout():
    """Stereo goes through swresample's downmix scaled back, other layouts through numpy: both are
    the mean of the channels, resampled (the same as resampling the mean)."""
    rate, n = 48000, 4800
    left, right = _tone(440, rate)[:n], 0.5 * _tone(1000, rate)[:n]
    mean = (left + right) / 2

    def run(pcm, layout):
        resampler, out = MonoResampler(), []
        for start in range(0, n, 960):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start:start + 960]), format="fltp",
                                               layout=layout)
            frame.sample_rate = rate
            out.append(resampler(frame))
        return np.concatenate(out + [resampler.flush()])

    expected = run(mean[None, :].astype(np.float32), "mono")
    stereo = run(np.stack([left, right]).astype(np.float32), "stereo")
    quad = run(np.stack([left, right, left, right]).astype(np.float32), "quad")
    assert len(expected) == len(stereo) == len(quad) == 1600
    np.testing.assert_allclose(stereo, expected, atol=1e-5)
    np.testing.assert_allclose(quad, expected, atol=1e-5)


def test_outbound_resample_keeps_pitch_and_length():
    out = resample(_tone(1000, 16000), 16000, 48000)
    assert len(out) == 48000
    assert abs(_peak_hz(out, 48000) - 1000) < 3


# --- outbound tracks -----------------------------------------------------------------------------
async def test_speech_track_plays_queue_back_to_back_then_silence():
    track = SpeechAudioTrack(max_seconds=2.0)
    assert track.push_audio(np.full(8000, 0.5, np.float32), 16000)  # 0.5 s
    assert track.push_audio(np.full(1600, -0.5, np.float32), 16000)  # 0.1 s
    assert not track.push_audio(np.zeros(40000, np.float32), 16000)  # would overflow: refused whole
    frames = [await track.recv() for _ in range(40)]  # 0.8 s
    pts = [f.pts for f in frames]
    assert pts == [i * FRAME_SAMPLES for i in range(40)]
    assert all(f.sample_rate == OUT_RATE and f.samples == FRAME_SAMPLES for f in frames)
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32) / 32767
    assert np.all(pcm[100:23900] > 0.45)  # first push: 0.5 s at 48 kHz, no gap
    assert np.all(pcm[24100:28700] < -0.45)  # second push right after it
    assert np.all(np.abs(pcm[29000:]) < 0.01)  # then silence
    assert track.queued_seconds == 0


async def test_speech_track_paces_itself_in_real_time():
    track = SpeechAudioTrack()
    loop = asyncio.get_running_loop()
    await track.recv()
    t0 = loop.time()
    for _ in range(10):
        await track.recv()
    assert 0.17 < loop.time() - t0 < 0.35  # 10 frames of 20 ms


async def test_speech_track_clear_buffer():
    track = SpeechAudioTrack()
    track.push_audio(np.full(16000, 0.5, np.float32), 16000)
    track.clear_buffer()
    frame = await track.recv()
    assert np.all(frame.to_ndarray() == 0)


async def test_video_track_shows_camera_or_card_with_overlay_at_fixed_rate():
    camera = LatestFrame()
    items = [Badge("female", 0.9, title="voice")]
    track = SynthVideoTrack(camera, lambda: items, fps=25)
    card = (await track.recv()).to_ndarray(format="bgr24")
    assert card.shape == (360, 640, 3)
    image = np.full((240, 320, 3), 200, np.uint8)
    camera.put(av.VideoFrame.from_ndarray(image, format="bgr24"))
    frame = await track.recv()
    out = frame.to_ndarray(format="bgr24")
    assert out.shape == (240, 320, 3)
    assert out[10:40, -60:-10].mean() < 150  # the badge darkens the top-right corner
    assert abs(out[100:, :200].astype(float).mean() - 200) < 3  # the rest is the camera picture
    t0 = asyncio.get_running_loop().time()
    for _ in range(10):
        last = await track.recv()
    assert 0.3 < asyncio.get_running_loop().time() - t0 < 0.6
    assert last.pts - frame.pts == 10 * 3600


# --- configuration -------------------------------------------------------------------------------
def test_settings_from_flags_and_environment():
    s = parse_settings(["--port", "9000", "--ice-host", "127.0.0.1", "--ice-host", "::1",
                        "--pipelines", "gender", "--device", "cuda"], environ={})
    assert s.port == 9000 and s.ice_hosts == ["127.0.0.1", "::1"] and s.pipelines == ["gender"]
    assert s.device == "cuda"
    env = {"MMS_PORT": "9100", "MMS_ICE_HOSTS": "127.0.0.1", "MMS_MAX_SESSIONS": "3",
           "MMS_STUN": "stun:a:3478,stun:b:3478", "MMS_LOG_LEVEL": "debug"}
    s = parse_settings([], environ=env)
    assert (s.port, s.ice_hosts, s.max_sessions, s.log_level) == (9100, ["127.0.0.1"], 3, "DEBUG")
    assert s.stun == ["stun:a:3478", "stun:b:3478"]
    assert parse_settings(["--port", "1"], environ=env).port == 1  # flags win over the environment
    with pytest.raises(SystemExit):
        parse_settings(["--device", "tpu"], environ={})


def test_pipeline_settings_flags_environment_and_old_names():
    s = parse_settings(["--gender-backend", "wav2vec2", "--translation-asr-model", "tiny.en",
                        "--emotion-face-model", "faces/", "--talking-head-max-avatar-sessions", "4"], environ={})
    assert (s.gender.backend, s.translation.asr_model, s.emotion.face_model) == ("wav2vec2", "tiny.en", "faces/")
    assert s.talking_head.max_avatar_sessions == 4 and s.commentary.checkpoint == ""
    env = {"MMS_TRANSLATION_MT_BACKEND": "apertium", "MMS_TALKING_HEAD_PORTRAIT_DIR": "/tmp/p",
           "MMS_COMMENTARY_CHECKPOINT": "c.pt"}
    s = parse_settings([], environ=env)
    assert (s.translation.mt_backend, s.talking_head.portrait_dir, s.commentary.checkpoint) == \
        ("apertium", "/tmp/p", "c.pt")
    # today's flags and variables stay as aliases
    s = parse_settings(["--asr-model", "base", "--portrait-dir", "/tmp/q", "--max-avatar-sessions", "2"],
                       environ={"MMS_TTS_BACKEND": "transformers", "MMS_AVATAR_IDLE_TIMEOUT": "5"})
    assert (s.translation.asr_model, s.talking_head.portrait_dir, s.talking_head.max_avatar_sessions) == \
        ("base", "/tmp/q", 2)
    assert s.translation.tts_backend == "transformers" and s.talking_head.avatar_idle_timeout == 5.0
    for argv, env in ((["--gender-backend", "crystal-ball"], {}), ([], {"MMS_TRANSLATION_MT_BACKEND": "guess"})):
        with pytest.raises(SystemExit):
            parse_settings(argv, environ=env)
    assert Settings().gender.backend == "pitch"  # defaults without parsing


def test_security_settings():
    s = parse_settings(["--api-key", "a", "--api-key", "b", "--allowed-origin", "https://app.example",
                        "--auth-secret", "s", "--insecure"], environ={})
    assert (s.api_keys, s.allowed_origins, s.auth_secret, s.insecure) == (["a", "b"], ["https://app.example"], "s", True)
    s = parse_settings([], environ={"MMS_API_KEYS": "x,y", "MMS_INSECURE": "1", "MMS_AUTH_SECRET": "t"})
    assert (s.api_keys, s.insecure, s.auth_secret) == (["x", "y"], True, "t")
    assert parse_settings([], environ={"MMS_INSECURE": "no"}).insecure is False
    assert "key-xyz" not in repr(parse_settings(["--api-key", "key-xyz", "--auth-secret", "key-xyz"], environ={}))


# --- ICE restriction -----------------------------------------------------------------------------
async def test_ice_restriction_gathers_only_given_hosts():
    try:
        restrict_ice_hosts(["127.0.0.1"])
        conn = aioice.ice.Connection(ice_controlling=True)
        await conn.gather_candidates()
        assert {c.host for c in conn.local_candidates} == {"127.0.0.1"}
        # A remote candidate elsewhere, or an mDNS name, is never checked.
        for host in ("10.1.2.3", "abcd.local", "127.0.0.1"):
            await conn.add_remote_candidate(aioice.Candidate(
                foundation="1", component=1, transport="udp", priority=1, host=host, port=9, type="host"))
        assert [c.host for c in conn.remote_candidates] == ["127.0.0.1"]
        await conn.close()
        restrict_ice_hosts([])
        assert aioice.ice.get_host_addresses is not None
        with pytest.raises(ValueError):
            restrict_ice_hosts(["not-an-address"])
    finally:
        restrict_ice_hosts(["127.0.0.1"])


# --- pipeline interface --------------------------------------------------------------------------
class EchoPipeline(Pipeline):
    name = "echo-test"
    defaults = {"gain": 1.0}
    loads = 0

    @classmethod
    def load_shared(cls, settings, registry):
        cls.loads += 1
        return object()

    def validate(self, options):
        if options["gain"] < 0:
            raise OptionError("gain must be >= 0")

    async def run(self):
        await asyncio.Event().wait()


def test_pipeline_options_merge_and_validate():
    p = EchoPipeline(context=None, options={"gain": 2.0})
    assert p.options == {"gain": 2.0}
    with pytest.raises(OptionError, match="unknown option"):
        p.configure({"volume": 1})
    with pytest.raises(OptionError, match=">= 0"):
        p.configure({"gain": -1})
    assert p.options == {"gain": 2.0}  # a rejected change leaves the options as they were


def test_shared_models_load_once_per_registry_and_key():
    from concurrent.futures import ThreadPoolExecutor
    from inference import ModelRegistry
    EchoPipeline.loads = 0
    registry = ModelRegistry(Settings())
    with ThreadPoolExecutor(8) as pool:
        shared = list(pool.map(lambda _: registry.load(EchoPipeline), range(16)))
    assert EchoPipeline.loads == 1 and all(s is shared[0] for s in shared)
    ModelRegistry(Settings(device="cuda")).load(EchoPipeline)  # another server: its own models
    assert EchoPipeline.loads == 2


async def test_registry_records_batches_and_closes_what_it_owns():
    from inference import ModelRegistry
    from server.metrics import Metrics

    class Sweeper:
        closed = False

        def close(self):
            self.closed = True

    metrics = Metrics()
    registry = ModelRegistry(Settings(), metrics)
    model = registry.model("double", lambda items: [2 * x for x in items], max_batch=8)
    assert await asyncio.gather(*(model.predict(i) for i in range(4))) == [0, 2, 4, 6]
    assert b'mms_batch_size_count{pipeline="double"}' in metrics.exposition()
    sweeper = registry.keep(("test", "sweeper"), Sweeper)
    assert registry.keep(("test", "sweeper"), Sweeper) is sweeper
    await registry.close()
    assert sweeper.closed and model._executor._shutdown
    with pytest.raises(RuntimeError, match="closed"):
        registry.load(EchoPipeline)


def test_registry_names_match_classes():
    assert PIPELINES and all(name == cls.name and issubclass(cls, Pipeline) for name, cls in PIPELINES.items())


async def test_video_track_skips_missed_frames_instead_of_bursting():
    track = SynthVideoTrack(LatestFrame(), lambda: [], fps=25)
    track.source = lambda: np.zeros((240, 320, 3), np.uint8)  # a picture each tick (not the still card)
    first = await track.recv()
    time.sleep(0.5)  # the loop was starved for 12 frame periods
    late = await track.recv()
    assert late.pts - first.pts >= 11 * 3600  # jumped to the present
    t0 = asyncio.get_running_loop().time()
    frames = [await track.recv() for _ in range(5)]
    assert [f.pts - late.pts for f in frames] == [3600 * i for i in range(1, 6)]
    assert asyncio.get_running_loop().time() - t0 > 0.15  # paced again, not a burst of 12


async def test_session_bus_is_bounded_and_fans_out():
    from pipelines.context import PipelineContext

    bus = PipelineContext(settings=None, metrics=None, models=None)
    bus.publish("transcript", "nobody listens")  # no subscribers: dropped, no error
    a, b = bus.subscribe("transcript", maxsize=2), bus.subscribe("transcript", maxsize=2)
    for i in range(3):
        bus.publish("transcript", i)
    assert [a.get_nowait(), a.get_nowait()] == [1, 2]  # the oldest was dropped, never blocked
    assert b.qsize() == 2 and bus.subscribe("other").empty()


def test_latest_frame_converts_once_and_serialises_threads():
    from concurrent.futures import ThreadPoolExecutor
    latest = LatestFrame()
    image = np.zeros((240, 320, 3), np.uint8)  # smooth colours survive 4:2:0 subsampling
    image[..., 0] = np.arange(320)[None, :] * 255 // 320
    image[..., 1] = np.arange(240)[:, None] * 255 // 240
    image[..., 2] = 90
    latest.put(av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p"))
    frame = latest.take()
    # PyAV hangs when two threads convert one frame at once; all consumers go through to_array.
    with ThreadPoolExecutor(8) as pool:
        arrays = list(pool.map(lambda _: latest.to_array(frame), range(200)))
    assert all(a is arrays[0] for a in arrays) and not arrays[0].flags.writeable
    assert np.abs(arrays[0].astype(int) - image).mean() < 8
    assert latest.to_array(frame, "rgb24").shape == (240, 320, 3)


async def test_ring_chunks_are_consecutive_and_skip_to_the_present_when_overrun():
    ring = AudioRing(seconds=1.0, sample_rate=100)  # capacity 100
    chunks = ring.chunks(10, start=0)
    ring.write(np.arange(25, dtype=np.float32))
    first, second = await anext(chunks), await anext(chunks)
    assert first[0] == 0 and second[0] == 10
    np.testing.assert_array_equal(second[1], np.arange(10, 20))
    ring.write(np.arange(25, 400, dtype=np.float32))  # the reader is now a whole ring behind
    start, chunk = await anext(chunks)
    assert start == 390  # skipped to the present instead of failing
    np.testing.assert_array_equal(chunk, np.arange(390, 400))
    nxt = asyncio.ensure_future(anext(chunks))
    await asyncio.sleep(0.01)
    assert not nxt.done()  # waits for audio that has not arrived
    ring.write(np.arange(400, 410, dtype=np.float32))
    assert (await asyncio.wait_for(nxt, 1))[0] == 400


async def test_video_track_sends_an_unchanged_card_once_a_second_and_a_change_at_once():
    items: list = []
    track = SynthVideoTrack(LatestFrame(), lambda: items, fps=25)
    loop = asyncio.get_running_loop()
    first = await track.recv()
    t0 = loop.time()
    second = await track.recv()  # the same card: a second later
    assert 0.9 < loop.time() - t0 < 1.3 and second.pts - first.pts == 90000
    t0 = loop.time()
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.2)
    items.append(Badge("female", 0.9, title="voice"))  # something new to show: the next tick
    changed = await waiting
    assert loop.time() - t0 < 0.4 and changed.to_ndarray(format="bgr24")[10:40, -60:-10].mean() < 150
    assert track.sent == 3 and 24 <= track.held <= 30 and track.skipped == 0


async def test_video_track_holds_a_source_picture_handed_again():
    pictures = [np.zeros((240, 320, 3), np.uint8)]
    track = SynthVideoTrack(LatestFrame(), lambda: [], fps=25)
    track.source = lambda: pictures[-1]
    loop = asyncio.get_running_loop()
    await track.recv()
    t0 = loop.time()
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.3)
    assert not waiting.done()  # the same array: held, not re-sent
    pictures.append(np.full((240, 320, 3), 255, np.uint8))
    assert (await waiting).to_ndarray(format="bgr24").mean() > 200 and loop.time() - t0 < 0.5
    assert track.sent == 2 and track.held >= 6


async def test_small_camera_pictures_are_drawn_on_the_loop_and_the_same_as_on_a_worker(monkeypatch):
    import tracks.outbound

    loop = asyncio.get_running_loop()
    hops = []
    run_in_executor = loop.run_in_executor
    monkeypatch.setattr(loop, "run_in_executor", lambda *a: hops.append(a) or run_in_executor(*a))
    rng = np.random.default_rng(0)
    yuv = av.VideoFrame.from_ndarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8),
                                     format="bgr24").reformat(format="yuv420p")
    original = yuv.to_ndarray(format="yuv420p")
    pictures = []
    for inline_pixels in (320 * 240, 320 * 240 - 1):  # on the loop, then on a worker
        monkeypatch.setattr(tracks.outbound, "INLINE_PIXELS", inline_pixels)
        camera = LatestFrame()
        track = SynthVideoTrack(camera, lambda: [Badge("male", 0.8, title="voice")], fps=25)
        hops.clear()
        for _ in range(3):
            camera.put(yuv)
            pictures.append((await track.recv()).to_ndarray(format="yuv420p"))
        # the badge's sprite is made on a worker (text: 0.7 ms); then, small enough, on the loop
        assert len(hops) == (1 if inline_pixels == 320 * 240 else 3)
    for picture in pictures[1:]:
        np.testing.assert_array_equal(pictures[0], picture)
    assert (pictures[0] != original).any()  # the badge was drawn
    np.testing.assert_array_equal(yuv.to_ndarray(format="yuv420p"), original)  # on a copy, not on the camera's frame


async def test_video_track_draws_on_the_cameras_yuv_picture_without_converting_it():
    camera = LatestFrame()
    track = SynthVideoTrack(camera, lambda: [Badge("male", 0.8, title="voice")], fps=25)
    picture = av.VideoFrame.from_ndarray(np.full((480, 640, 3), 200, np.uint8), format="bgr24")
    camera.put(picture.reformat(format="yuv420p"))
    frame = await track.recv()
    assert frame.format.name == "yuv420p" and (frame.width, frame.height) == (640, 480)
    out = frame.to_ndarray(format="bgr24")
    assert out[20:60, -100:-20].mean() < 150 and abs(out[200:, :300].astype(float).mean() - 200) < 3
    camera.put(av.VideoFrame.from_ndarray(np.full((241, 321, 3), 90, np.uint8), format="bgr24")
               .reformat(format="yuv420p"))  # odd sides: drawn in BGR
    frame = await track.recv()
    assert frame.format.name == "bgr24" and (frame.width, frame.height) == (321, 241)


async def test_a_files_audio_goes_on_as_silence_once_it_ends():
    """client.py: the server must hear the pause after a file's last sentence to end it."""
    from client import ThenSilence

    class File(MediaStreamTrack):  # 5 frames of a 48 kHz file, then the end (as MediaPlayer's track)
        kind = "audio"
        sent = 0

        async def recv(self):
            if self.sent == 5:
                self.stop()
                raise MediaStreamError
            frame = av.AudioFrame.from_ndarray(np.full((1, 1920), 1000, np.int16), format="s16", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = 48000, self.sent * 960, fractions.Fraction(1, 48000)
            self.sent += 1
            return frame

    track = ThenSilence(File())
    frames = [await track.recv() for _ in range(5)]
    assert all(f.to_ndarray().max() == 1000 for f in frames)
    t0 = time.monotonic()
    silence = [await track.recv() for _ in range(10)]
    assert 0.15 < time.monotonic() - t0 < 0.4  # 20 ms each, in real time
    # in the file's own layout: aiortc's Opus encoder takes no other once set up for its frames
    assert all(f.to_ndarray().max() == 0 and f.samples == 960 and f.layout.name == "stereo" for f in silence)
    assert [f.pts for f in frames + silence] == [i * 960 for i in range(15)]  # one clock on
    track.stop()
    assert track.source.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await track.recv()
