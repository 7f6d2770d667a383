"""The one place where the server changes aiortc's private code: the returned video's encoder,
inbound audio (``release_audio_early``, ``decode_audio_inline``), the camera's receiver
(``route_video``, ``bound_video_wait``) and the relay's seams. ``tests/test_capacity.py`` and
``tests/test_relay.py`` fail when an aiortc upgrade moves any of it.

The encoder. aiortc's ``Vp8Encoder.encode`` (aiortc/codecs/vpx.py) creates its libvpx context on
the first frame, and again when the frame size changes or the target bitrate moves by more than
10%, with fixed options (``AIORTC_OPTIONS``). ``RealtimeVp8Encoder`` creates that context itself, on
the same conditions and with the same options except ``OPTIONS``, so aiortc's ``encode`` finds it
ready; the rest (bitrate from REMB, keyframes on PLI, packetization) stays aiortc's. ``install()``
makes aiortc's RTP senders in this process use it for VP8 (the server calls it). Measured with
``bench/capacity.py --codec`` (README, Benchmark, for the figures): no temporal denoiser,
``cpu-used`` -12 and ``static-thresh`` 1200 each take a fifth to a sixth off the encoder's time
within 0.2–0.4 dB, and the picture stops gaining from bits early, so the bitrate is capped by the
frame size (``bitrate_cap``).

Inbound audio. aiortc decodes every track on a thread of its own: each 20 ms Opus packet goes to
the thread and its audio comes back to the event loop as a task that puts it on the track's
queue, two thread hops and a task for ~30 µs of decoding, 50 times a second per session.
``decode_audio_inline`` decodes audio right where aiortc hands over the packet, on the loop,
and puts it on the track's queue itself; aiortc's decoder thread is still started, and waits idle
until the receiver stops (then it ends the track, as before). Where the audio only goes to the
pipelines, Opus is decoded straight to their 16 kHz mono (``media/opus.py``). Video is decoded on
aiortc's thread (0.3 ms a frame at 320x240; on the loop it measured no better), but the camera's
frames no longer come back through the loop (``route_video``'s ``sink``): each hop there was a
task, a queue and a wake-up, ~130 µs of the loop's time on an idle loop, 25 times a second.

The camera relayed (tracks/relay.py has the whole story): ``route_video`` puts the relay in front
of the video receiver's decoder; ``on_keyframe_request``, ``on_picture_loss`` and ``ask_keyframe``
carry picture loss both ways; ``cap_bitrate_estimate`` keeps the camera's REMB at most what the
client's REMB to our sender says (``on_bitrate_estimate``), as an SFU passes a receiver's on.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import threading
import time
from typing import Callable

import av
from aiortc import rtcrtpreceiver, rtcrtpsender, rtp
from aiortc.codecs import vpx
from aiortc.jitterbuffer import MAX_MISORDER, JitterBuffer
from aiortc.utils import uint16_add

from media import opus

log = logging.getLogger(__name__)

# The options aiortc 1.16 sets in Vp8Encoder.encode (bitrate-derived ones filled in per context).
AIORTC_OPTIONS = {
    "cpu-used": "-6",
    "deadline": "realtime",
    "lag-in-frames": "0",
    "noise-sensitivity": "4",
    "overshoot-pct": "15",
    "partitions": "0",
    "static-thresh": "1",
    "undershoot-pct": "100",
}
# What the server changes: no temporal denoiser; speed 12 of 16 (negative: a fixed speed, not
# adapted to the deadline). Speed 16 loses 6 dB at 640x480; 12 keeps PSNR within 0.3 dB of 6.
# Macroblocks whose difference from the last picture has a sum of squares under 1200 (about 2
# levels RMS: sensor noise) are skipped: -17% (320x240) / -20% (640x480) encoder time for 0.2 /
# 0.4 dB; 2000 would save a third for 0.6 / 1.1 dB.
OPTIONS = {"cpu-used": "-12", "noise-sensitivity": "0", "static-thresh": "1200"}
# aiortc follows the receiver's bandwidth estimate up to 1.5 Mbps whatever the size (on loopback or
# a LAN, 1-1.5 Mbps for 320x240). Without the denoiser the picture stops gaining from bits much
# sooner: 0.05 bit per pixel at 25 fps, at least aiortc's own minimum, 250 kbps (320x240:
# 250 kbps, 34.9 dB against the input; aiortc's settings at 1.5 Mbps: 35.3 dB. 640x480: 384 kbps,
# 36.3 dB; aiortc at 1.5 Mbps: 36.4 dB; bench/capacity.py --codec).
BITS_PER_PIXEL = 0.05
MIN_BITRATE_CAP = vpx.MIN_BITRATE


def bitrate_cap(width: int, height: int, fps: float = 25.0) -> int:
    return max(MIN_BITRATE_CAP, int(BITS_PER_PIXEL * width * height * fps))


def libvpx_context(width: int, height: int, bitrate: int, options: dict[str, str]) -> av.CodecContext:
    """A libvpx encoder context as aiortc's Vp8Encoder makes it, with ``options`` over aiortc's."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.gop_size = 3000  # kf_max_dist
    codec.qmin = 2  # rc_min_quantizer
    codec.qmax = 56  # rc_max_quantizer
    codec.options = {
        **AIORTC_OPTIONS,
        "bufsize": str(bitrate),  # rc_buf_sz = 1000 ms
        "minrate": str(bitrate),  # minrate = maxrate = bit_rate: CBR
        "maxrate": str(bitrate),
        **options,
    }
    codec.thread_count = vpx.number_of_threads(width * height, multiprocessing.cpu_count())
    return codec


