#!/usr/bin/env python3
"""A Python client: streams a media file (or the microphone, or silence) to the server over
WebRTC and prints the server's events as JSON lines.

    python client.py speech.wav                       # audio file, default pipelines
    python client.py talk.mp4 --pipelines gender      # audio + video from one file
    python client.py --mic --duration 30              # microphone (PulseAudio/ALSA via ffmpeg)
    python client.py speech.wav --record back.mp4     # also save what the server sends back

The same ``StreamClient`` class is what the tests and benchmarks drive.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import sys
import time

import aiohttp
import numpy as np
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole, MediaPlayer, MediaRecorder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, AudioLayout, VideoFrame

from media.audio import to_pcm16
from tracks.outbound import Pacer


class ArrayAudioTrack(MediaStreamTrack):
    """Plays a mono float array in real time as 20 ms frames (optionally looping, then silence)."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, sample_rate: int, loop: bool = False):
        super().__init__()
        self.pcm = to_pcm16(samples)
        self.rate = sample_rate
        self.loop = loop
        self.step = sample_rate // 50
        self.pos = 0
        self.pacer = Pacer(sample_rate)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self.pacer.wait(self.pos)
        n = len(self.pcm)
        idx = np.arange(self.pos, self.pos + self.step)
        chunk = self.pcm[idx % n] if self.loop else np.where(idx < n, self.pcm[np.minimum(idx, n - 1)], 0)
        frame = AudioFrame.from_ndarray(chunk.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self.pos
        frame.time_base = fractions.Fraction(1, self.rate)
        self.pos += self.step
        return frame


class ThenSilence(MediaStreamTrack):
    """An audio track (a file's), then silence from where it ends, in real time: the server hears
    the pause that ends the last utterance (a track that just stops leaves it open, so a file
    with no silence at its end had its last sentence never translated)."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack):
        super().__init__()
        self.source = source
        self.ended = False
        self.rate = 48000
        self.layout = "mono"  # the file's (an encoder set up for its frames takes no others)
        self.pts = 0  # the next frame's, in samples at ``rate``
        self.pacer: Pacer | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self.ended:
            try:
                frame = await self.source.recv()
            except MediaStreamError:
                self.ended = True
                self.pacer = Pacer(self.rate)
                self.pacer.start = time.monotonic() - self.pts / self.rate  # the clock goes on from here
            else:
                if frame.pts is not None and frame.time_base is not None:
                    self.rate, self.layout = frame.sample_rate, frame.layout.name
                    self.pts = int((frame.pts + frame.samples) * frame.time_base * self.rate)
                return frame
        await self.pacer.wait(self.pts)
        step = self.rate // 50
        channels = len(AudioLayout(self.layout).channels)
        frame = AudioFrame.from_ndarray(np.zeros((1, step * channels), np.int16), format="s16", layout=self.layout)
        frame.sample_rate, frame.pts, frame.time_base = self.rate, self.pts, fractions.Fraction(1, self.rate)
        self.pts += step
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class PatternVideoTrack(MediaStreamTrack):
    """A moving test pattern, or a still BGR image, at a fixed frame rate."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: float = 25.0, image: np.ndarray | None = None):
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.image = image
        self.count = 0
        self.pacer = Pacer(fps)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self.pacer.wait(self.count)
        if self.image is not None:
            img = self.image
        else:
            x = (np.arange(self.width)[None, :] + self.count * 4) % 256
            img = np.zeros((self.height, self.width, 3), dtype=np.uint8)
            img[..., 0] = x
            img[..., 1] = (np.arange(self.height)[:, None] * 255 // self.height)
            img[..., 2] = 128
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts = int(self.count * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


class StreamClient:
    """One WebRTC session with the server: sends tracks, collects events and returned media."""

    def __init__(self, url: str = "http://127.0.0.1:8080", pipelines: list[str] | None = None,
                 options: dict | None = None, token: str | None = None, record: bool = False,
                 receive_slots: int = 0):
        self.url = url.rstrip("/")
        self.record = record  # ask the server to record the session (its --record-dir)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}  # API key or session token
        self.pipelines = pipelines
        self.options = options or {}
        self.events: asyncio.Queue[dict] = asyncio.Queue(maxsize=10000)
        self.session_id: str | None = None
        self.answer_sdp: str | None = None  # the last answer's SDP, as the server sent it
        self.resume_token: str | None = None  # from the ready event
        self.received: dict[str, list] = {"audio": [], "video": []}  # (arrival time, frame) of the newest
        self.frame_counts = {"audio": 0, "video": 0}
        self.keep_frames = 0  # how many returned frames of each kind to keep (0: count only)
        self.body: dict = {}  # more offer fields, e.g. {"room": ..., "display_name": ...} (server/rooms.py)
        self.receive_slots = receive_slots  # extra recvonly audio+video m-lines: a room's others
        self.by_mid: dict[str, list] = {}  # (arrival time, frame) per receiving m-line, kept as ``received``
        self.counts_by_mid: dict[str, int] = {}
        self._readers: list[asyncio.Task] = []
        self._new_pc()

    def _new_pc(self) -> None:
        # Receive slots (several m-lines of a kind): aiortc's default (balanced) bundling leaves the
        # second video one on a transport that never connects, so max-bundle, the channel last.
        bundle = RTCBundlePolicy.MAX_BUNDLE if self.receive_slots else RTCBundlePolicy.BALANCED
        self.pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=bundle))
        self.channel = None
        if not self.receive_slots:
            self._new_channel()
        self.pc.on("track", self._on_track)

    def _new_channel(self) -> None:
        self.channel = self.pc.createDataChannel("events")
        self._opened = asyncio.Event()
        self._closed = asyncio.Event()
        self.channel.on("open", self._opened.set)
        self.channel.on("close", self._closed.set)
        self.channel.on("message", self._on_message)

    def _on_message(self, message) -> None:
        with contextlib.suppress(asyncio.QueueFull, ValueError):
            event = json.loads(message)
            if isinstance(event, dict) and event.get("type") == "ready":
                self.resume_token = event.get("resume_token")
            self.events.put_nowait(event)

    def _on_track(self, track) -> None:
        mid = next((t.mid for t in self.pc.getTransceivers() if t.receiver.track is track), None)

        async def read():
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                self.frame_counts[track.kind] += 1
                self.counts_by_mid[mid] = self.counts_by_mid.get(mid, 0) + 1
                if self.keep_frames:
                    for kept in (self.received[track.kind], self.by_mid.setdefault(mid, [])):
                        kept.append((time.monotonic(), frame))
                        del kept[:-self.keep_frames]
        self._readers.append(asyncio.get_running_loop().create_task(read()))

    async def connect(self, audio: MediaStreamTrack | None = None, video: MediaStreamTrack | None = None,
                      resume: str | None = None, receive_video: bool = True) -> dict:
        """Offer (sending the given tracks, receiving audio and, unless ``receive_video`` is False,
        video back); returns the answer JSON. ``resume``: a resume token, to attach this connection
        to that session instead."""
        if audio is not None:
            self.pc.addTrack(audio)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        if video is not None:
            self.pc.addTransceiver(video, direction="sendrecv" if receive_video else "sendonly")
        elif receive_video:
            self.pc.addTransceiver("video", direction="recvonly")
        for _ in range(self.receive_slots):
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")
        if self.receive_slots:
            self._new_channel()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "options": self.options, **self.body}
        if self.pipelines is not None:
            body["pipelines"] = self.pipelines
        if self.record:
            body["record"] = True
        if resume is not None:
            body = {"sdp": body["sdp"], "type": "offer", "resume": resume}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.url}/offer", json=body, headers=self.headers) as resp:
                answer = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"offer refused ({resp.status}): {answer.get('error')}")
        self.session_id = answer["session_id"]
        self.answer_sdp = answer["sdp"]  # as the server sent it (aiortc's remoteDescription drops a=ptime)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(self._opened.wait(), 15)
        return answer

    async def resume(self, audio: MediaStreamTrack | None = None, video: MediaStreamTrack | None = None) -> dict:
        """After the connection dropped (or to drop it): a new peer connection for the same session,
        with the ready event's resume token. Tracks are new ones (aiortc ended the old ones)."""
        await self.pc.close()
        self._new_pc()
        return await self.connect(audio, video, resume=self.resume_token)

    def send(self, message: dict | str) -> None:
        self.channel.send(message if isinstance(message, str) else json.dumps(message))

    async def next_event(self, type: str | None = None, timeout: float = 10.0) -> dict:
        """The next event (of the given type), skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"no {type or 'event'} within {timeout}s")
            event = await asyncio.wait_for(self.events.get(), remaining)
            if type is None or event.get("type") == type:
                return event

    def selected_pair(self) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """(local, remote) addresses of the nominated ICE pair (for loopback assertions)."""
        for transceiver in self.pc.getTransceivers():
            transport = transceiver.receiver.transport
            if transport is None:
                continue
            pairs = getattr(transport.transport._connection, "_nominated", {})
            for pair in pairs.values():
                return pair.local_addr, pair.remote_addr
        return None

    async def close(self) -> None:
        """Leave for good: ``close`` tells the server not to wait for a resume; it closes the channel."""
        if self.channel is not None and self.channel.readyState == "open":
            self.send({"type": "close"})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closed.wait(), 2)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await self.pc.close()


async def _main(args) -> int:
    if args.ice_host:
        from server.ice import restrict_ice_hosts
        restrict_ice_hosts(args.ice_host)
    player = None
    if args.mic:
        fmt, dev = ("pulse", "default") if sys.platform.startswith("linux") else ("avfoundation", ":0")
        player = MediaPlayer(dev, format=fmt)
    elif args.media:
        player = MediaPlayer(args.media, loop=args.loop)
    client = StreamClient(args.url, args.pipelines, json.loads(args.options) if args.options else None,
                          token=args.token)
    recorder = MediaRecorder(args.record) if args.record else MediaBlackhole()
    if args.record:
        client.pc.on("track", recorder.addTrack)
    audio = player.audio if player else None
    if audio is not None and args.media and not args.loop:
        audio = ThenSilence(audio)
    await client.connect(audio, player.video if player else None)
    await recorder.start()
    print(json.dumps({"type": "connected", "session_id": client.session_id}), flush=True)
    deadline = time.monotonic() + args.duration
    ping, pinged = 0, time.monotonic()
    try:
        while time.monotonic() < deadline:
            try:
                event = await client.next_event(timeout=min(2.0, max(0.01, deadline - time.monotonic())))
                print(json.dumps(event), flush=True)
            except asyncio.TimeoutError:
                pass
            if time.monotonic() - pinged >= 2.0:  # heartbeat: keeps the session alive when silent
                ping, pinged = ping + 1, time.monotonic()
                client.send({"type": "ping", "id": ping})
    finally:
        await recorder.stop()
        await client.close()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("media", nargs="?", help="audio/video file to stream (any format ffmpeg reads)")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", default=os.environ.get("MMS_TOKEN"),
                        help="API key or session token, if the server requires one [env MMS_TOKEN]")
    parser.add_argument("--pipelines", type=lambda s: [p for p in s.split(",") if p], default=None)
    parser.add_argument("--options", help='JSON, e.g. \'{"gender": {"interval": 2}}\'')
    parser.add_argument("--mic", action="store_true", help="stream the microphone instead of a file")
    parser.add_argument("--loop", action="store_true", help="loop the media file")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds to stay connected")
    parser.add_argument("--record", help="save the returned audio/video to this file")
    parser.add_argument("--ice-host", action="append", help="restrict ICE to this local address (repeatable)")
    args = parser.parse_args()
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
