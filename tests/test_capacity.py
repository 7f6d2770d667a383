"""Per-session media cost: the returned video follows the camera's size, nothing is encoded for a
client that receives no video, and the VP8 encoder settings patched into aiortc are where
``media/codecs.py`` expects them."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from tests.test_server import wait_until


async def _returned_size(url: str, width: int, height: int) -> tuple[int, int]:
    client = StreamClient(url, ["gender"])
    client.keep_frames = 1
    await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True),
                         PatternVideoTrack(width, height))
    try:
        # The first frames may be the card (sent before the camera's first frame arrived).
        await wait_until(lambda: client.frame_counts["video"] >= 15, timeout=15)
        frame = client.received["video"][-1][1]
        return frame.width, frame.height
    finally:
        await client.close()


async def test_returned_video_has_the_cameras_size(media_server):
    assert await _returned_size(media_server.url, 320, 240) == (320, 240)
    assert await _returned_size(media_server.url, 640, 480) == (640, 480)


async def test_no_outbound_video_for_a_client_that_receives_none(media_server):
    client = StreamClient(media_server.url, ["gender"])
    answer = await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True),
                                  PatternVideoTrack(320, 240), receive_video=False)
    try:
        session = media_server.server.sessions[answer["session_id"]]
        await wait_until(lambda: session.audio.end >= 16000, timeout=15)
        await asyncio.sleep(0.5)
        assert session.video_out.sent == 0 and client.frame_counts["video"] == 0
        assert all(s.track is None for s in session.pc.getSenders() if s.kind == "video")  # no encoder
        # gender reads no camera: the client's video is declined, so nothing is decoded either
        assert _video_direction(answer["sdp"]) == "inactive" and session.camera.received == 0
    finally:
        await client.close()


async def test_camera_is_kept_where_a_pipeline_reads_it(media_server):
    client = StreamClient(media_server.url, ["commentary"])
    answer = await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True),
                                  PatternVideoTrack(320, 240), receive_video=False)
    try:
        session = media_server.server.sessions[answer["session_id"]]
        assert _video_direction(answer["sdp"]) == "recvonly"
        assert "a=ptime:60" in answer["sdp"]  # commentary too takes 60 ms audio packets
        await wait_until(lambda: session.camera.received >= 5, timeout=15)
        assert session.video_out.sent == 0
        # decoded pictures go from aiortc's decoder thread straight to session.camera, not through the loop
        from media import codecs
        receiver = next(t.receiver for t in session.pc.getTransceivers() if t.kind == "video")
        route = receiver._RTCRtpReceiver__decoder_queue
        assert isinstance(route, codecs.VideoRoute) and route.sink == session.camera_decoded
        assert receiver.track._queue.empty()
        frames_in = session.metrics.frames_in.labels("video")._value.get()
        await wait_until(lambda: session.metrics.frames_in.labels("video")._value.get() >= frames_in + 10, timeout=5)
    finally:
        await client.close()


def test_with_ptime_names_the_audio_sections_only():
    from server.transports.webrtc import with_ptime

    offer = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=ptime:20\r\n"
             "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
    sections = with_ptime(offer, 60).split("m=")[1:]
    assert [m.count("a=ptime:") for m in sections] == [1, 0, 1]  # one each, the old one replaced
    assert all("a=ptime:60\r\n" in m for m in sections if m.startswith("audio"))


async def test_gender_asks_for_60_ms_audio_packets_and_reads_them(media_server):
    """A gender session's answer asks for 60 ms audio packets (a=ptime, as browsers follow it): a
    client that sends them gets the right result from a third of the packets."""
    from bench.packet_media import opus_packets, speech_track
    from testing.media import espeak, load_audio

    speech = np.concatenate([np.zeros(24000, np.float32), load_audio(espeak("en+f3"), 48000)])
    client = StreamClient(media_server.url, ["gender"])
    audio = speech_track(client, {ms: opus_packets(speech, ms) for ms in (20, 60)}, 24000)
    answer = await client.connect(audio, PatternVideoTrack(320, 240))
    try:
        audio_section = next(m for m in answer["sdp"].split("m=")[1:] if m.startswith("audio"))
        assert "a=ptime:60\r\n" in audio_section
        session = media_server.server.sessions[answer["session_id"]]
        receiver = next(t.receiver for t in session.pc.getTransceivers() if t.kind == "audio")

        async def received() -> int:
            stats = await receiver.getStats()
            return sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")

        event = await client.next_event("gender", timeout=20)
        assert event["label"] == "female" and audio.step == 2880, event  # it sent 60 ms packets
        before, t0 = await received(), asyncio.get_running_loop().time()
        await asyncio.sleep(2)
        rate = (await received() - before) / (asyncio.get_running_loop().time() - t0)
        assert 13 < rate < 20, rate  # 16.7 a second, not 50
        assert session.audio.end > 2 * 16000  # their audio, decoded
    finally:
        await client.close()


def _video_direction(sdp: str) -> str:
    video = [m for m in sdp.split("m=")[1:] if m.startswith("video")]
    assert len(video) == 1
    return next(d for d in ("sendrecv", "sendonly", "recvonly", "inactive") if f"a={d}" in video[0])


# --- the VP8 encoder settings patched into aiortc (media/codecs.py) -----------------------------
def test_aiortc_vp8_encoder_is_where_media_codecs_expects_it():
    """Fails when an aiortc upgrade changes what media/codecs.py mirrors or patches: then read
    aiortc's new Vp8Encoder.encode and update media/codecs.py to match."""
    import inspect
    import re

    from aiortc import rtcrtpsender
    from aiortc.codecs import vpx

    from media import codecs

    source = inspect.getsource(vpx.Vp8Encoder.encode)
    options = dict(re.findall(r'"([a-z-]+)": "([^"]+)"', source))
    assert options == codecs.AIORTC_OPTIONS  # the fixed options, with aiortc's defaults
    assert set(re.findall(r'"([a-z-]+)": str\(', source)) == {"bufsize", "minrate", "maxrate"}
    for line in ("self.codec.gop_size = 3000", "self.codec.qmin = 2", "self.codec.qmax = 56",
                 "number_of_threads(", "frame.width != self.codec.width", "> 0.1", "if self.codec is None:"):
        assert line in source, line
    assert list(inspect.signature(vpx.Vp8Encoder.encode).parameters) == ["self", "frame", "force_keyframe"]
    assert isinstance(vpx.Vp8Encoder.target_bitrate, property)
    # aiortc's sender makes its encoders through the module-level name install() replaces
    assert "get_encoder(codec)" in inspect.getsource(rtcrtpsender.RTCRtpSender._next_encoded_frame)
    assert rtcrtpsender.get_encoder in (codecs.get_encoder, codecs._aiortc_get_encoder)


