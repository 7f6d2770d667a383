"""The WebRTC transport: a session (its pipelines, buffers and outbound tracks) and the peer
connection that carries it (``Peer``: the RTCPeerConnection, its inbound tracks, its ``events``
channel). A session outlives its peer: when the connection drops, the session waits
``--resume-seconds`` for the client to attach a new one with its resume token (``resume``).

Data path:  inbound tracks -> AudioRing / LatestFrame -> pipelines -> events + outbound tracks.
All state of a client lives in its ``WebRTCSession``; ``close()`` tears all of it down.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, sdp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import codecs
from media.buffers import LatestFrame
from server.transports.session import CLOSE_SECONDS, Session
from tracks.inbound import read_audio, read_video
from tracks.opus import OpusSpeechTrack
from tracks.outbound import SynthVideoTrack
from tracks.relay import CameraRelay

log = logging.getLogger(__name__)

MAX_CHANNEL_BACKLOG = 1 << 20  # bytes waiting in the data channel before events are dropped
MAX_UNSENT = 256  # events kept while no channel is open (before it opens, or while the client reconnects)
codecs.install()  # the returned video's VP8 encoder settings (media/codecs.py)


def with_ptime(text: str, ms: int) -> str:
    """An SDP with ``a=ptime:<ms>`` in each audio section: the audio packets its sender should
    send us are ``ms`` long (RFC 4566; browsers follow it for Opus, up to 120 ms)."""
    lines, out, audio = text.split("\r\n"), [], False
    for line in lines:
        if line.startswith("m=") or line == "":
            if audio:
                out.append(f"a=ptime:{ms}")
            audio = line.startswith("m=audio")
        if not (audio and line.startswith("a=ptime:")):
            out.append(line)
    return "\r\n".join(out)


class Feed(MediaStreamTrack):
    """One peer connection's handle on a session's outbound track: aiortc stops a sender's track
    when its connection closes, and the session's tracks must outlive a connection that drops."""

    def __init__(self, source: MediaStreamTrack):
        super().__init__()
        self.kind = source.kind
        self.source = source

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        return await self.source.recv()


