"""One WebRTC session: its peer connection, buffers, tracks, pipelines and event channel.

Data path:  inbound tracks -> AudioRing / LatestFrame -> pipelines -> events + outbound tracks.
All state of a connection lives here; ``close()`` tears all of it down.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiortc import RTCConfiguration, RTCPeerConnection

from pipelines.base import OptionError, Pipeline
from server.context import PipelineContext
from tracks.buffers import AudioRing, LatestFrame
from tracks.inbound import read_audio, read_video
from tracks.outbound import SpeechAudioTrack, SynthVideoTrack

if TYPE_CHECKING:
    from server.app import MediaServer

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 64 * 1024
MAX_TEXT_CHARS = 10_000
MAX_CHANNEL_BACKLOG = 1 << 20  # bytes waiting in the data channel before events are dropped


def release_audio_early(receiver) -> None:
    """aiortc's audio jitter buffer holds 4 packets (80 ms) for reordering before it releases
    one. The server analyses audio rather than playing it, and every pipeline's latency starts
    here, so release each packet as soon as the next one arrives (20 ms). aiortc has no option
    for this: its private buffer is set, if it is there."""
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if buffer is not None and hasattr(buffer, "_prefetch"):
        buffer._prefetch = 1


class Session(PipelineContext):
    def __init__(self, server: "MediaServer", configuration: RTCConfiguration):
        super().__init__(server)
        self.last_seen = self.started
        self.pc = RTCPeerConnection(configuration)
        self.audio = AudioRing()
        self.camera = LatestFrame(on_drop=self.metrics.frames_dropped.inc)
        self.audio_out = SpeechAudioTrack(on_frame=self.metrics.frames_out.labels("audio").inc)
        self.video_out = SynthVideoTrack(self.camera, self.overlay_lines, fps=self.settings.video_fps,
                                         on_frame=self.metrics.frames_out.labels("video").inc)
        self.pipelines: dict[str, Pipeline] = {}
        self.channel = None
        self._overlays: dict[str, list[str]] = {}
        self._unsent: deque[str] = deque(maxlen=64)  # events emitted before the channel opened
        self._ready_sent = False
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self.closed = asyncio.Event()

        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    # --- setup ---------------------------------------------------------------------------------
    def add_pipelines(self, requested: dict[str, tuple[type[Pipeline], dict]]) -> None:
        """Instantiate pipelines (raises OptionError for bad options)."""
        for name, (cls, options) in requested.items():
            self.pipelines[name] = cls(self, options)

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
        for name, pipeline in self.pipelines.items():
            self._spawn(self._run_pipeline(name, pipeline), f"pipeline-{name}")
        self._spawn(self._watchdog(), "watchdog")
        return self.pc.localDescription

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}-{self.id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- inbound -------------------------------------------------------------------------------
    def _touch(self) -> None:
        self.last_seen = time.monotonic()

    def _on_track(self, track) -> None:
        counter = self.metrics.frames_in.labels(track.kind)

        def on_frame():
            self._touch()
            counter.inc()

        if track.kind == "audio":
            self._spawn(read_audio(track, self.audio, on_frame), "audio-in")
        elif track.kind == "video":
            self._spawn(read_video(track, self.camera, on_frame), "video-in")

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
            self._spawn(self._handle_message(message), "message")

        if channel.readyState == "open":
            self._flush()

    def _flush(self) -> None:
        """The channel is open: say ``ready`` first, then what was emitted before it opened."""
        if not self._ready_sent:
            self._ready_sent = True
            self.emit("ready", session_id=self.id, pipelines=list(self.pipelines))
        while self._unsent and self._channel_open():
            self.channel.send(self._unsent.popleft())

    def _channel_open(self) -> bool:
        return self.channel is not None and self.channel.readyState == "open"

    async def _handle_message(self, message) -> None:
        if not isinstance(message, str):
            return self.emit_error(None, "binary messages are not supported; send JSON text")
        if len(message) > MAX_MESSAGE_CHARS:
            return self.emit_error(None, f"message too large ({len(message)} chars, max {MAX_MESSAGE_CHARS})")
        try:
            msg = json.loads(message)
        except ValueError:
            return self.emit_error(None, "malformed message: not JSON")
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            return self.emit_error(None, 'malformed message: expected an object with a "type"')
        kind = msg["type"]
        if kind == "ping":
            self.emit("pong", id=msg.get("id"))
        elif kind == "text":
            text = msg.get("text")
            if not isinstance(text, str) or not text.strip():
                return self.emit_error(None, 'a "text" message needs a non-empty "text" string')
            if len(text) > MAX_TEXT_CHARS:
                return self.emit_error(None, f"text too long ({len(text)} chars, max {MAX_TEXT_CHARS})")
            for name, pipeline in self.pipelines.items():
                await self._guard(name, pipeline.on_text(text))
        elif kind == "config":
            self._configure(msg)
        else:
            self.emit_error(None, f"unknown message type {kind!r}; expected ping, text or config")

    def _configure(self, msg: dict) -> None:
        name, options = msg.get("pipeline"), msg.get("options", {})
        if name not in self.pipelines:
            return self.emit_error(None, f"config: pipeline {name!r} is not active; active: {list(self.pipelines)}")
        if not isinstance(options, dict):
            return self.emit_error(name, 'config: "options" must be an object')
        try:
            self.pipelines[name].configure(options)
        except OptionError as exc:
            return self.emit_error(name, str(exc))
        self.emit("config", pipeline=name, options=self.pipelines[name].options)

    # --- outputs -------------------------------------------------------------------------------
    def emit(self, type: str, **fields) -> None:
        """Send a JSON event on the data channel (queued briefly if it is not open yet)."""
        message = self.event_json(type, **fields)
        if not self._channel_open():
            self._unsent.append(message)
        elif self.channel.bufferedAmount > MAX_CHANNEL_BACKLOG:
            self.metrics.events_dropped.inc()  # the client is not reading; don't grow without bound
            return
        else:
            self.channel.send(message)
        self.metrics.events_out.labels(type).inc()

    def set_overlay(self, name: str, lines: list[str]) -> None:
        self._overlays[name] = lines

    def overlay_lines(self) -> list[str]:
        return [line for lines in self._overlays.values() for line in lines]

    # --- lifetime ------------------------------------------------------------------------------
    async def _guard(self, name: str, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("pipeline %s failed in session %s", name, self.id)
            self.emit_error(name, f"{type(exc).__name__}: {exc}")

    async def _run_pipeline(self, name: str, pipeline: Pipeline) -> None:
        await self._guard(name, pipeline.run())

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

    async def close(self) -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name, pipeline in self.pipelines.items():
            await self._guard(name, pipeline.close())
        self.audio_out.stop()
        self.video_out.stop()
        await self.pc.close()
        self.server.forget(self)
        self.closed.set()
        log.info("session %s closed", self.id)