def test_aiortc_audio_receiver_is_where_media_codecs_expects_it():
    """Fails when an aiortc upgrade moves what decode_audio_inline and release_audio_early
    replace (media/codecs.py): the receiver's decoder queue, how its packets reach it, and how
    its decoder thread reads it and ends the track."""
    import inspect

    from aiortc import rtcrtpreceiver
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    from media import codecs

    handle = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__decoder_queue.put((codec, encoded_frame))" in handle
    assert "self.__decoder_queue.put(None)" in inspect.getsource(RTCRtpReceiver._RTCRtpReceiver__stop_decoder)
    worker = inspect.getsource(rtcrtpreceiver.decoder_worker)
    for line in ("task = input_q.get()", "if task is None:", "output_q.put(None)", "get_decoder(codec)",
                 "decoder.decode(encoded_frame)"):
        assert line in worker, line
    assert "self.__decoder_queue," in inspect.getsource(RTCRtpReceiver.receive)

    class Transport:  # what the receiver's constructor reads of a DTLS transport
        state = "new"
        _register_rtp_receiver = _unregister_rtp_receiver = None

        def _send_rtp(self, data):
            pass

    receiver = RTCRtpReceiver("audio", Transport())
    receiver._track = rtcrtpreceiver.RemoteStreamTrack(kind="audio")  # as setRemoteDescription does
    assert codecs.release_audio_early(receiver)
    assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == 1
    assert codecs.decode_audio_inline(receiver)
    assert isinstance(receiver._RTCRtpReceiver__decoder_queue, codecs.InlineDecoding)
    assert not codecs.decode_audio_inline(receiver)  # once, and only before it starts