class RealtimeVp8Encoder(vpx.Vp8Encoder):
    options = OPTIONS
    cap_bitrate = True
    cap: int | None = None  # bits per second, from the frame size (bitrate_cap)
    packed = False  # the last frame sent was a forwarded one (pack), not one of this encoder's

    @property
    def target_bitrate(self) -> int:
        """aiortc's target (the receiver's estimate, 250 kbps to 1.5 Mbps), at most ``cap``."""
        bitrate = vpx.Vp8Encoder.target_bitrate.fget(self)
        return min(bitrate, self.cap) if self.cap else bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        vpx.Vp8Encoder.target_bitrate.fset(self, bitrate)

    def encode(self, frame: av.VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        self.cap = bitrate_cap(frame.width, frame.height) if self.cap_bitrate else None
        bitrate = self.target_bitrate
        if (self.codec is None or (frame.width, frame.height) != (self.codec.width, self.codec.height)
                or abs(bitrate - self.codec.bit_rate) / self.codec.bit_rate > 0.1):
            self.codec = libvpx_context(frame.width, frame.height, bitrate, self.options)
        if self.packed:  # the receiver's pictures are the camera's: ours start again from a keyframe
            force_keyframe, self.packed = True, False
        return super().encode(frame, force_keyframe)

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        self.packed = True
        return super().pack(packet)


_aiortc_get_encoder = rtcrtpsender.get_encoder


def get_encoder(codec):
    if codec.mimeType.lower() == "video/vp8":
        return RealtimeVp8Encoder()
    return _aiortc_get_encoder(codec)


def install() -> None:
    """aiortc's RTP senders in this process encode VP8 with ``RealtimeVp8Encoder`` (idempotent)."""
    rtcrtpsender.get_encoder = get_encoder


# --- inbound audio ------------------------------------------------------------------------------
class InlineDecoding:
    """In place of an audio receiver's decoder queue (aiortc's ``put((codec, encoded_frame))`` on
    the loop, ``put(None)`` when it stops; its thread's ``get()``): decodes on ``put``, with the
    decoder aiortc would choose, straight onto the track's queue."""

    def __init__(self, track_queue: asyncio.Queue, rate: int | None = None):
        self.output = track_queue
        self.rate = rate  # Opus decoded to mono at this rate (media/opus.py); None: aiortc's decoder
        self.decoded = 0  # frames
        self.errors = 0  # packets that did not decode
        self._stopped = threading.Event()
        self._decoder = None
        self._codec_name: str | None = None

    def put(self, task) -> None:
        if task is None:
            self._stopped.set()  # aiortc's thread wakes, ends the track and exits
            return
        codec, encoded_frame = task
        if codec.name != self._codec_name:
            self._decoder, self._codec_name = self._new_decoder(codec), codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except Exception as exc:  # as aiortc's thread does: skip it, keep the decoder's state. Any
            # error: it would otherwise reach aiortc's receive loop, and end the connection.
            self.errors += 1
            if self.errors % 250 == 1:  # the first, then one every 5 s of a stream of bad packets
                log.warning("failed to decode %s audio (%d packets so far): %s", codec.name, self.errors, exc)
            return
        for frame in frames:
            self.output.put_nowait(frame)
            self.decoded += 1

    def _new_decoder(self, codec):
        if self.rate and codec.name.lower() == "opus" and opus.library() is not None:
            return opus.Opus16k(self.rate)
        return rtcrtpreceiver.get_decoder(codec)

    def get(self) -> None:
        self._stopped.wait()
        return None


def release_audio_early(receiver) -> bool:
    """aiortc's audio jitter buffer holds 4 packets (80 ms) for reordering before it releases
    one. The server analyses audio rather than playing it, and every pipeline's latency starts
    here: each packet is released as soon as the next one arrives (20 ms)."""
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if not hasattr(buffer, "_prefetch"):
        return False
    buffer._prefetch = 1
    return True


def decode_audio_inline(receiver, rate: int | None = None) -> bool:
    """Before an audio receiver starts: its packets are decoded on the loop (``InlineDecoding``),
    Opus to mono at ``rate`` where given (``media/opus.py``). Returns False, changing nothing,
    where aiortc's private attributes are not what this expects (``tests/test_capacity.py``
    fails then)."""
    decoder_queue = getattr(receiver, "_RTCRtpReceiver__decoder_queue", None)
    track_queue = getattr(getattr(receiver, "_track", None), "_queue", None)
    if (not isinstance(decoder_queue, queue.Queue) or not isinstance(track_queue, asyncio.Queue)
            or getattr(receiver, "_RTCRtpReceiver__decoder_thread", True) is not None):  # not started
        return False
    receiver._RTCRtpReceiver__decoder_queue = InlineDecoding(track_queue, rate)
    return True


# --- the camera relay (tracks/relay.py) ---------------------------------------------------------
def vp8_keyframe(data: bytes) -> bool:
    """Whether a VP8 frame is a key frame (RFC 6386 9.1: frame tag bit 0 clear, then the start
    code 9d 01 2a)."""
    return len(data) >= 10 and not data[0] & 1 and data[3:6] == b"\x9d\x01\x2a"


class VideoRoute:
    """In place of a video receiver's decoder queue (aiortc's ``put((codec, encoded_frame))`` on
    the loop, for each complete frame; ``put(None)`` when it stops; its thread's ``get()``):
    each frame goes first to ``route(codec, encoded_frame)``, on the loop, and on to aiortc's
    decoder thread only where that returns True. With a ``sink``, that thread decodes in ``get()``
    and hands each picture to ``sink(frame)`` itself, not to the track through the loop; a frame
    that does not decode sets ``decode_error`` (aiortc then asks the camera for a keyframe)."""

    def __init__(self, route, sink=None, decode_error: threading.Event | None = None):
        self.route, self.sink, self.decode_error = route, sink, decode_error
        self.errors = 0
        self._queue: queue.Queue = queue.Queue()
        self._decoder, self._codec_name = None, None

    def put(self, task) -> None:
        if task is None or self.route(*task):
            self._queue.put(task)

    def get(self):
        while True:
            task = self._queue.get()
            if task is None or self.sink is None:
                return task  # the end (aiortc's thread ends the track), or aiortc's own decoding
            codec, encoded_frame = task
            if codec.name != self._codec_name:
                self._decoder, self._codec_name = rtcrtpreceiver.get_decoder(codec), codec.name
            try:
                frames = self._decoder.decode(encoded_frame)
            except Exception as exc:  # as aiortc's thread does for FFmpeg's: keep the decoder's state
                self.errors += 1
                if self.errors % 100 == 1:
                    log.warning("failed to decode %s video (%d frames so far): %s", codec.name, self.errors, exc)
                if self.decode_error is not None:
                    self.decode_error.set()
                continue
            for frame in frames:
                self.sink(frame)


def route_video(receiver, route, sink=None) -> bool:
    """Before a video receiver starts: its frames pass through ``route`` (``VideoRoute``), and
    with ``sink`` its pictures go to ``sink(frame)``, called on aiortc's decoder thread. Returns
    False, changing nothing, where aiortc's private attributes are not what this expects."""
    decoder_queue = getattr(receiver, "_RTCRtpReceiver__decoder_queue", None)
    decode_error = getattr(receiver, "_RTCRtpReceiver__decoder_error", None)
    if (not isinstance(decoder_queue, queue.Queue) or not isinstance(decode_error, threading.Event)
            or getattr(receiver, "_RTCRtpReceiver__decoder_thread", True) is not None):  # not started
        return False
    receiver._RTCRtpReceiver__decoder_queue = VideoRoute(route, sink, decode_error)
    return True


def on_keyframe_request(sender, callback) -> bool:
    """``callback()`` too whenever the client asks ``sender`` for a keyframe (RTCP PLI or FIR;
    aiortc's ``_send_keyframe`` then only flags its encoder's next frame)."""
    original = getattr(sender, "_send_keyframe", None)
    if not callable(original):
        return False

    def send_keyframe() -> None:
        original()
        callback()

    sender._send_keyframe = send_keyframe
    return True


def on_picture_loss(receiver, callback) -> bool:
    """``callback()`` too whenever ``receiver`` itself reports lost pictures to the camera (its
    jitter buffer overflowed waiting for a lost packet and dropped frames, or its decoder failed:
    aiortc then sends a PLI)."""
    original = getattr(receiver, "_send_rtcp_pli", None)
    if not callable(original):
        return False

    async def send_pli(media_ssrc: int) -> None:
        callback()
        await original(media_ssrc)

    receiver._send_rtcp_pli = send_pli
    return True


def on_bitrate_estimate(sender, callback) -> bool:
    """``callback(bps)`` too whenever the client reports the bitrate it can receive of what
    ``sender`` sends (RTCP REMB naming the sender's SSRC; aiortc sets its encoder's target from it)."""
    original = getattr(sender, "_handle_rtcp_packet", None)
    if not callable(original):
        return False

    async def handle_rtcp_packet(packet) -> None:
        if isinstance(packet, rtp.RtcpPsfbPacket) and packet.fmt == rtp.RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = rtp.unpack_remb_fci(packet.fci)
            except ValueError:
                pass
            else:
                if sender._ssrc in ssrcs:
                    callback(bitrate)
        await original(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet
    return True


class CappedEstimator:
    """In place of a video receiver's remote bitrate estimator (aiortc's ``add(...)`` for each
    packet, returning ``(bps, ssrcs)`` when a REMB is due): what it tells the camera is at most
    ``cap()`` (None: no cap). A cap below what was last told goes out with the next packet,
    not at the estimator's next report (every 0.5 s or later)."""

    def __init__(self, estimator, cap: Callable[[], int | None]):
        self.estimator = estimator
        self.cap = cap
        self.told: int | None = None  # the last bitrate sent to the camera

    def add(self, **packet) -> tuple[int, list[int]] | None:
        remb = self.estimator.add(**packet)
        limit = self.cap()
        if limit is not None:
            if remb is not None:
                remb = (min(remb[0], limit), remb[1])
            elif self.told is not None and limit < self.told:
                remb = (limit, list(self.estimator.ssrcs))
        if remb is not None:
            self.told = remb[0]
        return remb


def cap_bitrate_estimate(receiver, cap: Callable[[], int | None]) -> bool:
    """Before a video receiver starts: the bitrate it asks the camera for (RTCP REMB) is at most
    ``cap()`` (``CappedEstimator``). Returns False, changing nothing, where aiortc's private
    attributes are not what this expects."""
    estimator = getattr(receiver, "_RTCRtpReceiver__remote_bitrate_estimator", None)
    if not callable(getattr(estimator, "add", None)) or not isinstance(getattr(estimator, "ssrcs", None), dict):
        return False
    receiver._RTCRtpReceiver__remote_bitrate_estimator = CappedEstimator(estimator, cap)
    return True


def ask_keyframe(receiver) -> asyncio.Task | None:
    """Ask the sender of what ``receiver`` receives for a keyframe (RTCP PLI, every SSRC heard
    in the last 10 s; not a loss: ``on_picture_loss``'s callback is not called); None where
    there is none to ask."""
    send_pli = getattr(type(receiver), "_send_rtcp_pli", None)
    sources = [s.source for s in receiver.getSynchronizationSources()]
    if send_pli is None or not sources:
        return None

    async def ask() -> None:
        for ssrc in sources:
            await send_pli(receiver, ssrc)

    return asyncio.get_running_loop().create_task(ask())


# --- a lost video packet: waited for a bounded time -----------------------------------------------
MAX_HOLE_WAIT = 1.0  # seconds a video frame waits for a lost packet (its retransmission) before it is given up


class BoundedJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer releases frames in order, and waits for a lost packet until
    512 newer ones have come (5-16 s of video at 100-30 packets a second) before it gives the frame
    up and asks for a keyframe: a packet lost for good (its retransmission too) froze the video
    that long. This one gives up after ``MAX_HOLE_WAIT``: the packets up to the hole and the rest
    of the frames it broke are dropped, and ``add`` returns the PLI flag, as aiortc's does on overflow."""

    def __init__(self, capacity: int = 512, prefetch: int = 0, is_video: bool = True):
        super().__init__(capacity, prefetch, is_video)
        self._hole_since: float | None = None
        self._newest: int | None = None  # the newest sequence number seen

    def _hole(self) -> int | None:
        """Packets from the origin to the first missing one, where newer packets wait behind it."""
        if self._origin is None or self._newest is None:
            return None
        span = uint16_add(self._newest, -self._origin)  # the newest packet's place after the origin
        if span >= self.capacity:
            return None
        for count in range(span):
            if self._packets[(self._origin + count) % self.capacity] is None:
                return count
        return None

    def add(self, packet) -> tuple[bool, object]:
        sequence = packet.sequence_number
        restart = self._origin is not None and MAX_MISORDER <= uint16_add(self._origin, -sequence) < uint16_add(
            sequence, -self._origin)  # aiortc's add() starts over from this packet
        if self._newest is None or restart or 0 < uint16_add(sequence, -self._newest) < 0x8000:
            self._newest = sequence
        pli_flag, frame = super().add(packet)
        if frame is not None:
            self._hole_since = None
            return pli_flag, frame
        hole = self._hole()
        if hole is None:
            self._hole_since = None
            return pli_flag, frame
        now = time.monotonic()
        if self._hole_since is None:
            self._hole_since = now
        if now - self._hole_since < MAX_HOLE_WAIT:
            return pli_flag, frame
        self._hole_since = None
        self.remove(hole + 1)  # what came before the hole, and the hole
        skip = next((count for count in range(self.capacity)
                     if self._packets[(self._origin + count) % self.capacity] is not None), None)
        if skip is not None:
            self.remove(skip)  # up to the first packet after the hole
            timestamp = self._packets[self._origin % self.capacity].timestamp
            while (current := self._packets[self._origin % self.capacity]) is not None and current.timestamp == timestamp:
                self.remove(1)  # the rest of the frame the hole broke
        return True, self._remove_frame(packet.sequence_number)


def bound_video_wait(receiver) -> bool:
    """Before a video receiver starts: a lost packet holds its frames back ``MAX_HOLE_WAIT`` at
    most (``BoundedJitterBuffer``). False, changing nothing, where aiortc's private attributes
    are not what this expects."""
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if type(buffer) is not JitterBuffer or not getattr(buffer, "_is_video", False) or buffer._origin is not None:
        return False
    receiver._RTCRtpReceiver__jitter_buffer = BoundedJitterBuffer(buffer.capacity, buffer._prefetch)
    return True
