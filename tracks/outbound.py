"""Outbound tracks. Both pace themselves off the wall clock (aiortc pulls ``recv()``) and never
wait on a model: they send whatever is ready at each tick.

* ``SpeechAudioTrack``: 20 ms frames of 48 kHz mono s16; silence until a pipeline pushes speech,
  which is resampled once on the way in and queued back to back (no gaps, no overlaps).
* ``SynthVideoTrack``: a fixed frame rate; each frame is the newest inbound camera frame (or a
  placeholder card, or a pipeline-provided source) with the session's overlay drawn on it
  (``tracks/overlay.py``: subtitles, badges, chat); or, while its ``relay`` is active, the
  camera's own VP8 frames as they came (``tracks/relay.py``: nothing drawn, nothing to encode).
"""
from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from typing import Callable

import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, Packet, VideoFrame

from media.audio import from_pcm16, resample, to_pcm16
from tracks.overlay import Overlay
from tracks.relay import CameraRelay

OUT_RATE = 48000
FRAME_SAMPLES = OUT_RATE // 50  # 20 ms
VIDEO_CLOCK = 90000
SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)  # what most 20 ms of returned audio are
SILENCE.flags.writeable = False
STILL_INTERVAL = 1.0  # seconds between repeats of an unchanged card (no camera, nothing new drawn)
# A camera picture up to this size is drawn on right on the event loop when that is only a copy of
# its planes and sprites already made blended on it (0.1-0.2 ms, about what the hop to a worker
# thread and back costs); larger ones, new sprites (0.7 ms of text for a badge), colour
# conversions and pipelines' pictures go to a worker thread.
INLINE_PIXELS = 640 * 480
MAX_LATE = 1.0  # seconds a paced track may be behind the clock before it stops catching up


class Pacer:
    """Sleeps until the wall-clock time of the next media timestamp."""

    def __init__(self, clock_rate: int):
        self.clock_rate = clock_rate
        self.start: float | None = None

    async def wait(self, timestamp: int) -> None:
        if self.start is None:
            self.start = time.monotonic()
            return
        delay = self.start + timestamp / self.clock_rate - time.monotonic()
        if delay < -MAX_LATE:  # nobody pulled for a while (a session waiting to resume): go on from now
            self.start -= delay
        elif delay > 0:
            await asyncio.sleep(delay)

    def behind(self, timestamp: int) -> float:
        """Seconds by which ``timestamp`` is already late."""
        if self.start is None:
            return 0.0
        return time.monotonic() - (self.start + timestamp / self.clock_rate)


class SpeechAudioTrack(MediaStreamTrack):
    kind = "audio"
    sample_rate = OUT_RATE

    def __init__(self, max_seconds: float = 60.0, on_frame: Callable[[], None] | None = None):
        super().__init__()
        self.on_frame = on_frame
        self.max_samples = int(max_seconds * OUT_RATE)
        self._chunks: deque[tuple[np.ndarray, str | None]] = deque()  # (int16 at OUT_RATE, who queued it)
        self._queued = 0
        self._pacer = Pacer(OUT_RATE)
        self.timestamp = 0  # samples sent so far: the track's play clock
        self.rejected_samples = 0
        # Read-only tap for lip sync (talking_head): the most recently sent frames, newest last.
        self.sent_frames: deque[np.ndarray] = deque(maxlen=10)  # 200 ms of int16 at OUT_RATE
        self.tap: Callable[[AudioFrame], None] | None = None  # sees every sent frame (recording)

    @property
    def queued_seconds(self) -> float:
        return self._queued / OUT_RATE

    def push_audio(self, samples: np.ndarray, sample_rate: int, source: str | None = None) -> bool:
        """Queue float speech (-1..1) to play after what is already queued; ``source`` names who
        queued it (a pipeline), for ``clear_buffer``. Returns False (and queues nothing) if it
        would overflow the bounded queue."""
        pcm = to_pcm16(resample(samples, sample_rate, OUT_RATE))
        if self._queued + len(pcm) > self.max_samples:
            self.rejected_samples += len(pcm)
            return False
        if len(pcm):
            self._chunks.append((pcm, source))
            self._queued += len(pcm)
        return True

    def clear_buffer(self) -> dict[str | None, float]:
        """Drop what is queued: the next frame sent is silence, and lips that follow the play
        clock close (the recently sent frames are forgotten too). Returns seconds dropped per source."""
        dropped: dict[str | None, float] = {}
        for pcm, source in self._chunks:
            dropped[source] = dropped.get(source, 0.0) + len(pcm) / OUT_RATE
        self._chunks.clear()
        self._queued = 0
        self.sent_frames.clear()
        return dropped

    def audio_around_clock(self, before: float = 0.02, after: float = 0.02) -> np.ndarray:
        """Float32 audio at OUT_RATE around the play clock: the last ``before`` seconds sent and
        up to ``after`` seconds queued to be sent next. Read-only; safe from another thread (it
        copies snapshots, and list() of a deque runs without releasing the GIL)."""
        sent = list(self.sent_frames)
        past = np.concatenate(sent)[-int(before * OUT_RATE):] if sent and before > 0 else np.zeros(0, np.int16)
        ahead, need = [], int(after * OUT_RATE)
        for chunk, _ in list(self._chunks):
            if need <= 0:
                break
            ahead.append(chunk[:need])
            need -= len(ahead[-1])
        return from_pcm16(np.concatenate([past, *ahead]))

    def _next_samples(self) -> np.ndarray:
        """The next 20 ms to send (read-only: silence is one shared frame)."""
        if not self._chunks:
            return SILENCE
        out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._chunks:
            chunk, source = self._chunks[0]
            take = min(FRAME_SAMPLES - filled, len(chunk))
            out[filled:filled + take] = chunk[:take]
            filled += take
            if take == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = (chunk[take:], source)
        self._queued -= filled
        return out

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self.timestamp)
        samples = self._next_samples()
        self.sent_frames.append(samples)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = self.timestamp
        frame.time_base = fractions.Fraction(1, OUT_RATE)
        self.timestamp += FRAME_SAMPLES
        if self.on_frame:
            self.on_frame()
        if self.tap:
            self.tap(frame)
        return frame