async def test_inline_audio_decoding_puts_frames_on_the_track_and_ends_it_on_stop():
    import fractions
    import threading

    import av
    from aiortc.codecs import get_capabilities
    from aiortc.jitterbuffer import JitterFrame

    from media import codecs
    from tracks.opus import encode, opus_encoder

    opus = next(c for c in get_capabilities("audio").codecs if c.mimeType == "audio/opus")
    track_queue: asyncio.Queue = asyncio.Queue()
    decoding = codecs.InlineDecoding(track_queue)
    worker = threading.Thread(target=decoding.get)  # as aiortc's decoder thread waits on it
    worker.start()
    encoder = opus_encoder()
    for i in range(5):
        tone = (np.sin(np.arange(960) * 0.05 + i) * 8000).astype(np.int16)
        decoding.put((opus, JitterFrame(data=encode(encoder, tone), timestamp=i * 960)))
    for i in range(5, 8):  # not Opus: skipped, counted, logged once
        decoding.put((opus, JitterFrame(data=b"\xff" * 3, timestamp=i * 960)))
    frames = [track_queue.get_nowait() for _ in range(track_queue.qsize())]
    assert len(frames) == decoding.decoded == 5 and decoding.errors == 3

    class Broken:
        def decode(self, encoded_frame):
            raise RuntimeError("a decoder's own bug")

    decoding._decoder = Broken()  # nothing reaches aiortc's receive loop, whatever the error
    decoding.put((opus, JitterFrame(data=encode(encoder, np.zeros(960, np.int16)), timestamp=8 * 960)))
    assert decoding.errors == 4 and track_queue.empty()
    assert all(isinstance(f, av.AudioFrame) and f.sample_rate == 48000 and f.samples == 960 for f in frames)
    assert frames[-1].pts == 4 * 960 and frames[-1].time_base == fractions.Fraction(1, 48000)
    assert worker.is_alive()
    decoding.put(None)  # the receiver stops: its thread wakes and ends the track
    worker.join(timeout=5)
    assert not worker.is_alive()


def test_opus_decoded_straight_to_16k_matches_aiortc_decoding_and_resampling():
    """media/opus.py: libopus is found in this install (PyAV's), and speech decoded by it at
    16 kHz mono is what aiortc's 48 kHz stereo decoding resampled to 16 kHz gives (same level,
    aligned, 25 dB or more SNR), for 20 and 60 ms packets; a bad packet is an error, and the
    stream goes on."""
    from aiortc import rtcrtpreceiver
    from aiortc.codecs import get_capabilities
    from aiortc.jitterbuffer import JitterFrame

    from bench.packet_media import opus_packets
    from media import codecs, opus
    from media.audio import MonoResampler
    from testing.media import espeak, load_audio

    assert opus.library() is not None
    speech = load_audio(espeak("en"), rate=48000)
    codec = next(c for c in get_capabilities("audio").codecs if c.mimeType == "audio/opus")
    for ms in (20, 60):
        packets = opus_packets(speech, ms)
        frames = [JitterFrame(data=p, timestamp=i * 48 * ms) for i, p in enumerate(packets)]
        aiortc, resampler = rtcrtpreceiver.get_decoder(codec), MonoResampler(16000)
        reference = np.concatenate([resampler(f) for fr in frames for f in aiortc.decode(fr)])
        track_queue: asyncio.Queue = asyncio.Queue()
        decoding = codecs.InlineDecoding(track_queue, rate=16000)
        for fr in frames[:3]:
            decoding.put((codec, fr))
        decoding.put((codec, JitterFrame(data=b"\xff" * 3, timestamp=0)))  # refused, counted
        for fr in frames[3:]:
            decoding.put((codec, fr))
        assert isinstance(decoding._decoder, opus.Opus16k) and decoding.errors == 1
        out = [track_queue.get_nowait() for _ in range(track_queue.qsize())]
        assert len(out) == len(packets) and all(
            f.sample_rate == 16000 and f.layout.name == "mono" and f.samples == 16 * ms for f in out)
        assert out[-1].pts == (len(packets) - 1) * 16 * ms
        mine = np.concatenate([MonoResampler(16000)(f) for f in out])  # already 16 kHz: taken as it is
        assert 0 <= len(mine) - len(reference) <= 32  # (the resampler holds its filter's last samples)
        mine = mine[:len(reference)]
        snr = 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - mine) ** 2))
        assert snr >= 25, (ms, snr)
        assert abs(np.std(mine) / np.std(reference) - 1) < 0.05
    with pytest.raises(ValueError):
        opus.Opus16k(44100)


