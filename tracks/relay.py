"""The camera relayed: while nothing is drawn on the returned video and nothing reads the camera
(``wanted()``, the session's say), the returned video is the camera's own VP8 frames, sent back as
they came: nothing decoded, nothing encoded. The rest of the time the camera is decoded and the
returned video drawn (tracks/outbound.py ``SynthVideoTrack``), as before.

    camera's receiver --route()--> frames to forward (bounded) --next()--> SynthVideoTrack --> sender
                      \\--> aiortc's decoder thread (where route() says) --> LatestFrame

Every switch happens at one of the camera's keyframes (asked for with a PLI): to relaying, the
client's decoder must start from one; back to drawing, our decoder must. Until the decoder has
made a picture, the camera's frames are still forwarded, so the returned video never stops. A
client's picture loss report to our sender is passed on to the camera while relaying; after
frames our receiver lost (it asks the camera for a keyframe then), nothing is forwarded until the
keyframe: the client's picture holds still rather than decode frames that refer to missing ones.
The forwarded frames are the camera's bitrate: while relaying, the camera is asked to send at most
what the client last said it can receive (``bitrate_cap``, the client's REMB passed on).
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import datetime, timezone
from typing import Callable

from media import codecs
from media.buffers import LatestFrame

MAX_FRAMES = 30  # forwarded frames waiting for the sender; beyond, it is not pulling: start again at a keyframe
KEYFRAME_INTERVAL = 0.5  # seconds between keyframe requests to the camera
STALL_SECONDS = 2.0  # no camera frame nor packet for this long: stop relaying (the returned video shows
# the card; a browser sends a disabled camera as black frames, about one a second). While packets
# still arrive, frames are only held back (aiortc's jitter buffer waits for a lost one): the
# returned picture holds still.


class CameraRelay:
    def __init__(self, camera: LatestFrame, wanted: Callable[[], bool],
                 on_frame: Callable[[], None] | None = None, on_forward: Callable[[], None] | None = None):
        self.camera = camera
        self.wanted = wanted  # () -> whether the returned video may be the camera's frames as they are
        self.on_frame = on_frame  # each camera frame not decoded (decoded ones are counted where they are read)
        self.on_forward = on_forward  # each camera frame handed to the returned track
        self.receiver = None  # the camera's RTCRtpReceiver, on the session's current connection
        self.sends_vp8 = False  # that connection returns VP8 video
        self.forwarding = False  # the returned video is the camera's frames
        self.decoding = True  # the camera's frames are decoded
        self.epoch = 0  # one per run of forwarded frames (their timestamps start again)
        self.forwarded = 0
        self.dropped = 0  # frames not forwarded: the sender was not taking them
        self.keyframes_asked = 0
        self.client_bitrate: int | None = None  # what the client last said it can receive of the returned video (bps)
        self._decoded_from = 0  # camera.received when decoding started again
        self._frames: deque[tuple[bytes, int, int]] = deque()  # (VP8 frame, camera timestamp, epoch)
        self._arrived = asyncio.Event()
        self._gap = False  # frames were dropped: forward again from the next keyframe
        self._asked = float("-inf")
        self._asks: set[asyncio.Task] = set()

    def attach(self, receiver, sends_vp8: bool) -> None:
        """The camera on a (new) connection; its stream starts again, with a keyframe."""
        self.receiver, self.sends_vp8 = receiver, sends_vp8
        self.client_bitrate = None  # a new client's estimate comes with its first REMB
        self._stop(decode=True)

    def _stop(self, decode: bool) -> None:
        """No more forwarding; the decoder goes on, or waits for a keyframe (``decode`` False)."""
        self.forwarding = False
        if decode and not self.decoding:
            self.decoding, self._decoded_from = True, self.camera.received
        self._frames.clear()
        self._arrived.set()  # a track waiting in next() draws at once

    # --- the camera's side (aiortc's receive path, on the loop) ------------------------------------
    def route(self, codec, frame) -> bool:
        """One complete encoded frame of the camera: forwarded or not. Returns whether to decode it."""
        if codec.mimeType.lower() != "video/vp8" or not self.sends_vp8:
            if self.forwarding:
                self._stop(decode=True)
            return True
        key = codecs.vp8_keyframe(frame.data)
        wanted = self.wanted()
        if wanted and not self.forwarding:
            if key:  # from here on, the client's decoder can follow the camera's frames
                self.forwarding, self.decoding, self._gap = True, False, False
                self.epoch += 1
                self.camera.clear()  # nobody reads it now; no stale picture when the relay stops
            else:
                self.ask_keyframe()
        elif not wanted and not self.decoding:
            if key:  # our decoder starts here; forwarding goes on until it has made a picture
                self.decoding, self._decoded_from = True, self.camera.received
            else:
                self.ask_keyframe()
        if self.forwarding:
            self._forward(frame, key)
        if not self.decoding and self.on_frame:
            self.on_frame()
        return self.decoding

    def _forward(self, frame, key: bool) -> None:
        if self._gap and not key:
            self.dropped += 1
            return
        if len(self._frames) >= MAX_FRAMES:  # the sender is not pulling (no client attached)
            self.dropped += len(self._frames) + 1
            self._frames.clear()
            self._gap = True
            self.ask_keyframe()
            return
        self._gap = False
        self._frames.append((frame.data, frame.timestamp, self.epoch))
        self._arrived.set()

    def ask_keyframe(self) -> None:
        now = time.monotonic()
        if self.receiver is None or now - self._asked < KEYFRAME_INTERVAL:
            return
        self._asked = now
        task = codecs.ask_keyframe(self.receiver)
        if task is not None:
            self.keyframes_asked += 1
            self._asks.add(task)
            task.add_done_callback(self._asks.discard)

    def picture_lost(self) -> None:
        """Our receiver dropped camera frames (and asked the camera for a keyframe): what follows
        refers to pictures the client never gets, so nothing is forwarded until that keyframe."""
        if self.forwarding:
            self._gap = True

    def keyframe_requested(self) -> None:
        """The client lost pictures of the returned video (its PLI to our sender)."""
        if self.forwarding:
            self.ask_keyframe()

    def client_estimate(self, bitrate: int) -> None:
        """The client's estimate of the bitrate it can receive of the returned video (its REMB)."""
        self.client_bitrate = bitrate

    def bitrate_cap(self) -> int | None:
        """The most the camera may send (bps): while its frames are forwarded, what the client
        can receive; otherwise no cap (the returned video is encoded at the client's pace)."""
        return self.client_bitrate if self.forwarding else None

    def _camera_heard(self) -> bool:
        """Whether the camera's packets arrived within ``STALL_SECONDS``."""
        now = datetime.now(timezone.utc)
        return self.receiver is not None and any(
            (now - source.timestamp).total_seconds() < STALL_SECONDS for source in self.receiver.getSynchronizationSources())

    # --- the returned track's side -----------------------------------------------------------------
    def active(self) -> bool:
        """Whether the returned video's next frame is a forwarded one."""
        if self.forwarding and self.decoding and self.camera.received > self._decoded_from:
            self._stop(decode=True)  # the decoder has a picture: drawing takes over
        return self.forwarding

    async def next(self) -> tuple[bytes, int, int] | None:
        """The next camera frame to send back: (VP8 frame, camera timestamp at 90 kHz, epoch);
        None when the relay stopped (nothing from the camera for ``STALL_SECONDS``, or it was switched off)."""
        while not self._frames:
            if not self.forwarding:
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), STALL_SECONDS)
            except TimeoutError:
                if self.forwarding and not self._frames and not self._camera_heard():
                    self._stop(decode=False)  # until the camera's next keyframe
                    return None
        self.forwarded += 1
        if self.on_forward:
            self.on_forward()
        return self._frames.popleft()