class Peer:
    """One connection of a session's client: what it receives goes to the session; when it is
    lost (failed, closed, its channel closed, silent) it tells the session."""

    def __init__(self, session: WebRTCSession, configuration: RTCConfiguration):
        self.session = session
        self.pc = RTCPeerConnection(configuration)
        self.channel = None
        self.lost = False
        self.greeted = False  # ready (or resumed) sent on its channel
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def answer(self, offer) -> Any:
        await self.pc.setRemoteDescription(offer)
        camera = None
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                codecs.release_audio_early(transceiver.receiver)
                # straight to the pipelines' rate, unless a recording or the room takes it at 48 kHz
                codecs.decode_audio_inline(transceiver.receiver, rate=None if self.session.room is not None
                                           or self.session.recorder else self.session.audio.sample_rate)
            else:
                codecs.bound_video_wait(transceiver.receiver)  # a lost packet holds video back 1 s at most
                if camera is None and self.session.room is None:  # a room relays it to the others
                    camera = transceiver.receiver
                    # its pictures straight from the decoder's thread, unless a recording taps them
                    codecs.route_video(camera, self.session.relay.route,
                                       None if self.session.recorder else self.session.camera_decoded)
                    codecs.on_picture_loss(camera, self.session.relay.picture_lost)
                    codecs.cap_bitrate_estimate(camera, self.session.relay.bitrate_cap)
        kinds = {t.kind for t in self.pc.getTransceivers()}
        if "audio" in kinds:
            self.pc.addTrack(Feed(self.session.audio_out))  # reuses the offer's audio transceiver
        # Video only to a client that takes it (no encoder otherwise); a client's camera that
        # neither the returned video nor any pipeline uses is declined (no decoder either).
        takes_video = {m.kind for m in sdp.SessionDescription.parse(offer.sdp).media
                       if m.direction in ("sendrecv", "recvonly")}
        if "video" in takes_video:
            sender = self.pc.addTrack(Feed(self.session.video_out))
            codecs.on_keyframe_request(sender, self.session.relay.keyframe_requested)
            codecs.on_bitrate_estimate(sender, self.session.relay.client_estimate)
        elif self.session.room is None and not any(p.uses_camera for p in self.session.pipelines.values()):
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.direction = "inactive"
        if self.session.room is not None:  # the further m-lines carry the others (server/rooms.py)
            self.session.room.attach(self)
        await self.pc.setLocalDescription(await self.pc.createAnswer())  # gathers candidates
        codec = {}  # kind -> the codec negotiated on its first m-line
        for m in sdp.SessionDescription.parse(self.pc.localDescription.sdp).media:
            if m.rtp.codecs:
                codec.setdefault(m.kind, m.rtp.codecs[0].mimeType.lower())
        # Opus negotiated: the audio track encodes itself, silence as DTX (tracks/opus.py)
        self.session.audio_out.opus = codec.get("audio") == "audio/opus"
        if camera is not None:  # VP8 both ways: the camera's frames can go back as they are (tracks/relay.py)
            self.session.relay.attach(camera, sends_vp8="video" in takes_video and codec.get("video") == "video/vp8")
        answer = self.pc.localDescription
        packet_ms = self.session.audio_packet_ms()
        if codec.get("audio") == "audio/opus" and packet_ms > 20:  # fewer, longer audio packets
            answer = RTCSessionDescription(sdp=with_ptime(answer.sdp, packet_ms), type=answer.type)
        return answer

    def open(self) -> bool:
        return not self.lost and self.channel is not None and self.channel.readyState == "open"

    def _on_track(self, track) -> None:
        session = self.session
        counter = session.metrics.frames_in.labels(track.kind)
        if session.room is not None:  # the room relays it to the others; the session reads a copy
            track = session.room.inbound(session, track)

        def on_frame():
            session.touch()
            counter.inc()

        if track.kind == "audio":
            tap = session.recorder.person_audio if session.recorder else None
            session.spawn(read_audio(track, session.audio, on_frame, tap), "audio-in")
        elif track.kind == "video":
            tap = session.recorder.tap("person_video") if session.recorder else None
            session.spawn(read_video(track, session.camera, on_frame, tap), "video-in")

    def _on_datachannel(self, channel) -> None:
        if channel.label != "events":
            return
        self.channel = channel
        channel.on("open", lambda: self.session.channel_opened(self))
        channel.on("message", lambda message: self.session.received(self, message))
        channel.on("close", lambda: self.session.lost(self, "its data channel closed"))
        if channel.readyState == "open":
            self.session.channel_opened(self)

    async def _on_connection_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.session.connected(self)
        if self.pc.connectionState in ("failed", "closed"):
            self.session.lost(self, f"connection {self.pc.connectionState}")

    async def close(self) -> None:
        self.lost = True
        await self.pc.close()


