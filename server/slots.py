"""Receive slots: the tracks that carry other participants' media to a room participant
(``server/rooms.py``), each one relaying one participant at a time and switching without
renegotiation."""
from __future__ import annotations

import asyncio
import fractions
import time

from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from tracks.outbound import copy_frame, i420_frame

CLOCK = {"audio": 48000, "video": 90000}
GAP = 0.2  # seconds without frames after which a slot's clock jumps to the present


class Slot(MediaStreamTrack):
    """One receive slot of a participant's connection: it carries one other participant's relayed
    track, and changes source without renegotiation. It never ends by itself (aiortc stops a
    sender for good once its track ends); with no source it waits. Frames are copied and
    re-stamped on the slot's own clock (the relay hands one frame object to every receiver, and
    a new source must not move the receiver's clock back)."""

    def __init__(self, kind: str, mid: str | None):
        super().__init__()
        self.kind = kind
        self.mid = mid
        self.owner: str | None = None  # the participant it carries
        self.origin: MediaStreamTrack | None = None  # the participant's inbound track it relays
        self.source: MediaStreamTrack | None = None  # this slot's relay of it
        self.gain = 1.0
        self._changed = asyncio.Event()
        self._rate = CLOCK[kind]
        self._t0: float | None = None
        self._next = 0

    def feed(self, owner: str | None, origin: MediaStreamTrack | None = None, relay: MediaRelay | None = None) -> None:
        if self.source is not None:
            self.source.stop()
        self.owner, self.origin = owner, origin
        self.source = relay.subscribe(origin, buffered=False) if origin is not None else None
        self._changed.set()

    def stop(self) -> None:
        self.feed(None)
        super().stop()

    async def recv(self):
        # asyncio.timeout, not asyncio.wait_for: on Python 3.11, wait_for loses a cancel that comes
        # as the awaited frame arrives (CPython gh-86296), and aiortc stops a sender by cancelling
        # the task that reads this: it went on reading, and the peer connection's close waited on
        # it forever (a room teardown hung past 300 s).
        while self.readyState == "live":
            source = self.source
            if source is None:
                self._changed.clear()
                try:
                    async with asyncio.timeout(0.5):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                continue
            try:  # bounded, so that a swapped or silent source is noticed
                async with asyncio.timeout(0.5):
                    frame = await source.recv()
            except TimeoutError:
                continue
            except MediaStreamError:
                if self.source is source:
                    self.source = None
                continue
            if self.source is source:
                return self._copy(frame)
        raise MediaStreamError

    def _copy(self, frame):
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        wall = int((now - self._t0) * self._rate)
        if self.kind == "audio":
            samples = frame.to_ndarray()
            if self.gain != 1.0:
                samples = (samples * self.gain).astype(samples.dtype)
            out = AudioFrame.from_ndarray(samples, format=frame.format.name, layout=frame.layout.name)
            out.sample_rate = frame.sample_rate
            pts = wall if wall - self._next > GAP * self._rate else self._next
            self._next = pts + frame.samples * self._rate // frame.sample_rate
        else:
            out = copy_frame(frame) if frame.format.name == "yuv420p" else i420_frame(frame.to_ndarray(format="yuv420p"))
            pts = max(wall, self._next)
            self._next = pts + 1
        out.pts = pts
        out.time_base = fractions.Fraction(1, self._rate)
        return out
