"""The WebRTC transport: one peer connection per session, its tracks and its ``events`` channel.

Data path:  inbound tracks -> AudioRing / LatestFrame -> pipelines -> events + outbound tracks.
All state of a connection lives in its ``WebRTCSession``; ``close()`` tears all of it down.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection

from media.buffers import LatestFrame
from server.transports.session import Session
from tracks.inbound import read_audio, read_video
from tracks.outbound import SpeechAudioTrack, SynthVideoTrack

log = logging.getLogger(__name__)

MAX_CHANNEL_BACKLOG = 1 << 20  # bytes waiting in the data channel before events are dropped


def release_audio_early(receiver) -> None:
    """aiortc's audio jitter buffer holds 4 packets (80 ms) for reordering before it releases
    one. The server analyses audio rather than playing it, and every pipeline's latency starts
    here, so release each packet as soon as the next one arrives (20 ms). aiortc has no option
    for this: its private buffer is set, if it is there."""
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if buffer is not None and hasattr(buffer, "_prefetch"):
        buffer._prefetch = 1


class WebRTCSession(Session):
    transport = "webrtc"

    def __init__(self, settings, metrics, models, configuration: RTCConfiguration, on_close=None):
        super().__init__(settings, metrics, models, on_close)
        self.last_seen = self.started
        self.pc = RTCPeerConnection(configuration)
        self.camera = LatestFrame(on_drop=self.metrics.frames_dropped.inc)
        self.audio_out = SpeechAudioTrack(on_frame=self.metrics.frames_out.labels("audio").inc)
        self.video_out = SynthVideoTrack(self.camera, self.overlay_lines, fps=self.settings.video_fps,
                                         on_frame=self.metrics.frames_out.labels("video").inc)
        self.channel = None
        self._overlays: dict[str, list[str]] = {}
        self._unsent: deque[str] = deque(maxlen=64)  # events emitted before the channel opened
        self._ready_sent = False

        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def answer(self, offer) -> Any:
        await self.pc.setRemoteDescription(offer)
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                release_audio_early(transceiver.receiver)
        kinds = {t.kind for t in self.pc.getTransceivers()}
        if "audio" in kinds:
            self.pc.addTrack(self.audio_out)  # reuses the offer's audio transceiver
        if "video" in kinds:
            self.pc.addTrack(self.video_out)
        await self.pc.setLocalDescription(await self.pc.createAnswer())  # gathers candidates
        self.start_pipelines()
        self.spawn(self._watchdog(), "watchdog")
        return self.pc.localDescription

    # --- inbound -------------------------------------------------------------------------------
    def _touch(self) -> None:
        self.last_seen = time.monotonic()

    def _on_track(self, track) -> None:
        counter = self.metrics.frames_in.labels(track.kind)

        def on_frame():
            self._touch()
            counter.inc()

        if track.kind == "audio":
            self.spawn(read_audio(track, self.audio, on_frame), "audio-in")
        elif track.kind == "video":
            self.spawn(read_video(track, self.camera, on_frame), "video-in")

    def _on_datachannel(self, channel) -> None:
        if channel.label != "events":
            return
        self.channel = channel

        @channel.on("open")
        def _on_open():
            self._flush()

        @channel.on("message")
        def _on_message(message):
            self._touch()
            self.spawn(self._handle_message(message), "message")

        if channel.readyState == "open":
            self._flush()

    async def _handle_message(self, message) -> None:
        msg = self.parse(message)
        if msg is not None and not await self.handle_control(msg):
            self.emit_error(None, f"unknown message type {msg['type']!r}; expected ping, text or config")

    # --- outputs -------------------------------------------------------------------------------
    def _flush(self) -> None:
        """The channel is open: say ``ready`` first, then what was emitted before it opened."""
        if not self._ready_sent:
            self._ready_sent = True
            self.emit("ready", session_id=self.id, pipelines=list(self.pipelines))
        while self._unsent and self._channel_open():
            self.channel.send(self._unsent.popleft())

    def _channel_open(self) -> bool:
        return self.channel is not None and self.channel.readyState == "open"

    def send(self, message: str) -> bool:
        """On the data channel (queued briefly if it is not open yet)."""
        if not self._channel_open():
            self._unsent.append(message)
        elif self.channel.bufferedAmount > MAX_CHANNEL_BACKLOG:
            return False  # the client is not reading; don't grow without bound
        else:
            self.channel.send(message)
        return True

    def set_overlay(self, name: str, lines: list[str]) -> None:
        self._overlays[name] = lines

    def overlay_lines(self) -> list[str]:
        return [line for lines in self._overlays.values() for line in lines]

    # --- lifetime ------------------------------------------------------------------------------
    async def _watchdog(self) -> None:
        """aiortc has no 'disconnected' state: a client that sends neither media nor messages
        for ``heartbeat_timeout`` seconds is gone."""
        while True:
            await asyncio.sleep(min(1.0, self.settings.heartbeat_timeout / 4))
            if time.monotonic() - self.last_seen > self.settings.heartbeat_timeout:
                log.info("session %s: no media or messages for %.0fs, closing", self.id,
                         self.settings.heartbeat_timeout)
                asyncio.get_running_loop().create_task(self.close())
                return

    async def _on_connection_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            await self.close()

    async def _release(self) -> None:
        self.audio_out.stop()
        self.video_out.stop()
        await self.pc.close()
