"""The camera relayed (tracks/relay.py): while nothing is drawn on the returned video and nothing
reads the camera, the camera's VP8 frames go back as they came, and every switch between that and
drawing happens at a keyframe, with no gap in the returned video and nothing the client cannot decode."""
from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import av
import numpy as np
import pytest
from aiortc import rtp as aiortc_rtp
from aiortc.jitterbuffer import JitterFrame

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from media import codecs
from media.buffers import LatestFrame
from tests.test_server import wait_until
from tracks import relay as relay_module
from tracks.relay import CameraRelay

VP8 = SimpleNamespace(mimeType="video/VP8", name="VP8")
H264 = SimpleNamespace(mimeType="video/H264", name="H264")


def vp8_frames(count: int, keyframes: tuple[int, ...] = (0,), size=(64, 48)) -> list[bytes]:
    """Real libvpx output: keyframes where asked, inter frames between."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = *size, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 25)
    encoder.options = {"deadline": "realtime", "lag-in-frames": "0"}
    encoder.gop_size = 1000
    out = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), i * 7 % 256, np.uint8), format="bgr24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        frame.pict_type = av.video.frame.PictureType.I if i in keyframes else av.video.frame.PictureType.NONE
        out.append(b"".join(bytes(p) for p in encoder.encode(frame)))
    return out


class Receiver:
    """What the relay reads of aiortc's RTCRtpReceiver: the camera's SSRC, when it was last heard,
    and its PLI."""

    def __init__(self):
        self.plis: list[int] = []
        self.heard = datetime.now(timezone.utc) - timedelta(seconds=9)

    def getSynchronizationSources(self):
        return [SimpleNamespace(source=1234, timestamp=self.heard)]

    async def _send_rtcp_pli(self, ssrc: int) -> None:
        self.plis.append(ssrc)


def rtp(sequence: int, timestamp: int):
    from aiortc.rtp import RtpPacket

    packet = RtpPacket(payload_type=96, sequence_number=sequence % 65536, timestamp=timestamp)
    packet._data = bytes([sequence % 256])  # what aiortc's receiver sets (the depayloaded data)
    return packet


def test_jitter_buffer_gives_a_lost_packet_up_after_a_bounded_wait(monkeypatch):
    monkeypatch.setattr(codecs, "MAX_HOLE_WAIT", 0.05)
    buffer = codecs.BoundedJitterBuffer()
    out = [buffer.add(rtp(s, 3000 * (s // 2))) for s in range(65530, 65534)]  # two frames of two packets
    assert [f.timestamp if f else None for _, f in out] == [None, None, 3000 * 32765, None]
    for s in (65535, 65536, 65537, 65538, 65539):  # 65534 (the next frame's first) is lost
        assert buffer.add(rtp(s, 3000 * (s // 2))) == (False, None)  # held back, waiting
    time.sleep(0.06)
    pli, frame = buffer.add(rtp(65540, 3000 * 32770))  # waited long enough: given up, a keyframe asked for
    # dropped: what came before the hole (65532-65533: whether complete cannot be told), and the
    # rest of the frame after it (65535); out: 65536 + 65537, then on as before
    assert pli and frame.timestamp == 3000 * 32768 and frame.data == bytes([0, 1])
    pli, frame = buffer.add(rtp(65541, 3000 * 32770))
    assert not pli and frame.timestamp == 3000 * 32769 and frame.data == bytes([2, 3])
    # a retransmission in time: nothing given up
    buffer = codecs.BoundedJitterBuffer()
    for s in (0, 1, 3, 4):
        assert buffer.add(rtp(s, 3000 * (s // 2)))[0] is False
    pli, frame = buffer.add(rtp(2, 3000))
    assert not pli and frame.data == bytes([0, 1])


def test_vp8_keyframe_reads_the_frame_tag():
    frames = vp8_frames(6, keyframes=(0, 4))
    assert [codecs.vp8_keyframe(f) for f in frames] == [True, False, False, False, True, False]
    assert not codecs.vp8_keyframe(b"") and not codecs.vp8_keyframe(b"\x00" * 12)


async def test_relay_switches_at_keyframes_and_asks_the_camera_for_them(monkeypatch):
    monkeypatch.setattr(relay_module, "KEYFRAME_INTERVAL", 0.0)
    camera, wanted = LatestFrame(), [False]
    relay = CameraRelay(camera, lambda: wanted[0])
    receiver = Receiver()
    relay.attach(receiver, sends_vp8=True)
    frames = vp8_frames(12, keyframes=(0, 5, 9))

    def route(i: int) -> bool:
        return relay.route(VP8, JitterFrame(frames[i], timestamp=i * 3600))

    assert route(0) and route(1) and not relay.active()  # drawn: everything decoded
    wanted[0] = True  # e.g. the overlay switched off: forwarding waits for a keyframe, asked for
    assert route(2) and not relay.forwarding
    await asyncio.sleep(0)
    assert receiver.plis == [1234]
    assert not route(5) and relay.active()  # the keyframe: forwarded, and no longer decoded
    assert not route(6)
    assert [(t, e) for _, t, e in [await relay.next(), await relay.next()]] == [(5 * 3600, 1), (6 * 3600, 1)]
    wanted[0] = False  # drawing again: decoding starts at the next keyframe; forwarding goes on meanwhile
    assert not route(7) and relay.active()
    assert route(9) and relay.active()  # decoded from here, still forwarded: the decoder has no picture yet
    camera.put(object())  # the decoder's first picture
    assert not relay.active() and route(10)
    await asyncio.sleep(0)
    assert len(receiver.plis) == 2
    assert await relay.next() is None  # forwarding stopped: the track draws


async def test_relay_starts_again_from_a_keyframe_when_the_sender_falls_behind(monkeypatch):
    monkeypatch.setattr(relay_module, "KEYFRAME_INTERVAL", 0.0)
    monkeypatch.setattr(relay_module, "MAX_FRAMES", 4)
    forwarded = []
    relay = CameraRelay(LatestFrame(), lambda: True, on_frame=lambda: forwarded.append(1))
    receiver = Receiver()
    relay.attach(receiver, sends_vp8=True)
    frames = vp8_frames(12, keyframes=(0, 8))
    for i in range(8):  # nobody pulls: the fifth frame overflows the bound
        relay.route(VP8, JitterFrame(frames[i], timestamp=i))
    assert relay.dropped == 8 and not relay._frames  # 5, 6 and 7 too: they follow frames the client never got
    relay.route(VP8, JitterFrame(frames[8], timestamp=8))
    assert (await relay.next())[1] == 8 and len(forwarded) == 9  # frames seen, forwarded or not: the client is heard
    await asyncio.sleep(0)
    assert receiver.plis  # a keyframe was asked for at the overflow


async def test_client_picture_loss_reaches_the_camera_only_while_relaying(monkeypatch):
    monkeypatch.setattr(relay_module, "KEYFRAME_INTERVAL", 0.0)
    wanted = [False]
    relay = CameraRelay(LatestFrame(), lambda: wanted[0])
    receiver = Receiver()
    relay.attach(receiver, sends_vp8=True)
    relay.keyframe_requested()  # drawn: our encoder answers it (aiortc's flag), the camera is not asked
    await asyncio.sleep(0)
    assert receiver.plis == []
    wanted[0] = True
    relay.route(VP8, JitterFrame(vp8_frames(1)[0], timestamp=0))
    relay.keyframe_requested()
    await asyncio.sleep(0)
    assert relay.forwarding and receiver.plis == [1234]


async def test_relay_holds_still_after_frames_our_receiver_lost():
    relay = CameraRelay(LatestFrame(), lambda: True)
    receiver = Receiver()
    relay.attach(receiver, sends_vp8=True)
    assert codecs.on_picture_loss(receiver, relay.picture_lost)
    frames = vp8_frames(6, keyframes=(0, 4))
    relay.route(VP8, JitterFrame(frames[0], timestamp=0))
    relay.route(VP8, JitterFrame(frames[1], timestamp=1))
    await codecs.ask_keyframe(receiver)  # our own request: not a loss, forwarding goes on
    relay.route(VP8, JitterFrame(frames[2], timestamp=2))
    await receiver._send_rtcp_pli(1234)  # as aiortc's jitter buffer does when it dropped frames
    relay.route(VP8, JitterFrame(frames[3], timestamp=3))  # refers to a lost frame: not forwarded
    relay.route(VP8, JitterFrame(frames[4], timestamp=4))  # the keyframe asked for
    relay.route(VP8, JitterFrame(frames[5], timestamp=5))
    assert [t for _, t, _ in relay._frames] == [0, 1, 2, 4, 5] and relay.dropped == 1
    assert receiver.plis == [1234, 1234]


async def test_relay_stops_when_the_camera_goes_silent_and_not_for_other_codecs(monkeypatch):
    monkeypatch.setattr(relay_module, "STALL_SECONDS", 0.2)
    camera = LatestFrame()
    camera.put(object())
    relay = CameraRelay(camera, lambda: True)
    receiver = Receiver()
    relay.attach(receiver, sends_vp8=True)
    frames = vp8_frames(2)
    assert not relay.route(VP8, JitterFrame(frames[0], timestamp=0))
    assert camera.frame is None  # nothing stale to draw when relaying stops
    await relay.next()
    waiting = asyncio.ensure_future(relay.next())
    for _ in range(10):  # packets still arrive, frames held back (a loss): no stall
        receiver.heard = datetime.now(timezone.utc)
        await asyncio.sleep(0.05)
    assert not waiting.done() and relay.forwarding
    started = time.monotonic()
    assert await waiting is None and time.monotonic() - started >= 0.1  # silent since: stopped
    assert not relay.forwarding and not relay.decoding  # both wait for the camera's next keyframe
    relay.route(VP8, JitterFrame(frames[0], timestamp=2))  # the camera's next keyframe: relayed again
    assert (await relay.next())[1:] == (2, 2)
    waiting = asyncio.ensure_future(relay.next())
    await asyncio.sleep(0.01)
    relay.attach(Receiver(), sends_vp8=True)  # a new connection: the track waiting stops waiting
    assert await asyncio.wait_for(waiting, 0.1) is None
    assert relay.route(H264, JitterFrame(b"\x00\x00\x00\x01", timestamp=1))  # not VP8: decoded, never forwarded
    h264_only = CameraRelay(LatestFrame(), lambda: True)
    h264_only.attach(Receiver(), sends_vp8=False)  # VP8 in, but not negotiated back
    assert h264_only.route(VP8, JitterFrame(frames[0], timestamp=0)) and not h264_only.forwarding


async def test_aiortc_video_path_is_where_the_relay_expects_it():
    """Fails when an aiortc upgrade moves what media/codecs.py's relay seams rely on."""
    import inspect

    from aiortc.codecs import vpx
    from aiortc.rtcrtpreceiver import RTCRtpReceiver
    from aiortc.rtcrtpsender import RTCRtpSender

    handle = inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    assert "RTCP_PSFB_PLI" in handle and "self._send_keyframe()" in handle
    next_frame = inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "self.__encoder.pack(data)" in next_frame and "isinstance(data, Frame)" in next_frame
    assert "self.picture_id" in inspect.getsource(vpx.Vp8Encoder.pack)
    assert list(inspect.signature(RTCRtpReceiver._send_rtcp_pli).parameters) == ["self", "media_ssrc"]
    handle_rtp = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__decoder_queue.put((codec, encoded_frame))" in handle_rtp
    assert "await self._send_rtcp_pli(packet.ssrc)" in handle_rtp  # what on_picture_loss sees
    # route_video's sink: aiortc's decoder thread reads the queue, and its decode-error flag asks for a PLI
    assert "self.__decoder_error," in inspect.getsource(RTCRtpReceiver.receive)
    assert "if self.__decoder_error.is_set():" in handle_rtp

    class Transport:
        state = "new"
        _register_rtp_receiver = _unregister_rtp_receiver = None

        def _send_rtp(self, data):
            pass

    assert "JitterBuffer(capacity=512, is_video=True)" in inspect.getsource(RTCRtpReceiver.__init__)
    assert "self.__jitter_buffer.add(packet)" in handle_rtp  # what BoundedJitterBuffer stands in for
    receiver = RTCRtpReceiver("video", Transport())
    assert codecs.bound_video_wait(receiver)
    assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, codecs.BoundedJitterBuffer)
    assert receiver._RTCRtpReceiver__jitter_buffer.capacity == 512
    assert not codecs.bound_video_wait(receiver)  # once
    assert not codecs.bound_video_wait(RTCRtpReceiver("audio", Transport()))  # video only
    assert codecs.route_video(receiver, lambda codec, frame: True)
    assert isinstance(receiver._RTCRtpReceiver__decoder_queue, codecs.VideoRoute)
    assert not codecs.route_video(receiver, lambda codec, frame: True)  # once
    sender = RTCRtpSender("video", Transport())
    asked = []
    assert codecs.on_keyframe_request(sender, lambda: asked.append(1))
    sender._send_keyframe()
    assert asked == [1] and sender._RTCRtpSender__force_keyframe
    # the bitrate seams: the client's REMB reaches the sender's _handle_rtcp_packet; the receiver
    # asks its estimator with these keywords, and sends a REMB of what it returns
    assert "unpack_remb_fci(packet.fci)" in handle and "self._ssrc in ssrcs" in handle
    assert "self.__remote_bitrate_estimator.add(" in handle_rtp and "pack_remb_fci(*remb)" in handle_rtp
    for keyword in ("abs_send_time=", "arrival_time_ms=", "payload_size=", "ssrc="):
        assert keyword in handle_rtp
    estimates = []
    assert codecs.on_bitrate_estimate(sender, estimates.append)
    remb = aiortc_rtp.RtcpPsfbPacket(fmt=aiortc_rtp.RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                              fci=aiortc_rtp.pack_remb_fci(300_000, [sender._ssrc]))
    other = aiortc_rtp.RtcpPsfbPacket(fmt=aiortc_rtp.RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                               fci=aiortc_rtp.pack_remb_fci(100_000, [sender._ssrc + 1]))
    await sender._handle_rtcp_packet(remb)
    await sender._handle_rtcp_packet(other)  # another stream's
    await sender._handle_rtcp_packet(aiortc_rtp.RtcpPsfbPacket(fmt=aiortc_rtp.RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=b"junk"))
    assert estimates == [300_000]
    assert codecs.cap_bitrate_estimate(receiver, lambda: None)
    assert isinstance(receiver._RTCRtpReceiver__remote_bitrate_estimator, codecs.CappedEstimator)
    assert not codecs.cap_bitrate_estimate(RTCRtpReceiver("audio", Transport()), lambda: None)  # video only