class WebRTCSession(Session):
    transport = "webrtc"

    def __init__(self, settings, metrics, models, configuration: RTCConfiguration, on_close=None):
        super().__init__(settings, metrics, models, on_close)
        self.configuration = configuration
        self.last_seen = self.started
        self._heard = False  # any media or message from the client yet
        self.camera = LatestFrame(on_drop=self.metrics.frames_dropped.inc)
        self.relay = CameraRelay(self.camera, self._returns_camera_as_is, on_frame=self._camera_frame,
                                 on_forward=self.metrics.video_relayed.inc)
        self.audio_out = OpusSpeechTrack(on_frame=self.metrics.frames_out.labels("audio").inc)
        self.video_out = SynthVideoTrack(self.camera, self.overlay_items, fps=self.settings.video_fps,
                                         on_frame=self.metrics.frames_out.labels("video").inc, relay=self.relay)
        self.resume_token: str | None = None  # given by the server where --resume-seconds > 0
        self.room = None  # server/rooms.py Room, where the offer named one
        self.peer = Peer(self, configuration)
        self._overlays: dict[str, tuple] = {}  # pipeline -> tracks.overlay items
        self._unsent: deque[str] = deque(maxlen=MAX_UNSENT)  # events emitted while no channel was open
        self._dropped = 0  # of those, lost to the bound since a channel last opened
        self._ready_sent = False
        self._expiry: asyncio.Task | None = None  # waiting for a resume
        self._peer_closes: set[asyncio.Task] = set()

    @property
    def pc(self) -> RTCPeerConnection:
        return self.peer.pc

    @property
    def closing(self) -> bool:
        return self._closing

    def record(self, recorder) -> None:
        """Record this session (before ``answer``: the inbound tracks are tapped as they arrive)."""
        self.recorder = recorder
        self.audio_out.tap = recorder.returned_audio
        recorder.play_clock = lambda: self.audio_out.timestamp / self.audio_out.sample_rate
        self.video_out.tap = recorder.tap("returned_video")
        recorder.start()

    async def answer(self, offer) -> Any:
        answer = await self.peer.answer(offer)
        self.start_pipelines()
        self.spawn(self._watchdog(), "watchdog")
        return answer

    async def resume(self, offer) -> Any:
        """Attach a new peer connection (the client came back with its resume token); the
        pipelines carry on. A peer still attached (its loss not noticed yet) is replaced."""
        old, self.peer = self.peer, Peer(self, self.configuration)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._close_peer(old)
        self.touch()
        log.info("session %s: resuming on a new connection", self.id)
        try:
            return await self.peer.answer(offer)
        except Exception:
            self.lost(self.peer, "its resume offer could not be answered")
            raise

    # --- what peers report ----------------------------------------------------------------------
    def touch(self) -> None:
        self.last_seen = time.monotonic()
        self._heard = True

    def connected(self, peer: Peer) -> None:
        """ICE and DTLS are up: a client never heard from now has ``connect_timeout`` to be heard."""
        if peer is self.peer and not self._heard:
            self.last_seen = time.monotonic()

    def received(self, peer: Peer, message) -> None:
        if peer is self.peer and not peer.lost:
            self.touch()
            self.spawn(self._handle_message(message), "message")

    def lost(self, peer: Peer, why: str) -> None:
        """A peer is gone: wait ``--resume-seconds`` for the client to resume, or end the session
        (resuming off, or the client never got its token)."""
        if peer is not self.peer or peer.lost or self._closing:
            return
        self._close_peer(peer)
        if self.room is not None:  # the others are told now, not when the resume wait ends
            self.room.detach(self)
        seconds = self.settings.resume_seconds
        if seconds <= 0 or not self._ready_sent or not self._heard:  # a ghost: nothing to resume
            log.info("session %s: %s, closing", self.id, why)
            asyncio.get_running_loop().create_task(self.close())
            return
        log.info("session %s: %s; waiting %.0f s for the client to resume", self.id, why, seconds)
        self._expiry = self.spawn(self._expire(seconds), "resume-wait")

    def _close_peer(self, peer: Peer) -> None:
        if peer.lost:
            return
        peer.lost = True
        task = asyncio.get_running_loop().create_task(peer.close())
        self._peer_closes.add(task)
        task.add_done_callback(self._peer_closes.discard)

    async def _expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        log.info("session %s: not resumed within %.0f s, closing", self.id, seconds)
        await self.close()

    def channel_opened(self, peer: Peer) -> None:
        """A channel opened: ``ready`` (or ``resumed``) first, then what was emitted meanwhile."""
        if peer is not self.peer or peer.lost:
            return
        if not peer.greeted:
            peer.greeted = True
            if not self._ready_sent:
                self._ready_sent = True
                self.emit("ready", session_id=self.id, pipelines=list(self.pipelines),
                          resume_token=self.resume_token,
                          resume_seconds=self.settings.resume_seconds if self.resume_token else 0)
            else:
                self.emit("resumed", session_id=self.id, pipelines=list(self.pipelines),
                          queued=len(self._unsent), dropped=self._dropped)
                self._dropped = 0
        while self._unsent and peer.open():
            peer.channel.send(self._unsent.popleft())
        if self.room is not None:
            self.room.opened(self)

    async def _handle_message(self, message) -> None:
        msg = self.parse(message)
        if msg is None:
            return
        if msg["type"] == "close":  # the client leaves for good: no waiting for it to resume
            await self.close()
        elif not await self.handle_control(msg):
            self.emit_error(None, f"unknown message type {msg['type']!r}; expected ping, text, config, interrupt or close")

    # --- outputs -------------------------------------------------------------------------------
    def send(self, message: str) -> bool:
        """On the data channel (kept, bounded, while no channel is open)."""
        if not self.peer.open():
            if len(self._unsent) == MAX_UNSENT:  # the oldest falls out
                self._dropped += 1
                self.metrics.events_dropped.inc()
            self._unsent.append(message)
        elif self.peer.channel.bufferedAmount > MAX_CHANNEL_BACKLOG:
            return False  # the client is not reading; don't grow without bound
        else:
            self.peer.channel.send(message)
        return True

    def show(self, name: str, *items) -> None:
        self._overlays[name] = items

    def overlay_items(self) -> list:
        """What the returned video shows now: each pipeline's items, unless its option
        ``overlay`` is off (checked per frame, so a ``config`` message hides or shows at once)."""
        return [item for name, items in list(self._overlays.items())
                if (pipeline := self.pipelines.get(name)) is None or pipeline.options.get("overlay", True)
                for item in items]

    def audio_packet_ms(self) -> int:
        """How long the client's audio packets may be: the shortest its pipelines allow (Pipeline
        ``audio_packet_ms``); 20 ms in a room (the others hear this person) or without pipelines."""
        if self.room is not None or not self.pipelines:
            return 20
        return min(p.audio_packet_ms for p in self.pipelines.values())

    def _returns_camera_as_is(self) -> bool:
        """Whether the returned video may be the camera's frames as they came (tracks/relay.py):
        no pipeline reads the camera or may draw (its option ``overlay`` off), no picture of a
        pipeline's own, no recording (it records decoded frames), not in a room."""
        return (self.room is None and self.recorder is None and self.video_out.source is None
                and not any(p.uses_camera or p.options.get("overlay", True) for p in self.pipelines.values()))

    def _camera_frame(self) -> None:
        """A camera frame the relay took and did not decode (``camera_decoded`` counts the others)."""
        self.touch()
        self.metrics.frames_in.labels("video").inc()

    def camera_decoded(self, frame) -> None:
        """A decoded camera picture, on aiortc's decoder thread (media/codecs.py ``VideoRoute``):
        what ``read_video`` does on the loop otherwise (it keeps the newest; counters and
        ``touch`` are safe from a thread)."""
        self.camera.put(frame)
        self._camera_frame()

    # --- lifetime ------------------------------------------------------------------------------
    async def _watchdog(self) -> None:
        """aiortc has no 'disconnected' state: a client that sends neither media nor messages
        for ``heartbeat_timeout`` seconds is gone (and may resume). A ghost frees its slot sooner:
        a session whose ICE has not connected ``connect_timeout`` seconds after the answer (the
        client vanished after its offer), or that connected and then sent nothing for as long."""
        settings = self.settings
        while True:
            await asyncio.sleep(max(0.05, min(1.0, settings.heartbeat_timeout / 4, settings.connect_timeout / 4)))
            if self.peer.lost:
                continue
            if self._heard:
                limit, why = settings.heartbeat_timeout, "no media or messages for %.0f s"
            elif self.pc.connectionState != "connected":
                limit, why = settings.connect_timeout, "not connected %.0f s after the answer"
            else:
                limit, why = min(settings.heartbeat_timeout, settings.connect_timeout), "connected, then silent %.0f s"
            if time.monotonic() - self.last_seen > limit:
                self.lost(self.peer, why % limit)

    async def _release(self) -> None:
        if self.recorder is not None:
            await self.recorder.close()
        self.audio_out.stop()
        self.video_out.stop()
        self.peer.lost = True
        if self.room is not None:  # its receive slots end first: no sender of this connection waits on
            self.room.leave(self)  # a relayed frame while the close below waits for the senders
        # Bounded: aiortc's close waits for its senders, and a sender stuck on a relayed track's
        # frame (seen in a room's teardown) would hold the session, and shutdown, forever. (That one's
        # cause, a sender task's cancel lost in the room's Slot.recv, is fixed there: docs/rooms.md.)
        closing = [asyncio.ensure_future(self.peer.pc.close()), *self._peer_closes]
        if (await asyncio.wait(closing, timeout=CLOSE_SECONDS))[1]:
            log.warning("session %s: peer connection not closed after %.0f s; left behind", self.id, CLOSE_SECONDS)
        for task in closing:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.info("session %s: closing its peer connection failed: %r", self.id, task.exception())