def test_realtime_vp8_encoder_uses_its_options_and_aiortc_keeps_its_context(monkeypatch):
    import fractions

    import av
    from aiortc import rtcrtpsender
    from aiortc.codecs import get_capabilities

    from media import codecs

    made = {}  # id -> options of each context RealtimeVp8Encoder made, before libvpx consumed them

    def libvpx_context(*args):
        codec = make(*args)
        made[id(codec)] = dict(codec.options)
        return codec

    make = codecs.libvpx_context
    monkeypatch.setattr(codecs, "libvpx_context", libvpx_context)
    codecs.install()
    vp8 = next(c for c in get_capabilities("video").codecs if c.mimeType == "video/VP8")
    opus = next(c for c in get_capabilities("audio").codecs if c.mimeType == "audio/opus")
    encoder = rtcrtpsender.get_encoder(vp8)
    assert isinstance(encoder, codecs.RealtimeVp8Encoder)
    assert not isinstance(rtcrtpsender.get_encoder(opus), codecs.RealtimeVp8Encoder)
    for i, (w, h) in enumerate([(320, 240)] * 3 + [(640, 480)] * 2):
        frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), i * 40, np.uint8), format="bgr24")
        frame.pts, frame.time_base = i * 3600, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame)
        assert payloads
        assert (encoder.codec.width, encoder.codec.height) == (w, h)
        options = made[id(encoder.codec)]  # aiortc's encode used ours and made none of its own
        assert {k: options[k] for k in codecs.OPTIONS} == codecs.OPTIONS
        assert options["deadline"] == "realtime" and options["bufsize"] == str(encoder.target_bitrate)
    assert len(made) == 2  # one per size


# --- the returned audio: Opus encoded by the track, silence as DTX (tracks/opus.py) -------------
async def test_opus_track_sends_silence_as_dtx_and_speech_every_20_ms():
    import av

    from tracks.opus import DTX_FRAMES, HANGOVER, OpusSpeechTrack
    from tracks.outbound import FRAME_SAMPLES, OUT_RATE

    track = OpusSpeechTrack()
    track.opus = True
    tapped = []
    track.tap = tapped.append  # recording sees every frame of the play clock, DTX gaps included
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    silent = [await track.recv() for _ in range(3)]  # silence: one packet per 400 ms
    assert 0.75 < loop.time() - t0 < 1.1
    assert [p.pts for p in silent] == [i * DTX_FRAMES * FRAME_SAMPLES for i in range(3)]
    assert track.timestamp == (2 * DTX_FRAMES + 1) * FRAME_SAMPLES  # the play clock kept real time
    assert len(track.sent_frames) == 10 and all(not f.any() for f in track.sent_frames)
    assert [f.pts for f in tapped] == [i * FRAME_SAMPLES for i in range(2 * DTX_FRAMES + 1)]
    track.push_audio(np.full(4800, 0.5, np.float32), OUT_RATE)  # 100 ms of speech
    speech = [await track.recv() for _ in range(5 + HANGOVER + 1)]
    steps = np.diff([p.pts for p in [silent[-1], *speech]])
    assert steps[0] <= 2 * FRAME_SAMPLES  # the speech went out at the next tick
    assert list(steps[1:]) == [FRAME_SAMPLES] * (4 + HANGOVER) + [FRAME_SAMPLES]  # then every 20 ms
    decoder = av.CodecContext.create("libopus", "r")
    pcm = np.concatenate([f.to_ndarray()[0] for p in speech[:5] for f in decoder.decode(p)])
    assert np.abs(pcm.astype(np.float32) / 32767).max() > 0.3  # it decodes to the speech
    assert (await track.recv()).pts - speech[-1].pts == DTX_FRAMES * FRAME_SAMPLES  # DTX again