def test_video_route_decodes_on_aiortcs_thread_into_its_sink():
    """With a sink, aiortc's decoder thread (here its own decoder_worker) decodes in VideoRoute.get
    and hands pictures to the sink: nothing reaches the track's queue through the loop; a frame
    that does not decode sets the receiver's decode-error flag (aiortc then sends a PLI) and the
    next keyframe decodes; None still ends the track."""
    import threading

    from aiortc import rtcrtpreceiver
    from aiortc.codecs import get_capabilities
    from aiortc.jitterbuffer import JitterFrame

    vp8 = next(c for c in get_capabilities("video").codecs if c.mimeType == "video/VP8")
    frames = vp8_frames(12, keyframes=(0, 6))
    pictures, threads = [], []

    def sink(frame):
        pictures.append(frame)
        threads.append(threading.current_thread())

    decode_error = threading.Event()
    route = codecs.VideoRoute(lambda codec, frame: True, sink, decode_error)
    loop = asyncio.new_event_loop()
    track_queue: asyncio.Queue = asyncio.Queue()
    worker = threading.Thread(target=rtcrtpreceiver.decoder_worker, args=(loop, route, track_queue, decode_error))
    worker.start()
    try:
        for i, data in enumerate(frames[:6]):
            route.put((vp8, JitterFrame(data=data, timestamp=i * 3600)))
        route.put((vp8, JitterFrame(data=b"\x00" * 3, timestamp=0)))  # not a VP8 frame
        for i, data in enumerate(frames[6:]):
            route.put((vp8, JitterFrame(data=data, timestamp=(6 + i) * 3600)))
        deadline = time.monotonic() + 10
        while len(pictures) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(pictures) >= 6 and all((p.width, p.height) == (64, 48) for p in pictures)
        assert all(t is worker for t in threads)  # on aiortc's thread, not the loop
        assert decode_error.is_set() and route.errors >= 1
        route.put(None)
        worker.join(timeout=5)
        assert not worker.is_alive()
        loop.run_until_complete(asyncio.sleep(0.05))  # aiortc's worker ends the track through the loop
        assert track_queue.qsize() == 1 and track_queue.get_nowait() is None
    finally:
        route.put(None)
        worker.join(timeout=5)
        loop.close()