def _rows(plane) -> np.ndarray:
    """A frame's plane as rows of bytes, line padding included (writable)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)


def i420_frame(image: np.ndarray) -> VideoFrame:
    """A YUV 4:2:0 picture (planes stacked, as ``to_ndarray(format="yuv420p")`` gives them) as a
    frame: each plane copied into the frame's own, 4-7x faster than PyAV's ``from_ndarray``
    (640x480: 30 instead of 130-200 µs)."""
    height, width = image.shape[0] * 2 // 3, image.shape[1]
    frame = VideoFrame(width, height, "yuv420p")
    chroma = height // 2 * width // 2
    flat = image.reshape(-1)
    planes = (flat[:height * width].reshape(height, width),
              flat[height * width:height * width + chroma].reshape(height // 2, width // 2),
              flat[height * width + chroma:].reshape(height // 2, width // 2))
    for plane, array in zip(frame.planes, planes):
        _rows(plane)[:array.shape[0], :array.shape[1]] = array
    return frame


def i420_views(frame: VideoFrame) -> tuple[np.ndarray, ...]:
    """Writable views of a yuv420p frame's Y, U and V planes, without their line padding: what
    ``Overlay.draw(..., i420=True)`` draws on."""
    return tuple(_rows(plane)[:plane.height, :plane.width] for plane in frame.planes)


def copy_frame(frame: VideoFrame) -> VideoFrame:
    """A new frame of the same format and size with ``frame``'s picture, plane by plane (one copy;
    320x240 I420: about 20 µs). Its timestamps are for the caller to set."""
    out = VideoFrame(frame.width, frame.height, frame.format.name)
    for source, target in zip(frame.planes, out.planes):
        width = min(source.line_size, target.line_size)  # (padding copied too: harmless)
        _rows(target)[:target.height, :width] = _rows(source)[:target.height, :width]
    return out


def placeholder_card(width: int = 640, height: int = 360, text: str = "no camera") -> np.ndarray:
    card = np.full((height, width, 3), (48, 40, 32), dtype=np.uint8)
    size = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)[0]
    cv2.putText(card, text, ((width - size[0]) // 2, (height + size[1]) // 2),
                cv2.FONT_HERSHEY_SIMPLEX, 1.0, (200, 200, 200), 2, cv2.LINE_AA)
    return card


class SynthVideoTrack(MediaStreamTrack):
    """The session's returned video. ``source`` may be replaced by a pipeline (e.g. an avatar
    renderer): a callable returning a BGR ndarray, or None to fall back to the camera/card.
    Frames go out at ``fps``, except a still picture: the card while nothing on it changes, or
    the very array a source handed the tick before, goes out once a second (``STILL_INTERVAL``;
    a client without a camera costs no 25 encodes a second of a still)."""

    kind = "video"

    def __init__(self, camera, overlay: Callable[[], list], fps: float = 25.0,
                 on_frame: Callable[[], None] | None = None, relay: CameraRelay | None = None):
        super().__init__()
        self.on_frame = on_frame
        self.camera = camera  # LatestFrame of inbound video
        self.relay = relay
        self._relay_epoch: int | None = None  # of the forwarded frames last sent
        self._relay_offset = 0  # their timestamps -> this track's
        self.overlay = overlay  # () -> the tracks.overlay items to draw now
        self._overlay = Overlay()
        self.source: Callable[[], np.ndarray | None] | None = None
        self.fps = fps
        self._pacer = Pacer(VIDEO_CLOCK)
        self._pts = 0
        self._card = placeholder_card()
        self._cache_key = None
        self._cached: VideoFrame | None = None  # the last picture composed
        self._still = False  # the last picture composed is one to hold (see _compose)
        self._sent_pts = 0
        self._source_image: np.ndarray | None = None
        self.sent = 0
        self.tap: Callable[[VideoFrame], None] | None = None  # sees every sent frame (recording)
        self._skipped = 0
        self.held = 0  # frame periods the unchanged card was not re-sent (on purpose: not missed)

    @property
    def skipped(self) -> int:
        """Frames not sent because the track fell behind, or (relayed) the sender did not take
        them. server/load.py reads sent, skipped and held."""
        return self._skipped + (self.relay.dropped if self.relay else 0)

    @staticmethod
    def _i420(frame) -> bool:
        return (frame is not None and frame.format.name == "yuv420p" and frame.width % 2 == 0
                and frame.height % 2 == 0)

    def _inline(self, items: list, now: float) -> bool:
        """Whether the next picture is a camera frame cheap enough to draw on the loop."""
        frame = self.camera.frame
        return (self.source is None and self._i420(frame) and frame.width * frame.height <= INLINE_PIXELS
                and self._overlay.ready(items, now, frame.width, frame.height))

    def _compose(self, items: list, now: float) -> VideoFrame:
        """The next picture, showing the overlay ``items`` at ``now``, as a frame of its own: the
        camera's decoded YUV 4:2:0 planes copied once into it and drawn on there (no colour
        conversion either way), else a pipeline's BGR source or the card. A picture that does not
        change (the card, a paused camera) is composed and converted once, then copied."""
        image = self.source() if self.source else None
        frame = self.camera.take() if image is None else None
        key = (id(image), id(frame), Overlay.state(items, now))
        unchanged = key == self._cache_key and self._cached is not None
        # Held rather than re-sent: the same array from a source, or the card (a camera frame
        # seen again is re-sent: the camera may only be late)
        self._still = unchanged and (image is not None or frame is None)
        if unchanged:
            return copy_frame(self._cached)  # (the one sent before may still be on its way: a recording)
        self._cache_key, self._source_image = key, image  # (the array kept: its id stays its own)
        if image is not None:
            out = VideoFrame.from_ndarray(self._overlay.draw(np.array(image, copy=True), items, now), format="bgr24")
        elif self._i420(frame):
            out = copy_frame(frame)  # read only: safe while a pipeline converts the same frame
            self._overlay.draw(i420_views(out), items, now, i420=True)
        else:
            image = self._card.copy() if frame is None else self.camera.to_array(frame).copy()
            out = VideoFrame.from_ndarray(self._overlay.draw(image, items, now), format="bgr24")
            if out.width % 2 == 0 and out.height % 2 == 0:
                out = out.reformat(format="yuv420p")
        self._cached = out
        return out

    async def _relayed(self) -> Packet | None:
        """The camera's next frame, forwarded (its timestamps moved onto this track's clock);
        None when the relay stopped."""
        item = await self.relay.next()
        if item is None:
            return None
        data, timestamp, epoch = item
        if epoch != self._relay_epoch:  # a new run: its first frame goes out as the next one due
            self._relay_epoch, self._relay_offset = epoch, self._pts - timestamp
        packet = Packet(data)
        packet.pts = self._sent_pts = timestamp + self._relay_offset
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._pts = packet.pts + int(VIDEO_CLOCK / self.fps)
        self.sent += 1
        if self.on_frame:
            self.on_frame()
        return packet

    async def recv(self) -> VideoFrame | Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.relay is not None:
            if self.relay.active() and (packet := await self._relayed()) is not None:
                return packet
            if self._relay_epoch is not None:  # drawing again: paced from now on
                self._relay_epoch, self._cache_key = None, None
                self._pacer.start = time.monotonic() - self._pts / VIDEO_CLOCK
        step = int(VIDEO_CLOCK / self.fps)
        late = self._pacer.behind(self._pts)
        if late > 2 / self.fps:
            # Starved of CPU: skip the missed frames rather than encode a burst of repeats.
            self._pts += int(late * self.fps) * step
            self._skipped += int(late * self.fps)
        while True:
            await self._pacer.wait(self._pts)
            items, now = self.overlay(), time.monotonic()  # one snapshot: checked, then drawn
            if self._inline(items, now):
                frame = self._compose(items, now)
            else:  # colour conversion and drawing release the GIL: off the event loop
                frame = await asyncio.get_running_loop().run_in_executor(None, self._compose, items, now)
            if not self._still or self._pts - self._sent_pts >= STILL_INTERVAL * VIDEO_CLOCK:
                break
            self._pts += step  # the card, unchanged: sent once a second, not encoded 25 times
            self.held += 1
            if self.readyState != "live":
                raise MediaStreamError
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._sent_pts = self._pts
        self._pts += step
        self.sent += 1
        if self.on_frame:
            self.on_frame()
        if self.tap:
            self.tap(frame)
        return frame