async def test_opus_track_sleeps_through_dtx_gaps_and_wakes_for_speech():
    """Without a recording, a DTX gap is one sleep (not a wake-up every 20 ms), yet the play
    clock, sent_frames and on_frame count every tick; speech pushed from another thread during a
    gap goes out at the next tick."""
    import threading

    from tracks.opus import DTX_FRAMES, HANGOVER, OpusSpeechTrack
    from tracks.outbound import FRAME_SAMPLES, OUT_RATE

    track = OpusSpeechTrack()
    track.opus = True
    ticks, frames = [], []
    tick = track._tick
    track._tick = lambda: (ticks.append(1), tick())[1]
    track.on_frame = lambda: frames.append(1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    silent = [await track.recv() for _ in range(4)]
    assert 1.1 < loop.time() - t0 < 1.5
    assert [p.pts for p in silent] == [i * DTX_FRAMES * FRAME_SAMPLES for i in range(4)]
    assert len(ticks) == 4  # one wake-up per silence packet (it was 3 * DTX_FRAMES + 1)
    assert len(frames) == 3 * DTX_FRAMES + 1 and track.timestamp == (3 * DTX_FRAMES + 1) * FRAME_SAMPLES
    assert len(track.sent_frames) == 10 and all(not f.any() for f in track.sent_frames)
    pushed = []

    def push():  # a pipeline's thread, 150 ms into the gap
        pushed.append(loop.time())
        track.push_audio(np.full(4800, 0.5, np.float32), OUT_RATE)

    loop.call_later(0.15, threading.Thread(target=push).start)
    speech = await track.recv()
    assert loop.time() - pushed[0] < 0.045  # at the next tick, not at the next silence packet
    assert speech.pts - silent[-1].pts == len(frames[3 * DTX_FRAMES + 1:]) * FRAME_SAMPLES
    assert 0.15 * OUT_RATE <= speech.pts - silent[-1].pts <= 0.2 * OUT_RATE
    assert speech.pts == track.timestamp - FRAME_SAMPLES  # the play clock counted the gap's ticks
    rest = [await track.recv() for _ in range(4 + HANGOVER + 1)]
    assert np.diff([p.pts for p in [speech, *rest]]).tolist() == [FRAME_SAMPLES] * (4 + HANGOVER + 1)


async def test_opus_track_sends_frames_where_opus_was_not_negotiated():
    import av

    from tracks.opus import OpusSpeechTrack

    frame = await OpusSpeechTrack().recv()
    assert isinstance(frame, av.AudioFrame)


def test_i420_frame_is_from_ndarray_faster_with_padded_planes():
    import av

    from tracks.outbound import copy_frame, i420_frame, i420_views

    for width, height in ((320, 240), (330, 250), (1282, 722), (2, 2)):  # 330 and 1282: padded lines
        image = np.random.default_rng(width).integers(0, 256, (height, width, 3), np.uint8)
        planes = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p").to_ndarray()
        frame = i420_frame(planes)
        assert (frame.width, frame.height, frame.format.name) == (width, height, "yuv420p")
        assert np.array_equal(frame.to_ndarray(format="yuv420p"), planes)
        assert np.array_equal(frame.to_ndarray(format="bgr24"),
                              av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="bgr24"))
        # copy_frame: a frame of its own (the returned video's, drawn on through i420_views)
        copy = copy_frame(frame)
        assert copy is not frame and np.array_equal(copy.to_ndarray(format="yuv420p"), planes)
        luma, u, v = i420_views(copy)
        assert luma.shape == (height, width) and u.shape == v.shape == ((height + 1) // 2, (width + 1) // 2)
        luma[:] = 16
        assert (copy.to_ndarray(format="yuv420p")[:height] == 16).all()
        assert np.array_equal(frame.to_ndarray(format="yuv420p"), planes)  # the original untouched
        bgr = av.VideoFrame.from_ndarray(image, format="bgr24")
        assert np.array_equal(copy_frame(bgr).to_ndarray(), image)


def test_paired_bench_measures_two_servers_together_in_both_orders(tmp_path):
    """bench/paired.py end to end, as small as it goes: both servers up at once with a session each,
    one short window per order, a ratio from their CPU and every session's video flowing."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, str(root / "bench" / "paired.py"), "--sessions", "1", "--windows", "1",
                          "--duration", "3", "--warmup", "2"], cwd=root, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "MMS_BENCH_RESULTS": str(tmp_path)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "**ours / echo = " in run.stdout
    result = json.loads((tmp_path / "paired.json").read_text())
    orders = [[w["order"] for w in windows] for windows in result["runs"]]
    assert orders == [["echo/ours"], ["ours/echo"]]
    for window in (w for windows in result["runs"] for w in windows):
        assert window["echo_fps_min"] > 15 and window["ours_fps_min"] > 15, window
        assert window["echo_cpu_pct_per_session"] > 0 and window["ours_cpu_pct_per_session"] > 0
        assert window["ratio"] == round(window["ours_cpu_pct_per_session"] / window["echo_cpu_pct_per_session"], 3)
    assert 0.05 < result["ratio"] < 5
    for flags in (["--sessions", "0"], ["--windows", "31"], ["--servers", "ours,ours"]):  # refused, nothing started
        refused = subprocess.run([sys.executable, str(root / "bench" / "paired.py"), *flags], cwd=root,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "error:" in refused.stderr, (flags, refused.stderr[-500:])