def test_capped_estimator_tells_the_camera_at_most_the_cap_and_at_once():
    from aiortc.rate import RemoteBitrateEstimator

    cap = [None]
    estimator = codecs.CappedEstimator(RemoteBitrateEstimator(), lambda: cap[0])
    told = []
    for i in range(3000):  # 30 s of a 1 Mbps stream: 100 packets a second, 1250 bytes each
        now = i * 10
        if i == 1500:
            cap[0] = 200_000  # the client can take 200 kbps
        if i == 2500:
            cap[0] = None  # drawn again: no cap
        remb = estimator.add(abs_send_time=((now << 18) // 1000) & 0xFFFFFF, arrival_time_ms=now,
                             payload_size=1250, ssrc=1234)
        if remb is not None:
            assert remb[1] == [1234]
            told.append((now, remb[0]))
    before = [b for t, b in told if t < 15000]
    capped = [b for t, b in told if 15000 <= t < 25000]
    after = [b for t, b in told if t >= 25000]
    assert max(before) > 400_000  # the estimate the cap applies to
    assert told[len(before)] == (15000, 200_000)  # with the next packet, not the next report
    assert capped and max(capped) <= 200_000
    assert after and max(after) > 400_000  # lifted: the estimate goes on as it was


def test_encoder_starts_with_a_keyframe_after_forwarded_frames():
    from aiortc.codecs import get_capabilities

    encoder = codecs.get_encoder(next(c for c in get_capabilities("video").codecs if c.mimeType == "video/VP8"))

    def encode(i: int) -> bytes:
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 9, np.uint8), format="bgr24")
        frame.pts, frame.time_base = i * 3600, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame)
        return payloads[0][4:]  # after the payload descriptor (with its 15-bit picture id)

    assert codecs.vp8_keyframe(encode(0)) and not codecs.vp8_keyframe(encode(1))
    packet = av.Packet(vp8_frames(1)[0])
    packet.pts, packet.time_base = 2 * 3600, fractions.Fraction(1, 90000)
    assert encoder.pack(packet)[0]
    assert codecs.vp8_keyframe(encode(3)) and not codecs.vp8_keyframe(encode(4))


# --- end to end: a client of the server ---------------------------------------------------------
@pytest.fixture
def decode_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="aiortc.rtcrtpreceiver")
    return lambda: [r.getMessage() for r in caplog.records if "failed to decode" in r.getMessage()]


def pattern_psnr(frame) -> float:
    """PSNR (dB) of a returned frame against client.PatternVideoTrack's picture, at its best shift."""
    image = frame.to_ndarray(format="bgr24").astype(np.float64)
    height, width = image.shape[:2]
    best = 0.0
    for shift in range(0, 256, 4):
        expected = np.empty_like(image)
        expected[..., 0] = (np.arange(width)[None, :] + shift) % 256
        expected[..., 1] = np.arange(height)[:, None] * 255 // height
        expected[..., 2] = 128
        mse = np.mean((image - expected) ** 2)
        best = max(best, 10 * np.log10(255 ** 2 / max(mse, 1e-9)))
    return best


def silence() -> ArrayAudioTrack:
    return ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True)


def assert_camera_picture(client: StreamClient) -> None:
    """The last returned frame is the camera's picture, whole (the client decoded every frame)."""
    frame = client.received["video"][-1][1]
    assert (frame.width, frame.height) == (320, 240) and pattern_psnr(frame) > 25


@contextlib.asynccontextmanager
async def relayed_client(media_server):
    """A ``gender`` client with its overlay off, and its session, once 25 camera frames went back."""
    client = StreamClient(media_server.url, ["gender"], options={"gender": {"overlay": False}})
    client.keep_frames = 1
    answer = await client.connect(silence(), PatternVideoTrack(320, 240))
    try:
        session = media_server.server.sessions[answer["session_id"]]
        await wait_until(lambda: session.relay.forwarded >= 25, timeout=15)
        yield client, session
    finally:
        await client.close()


async def test_camera_relayed_while_nothing_is_drawn_and_drawn_again_on_config(media_server, decode_warnings):
    arrivals: list[float] = []
    async with relayed_client(media_server) as (client, session):
        relay = session.relay

        async def watch(seconds: float) -> None:  # the returned video's arrivals
            end = time.monotonic() + seconds
            count = client.frame_counts["video"]
            while time.monotonic() < end:
                if client.frame_counts["video"] != count:
                    count = client.frame_counts["video"]
                    arrivals.append(time.monotonic())
                await asyncio.sleep(0.01)
            assert_camera_picture(client)

        def overlay(on: bool) -> None:
            client.send({"type": "config", "pipeline": "gender", "options": {"overlay": on}})

        await watch(1.0)
        decoded = session.camera.received
        assert relay.forwarding and decoded <= 1  # the camera's first frame is a keyframe: forwarded from it
        for run in (1, 2):
            overlay(True)  # drawn: decoded from the camera's next keyframe, then encoded
            await watch(2.0)
            assert not relay.forwarding and session.camera.received > decoded + 10
            forwarded, sent = relay.forwarded, session.video_out.sent
            await watch(1.0)
            assert relay.forwarded == forwarded and session.video_out.sent > sent + 15
            overlay(False)  # relayed again from the camera's next keyframe
            await watch(2.0)
            assert relay.forwarding and relay.forwarded > forwarded + 15 and relay.epoch == run + 1
            decoded = session.camera.received
        overlay(True)  # after forwarded frames, the encoder starts again with a keyframe of its own
        await watch(2.0)
        assert not relay.forwarding and session.camera.received > decoded + 10
        assert relay.keyframes_asked >= 5  # one for each switch
        relayed = session.metrics.registry.get_sample_value("mms_video_relayed_total")
        assert relayed == relay.forwarded  # (/metrics)
        gaps = np.diff(arrivals)
        assert len(arrivals) > 250 and gaps.max() < 0.3, (len(arrivals), gaps.max())  # never stopped
        assert decode_warnings() == []  # neither the client nor the server got a frame it could not decode


async def test_relayed_camera_is_asked_for_at_most_what_the_client_can_receive(media_server):
    """While relaying, the REMB the server sends the camera is at most the client's REMB for the
    returned video (passed on at once); drawn again, the server's own estimate applies."""
    async with relayed_client(media_server) as (client, session):
        for receiver in client.pc.getReceivers():  # the client's own estimates would move the cap
            receiver._RTCRtpReceiver__remote_bitrate_estimator = None
        camera = session.relay.receiver
        told: list[tuple[float, int]] = []  # REMBs the server sent the camera
        send_rtcp = camera._send_rtcp

        async def spy(packet) -> None:
            if isinstance(packet, aiortc_rtp.RtcpPsfbPacket) and packet.fmt == aiortc_rtp.RTCP_PSFB_APP:
                told.append((time.monotonic(), aiortc_rtp.unpack_remb_fci(packet.fci)[0]))
            await send_rtcp(packet)

        camera._send_rtcp = spy
        await wait_until(lambda: len(told) >= 3, timeout=10)
        own = told[-1][1]
        cap = own // 4
        sender = next(s for s in session.pc.getSenders() if s.track and s.track.kind == "video")
        remb = aiortc_rtp.RtcpPsfbPacket(fmt=aiortc_rtp.RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                                         fci=aiortc_rtp.pack_remb_fci(cap, [sender._ssrc]))
        at, n = time.monotonic(), len(told)
        await sender._handle_rtcp_packet(remb)  # as the client's REMB arrives
        await wait_until(lambda: len(told) > n, timeout=5)
        assert told[n][1] == cap and told[n][0] - at < 0.3  # with the camera's next packet
        await asyncio.sleep(1.5)
        assert len(told) > n + 1 and max(b for _, b in told[n:]) <= cap
        client.send({"type": "config", "pipeline": "gender", "options": {"overlay": True}})
        await wait_until(lambda: not session.relay.forwarding, timeout=10)
        m = len(told)
        await wait_until(lambda: len(told) >= m + 2, timeout=10)
        assert told[-1][1] > cap  # drawn: encoded at the client's pace, the camera at the server's estimate


async def test_camera_drawn_not_relayed_by_default_and_where_a_pipeline_reads_it(media_server):
    for pipelines, options in ((["gender"], {}), (["commentary"], {"commentary": {"overlay": False}})):
        client = StreamClient(media_server.url, pipelines, options=options)
        answer = await client.connect(silence(), PatternVideoTrack(320, 240))
        try:
            session = media_server.server.sessions[answer["session_id"]]
            await wait_until(lambda: session.video_out.sent >= 20 and session.camera.received >= 20, timeout=15)
            assert session.relay.forwarded == 0 and not session.relay.forwarding
        finally:
            await client.close()


async def test_camera_relayed_again_after_a_resume(media_server, decode_warnings):
    """A new connection's camera starts its own stream: the relay follows it from its first
    keyframe, on the new connection's clock, and the returned video goes on."""
    async with relayed_client(media_server) as (client, session):
        await client.next_event("ready")  # (its resume token)
        relay = session.relay
        first_receiver = relay.receiver
        await client.pc.close()
        await wait_until(lambda: session.peer.lost)
        forwarded, returned = relay.forwarded, client.frame_counts["video"]
        await client.resume(silence(), PatternVideoTrack(320, 240))
        await client.next_event("resumed")
        await wait_until(lambda: relay.forwarded >= forwarded + 25
                         and client.frame_counts["video"] >= returned + 25, timeout=15)
        assert relay.receiver is not first_receiver and relay.forwarding and relay.epoch == 2
        assert session.camera.received <= 1
        assert_camera_picture(client)
        assert decode_warnings() == []


async def test_relayed_video_recovers_from_frames_lost_for_good(media_server, decode_warnings, monkeypatch):
    """Camera packets lost for good (their retransmissions too): the receiver gives up on them
    after MAX_HOLE_WAIT (media/codecs.py BoundedJitterBuffer; aiortc's own waited for 512 more
    packets, 16 s of this stream) and asks the camera for a keyframe, and the relay forwards
    nothing until it: the client's picture holds still, then goes on whole; it never decodes
    frames that refer to missing ones."""
    async with relayed_client(media_server) as (client, session):
        relay = session.relay
        receiver = relay.receiver
        handle, rtx_ssrcs = receiver._handle_rtp_packet, receiver._RTCRtpReceiver__rtx_ssrc
        lost: set[int] = set()

        async def lossy(packet, arrival_time_ms):
            rtx = packet.ssrc in rtx_ssrcs
            sequence = int.from_bytes(packet.payload[:2], "big") if rtx else packet.sequence_number
            if not rtx and len(lost) < 3 and packet.payload:
                lost.add(sequence)  # three packets of the camera, never to arrive
            if sequence not in lost:
                await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = lossy
        dropped, asked = relay.dropped, relay.keyframes_asked
        monkeypatch.setattr(relay_module, "STALL_SECONDS", 1.0)  # frames held back longer than this: not a stall
        lost_at = time.monotonic()
        await wait_until(lambda: relay.dropped > dropped, timeout=5)  # the frames after the loss: not forwarded
        forwarded = relay.forwarded
        await wait_until(lambda: relay.forwarded >= forwarded + 25, timeout=5)  # from the keyframe on
        assert time.monotonic() - lost_at < 4
        assert relay.forwarding and len(lost) == 3 and session.camera.received <= 1
        assert relay.keyframes_asked == asked and relay.epoch == 1  # aiortc's receiver asked; the picture held
        await asyncio.sleep(0.3)
        assert_camera_picture(client)
        assert decode_warnings() == []
