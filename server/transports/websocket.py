"""The WebSocket transport: audio pipelines over one socket, for clients without WebRTC.

Any pipeline that needs no camera or returned video runs here exactly as over WebRTC: the
client's PCM16 frames are resampled once into the session's ring, events go out as JSON text
frames and speech as binary PCM16 frames at the client's sample rate.

    client  {"type": "start_stream", "pipelines": ["gender"], "options": {"gender": {...}},
             "sample_rate": 16000}                                     (GET /ws)
            {"type": "start_stream", "src_lang": "en", "tgt_lang": "es", "sample_rate": 16000}
                                         (a pipeline's own endpoint, e.g. /ws/translate, /ws/stream)
    server  {"type": "started", "session_id", "pipelines", "sample_rate", ...}
    client  binary frames: PCM16 little-endian mono at sample_rate
    server  the pipelines' events, and binary PCM16 speech at sample_rate
    client  ping / text / config (the control protocol, server/transports/session.py)
    client  {"type": "stop_stream"} -> what was sent is finished, then {"type": "stopped"}
    anything wrong -> {"type": "error", "message": ...}; the socket stays open, except:
      a frame over MAX_FRAME_BYTES -> closed by aiohttp, 1009 (message too big)
      no message for --ws-idle-timeout s -> an error, then closed 4408
      over --ws-messages-per-second -> an error, the excess dropped; as many dropped as
        --ws-message-burst -> closed 4429
      --max-session-seconds reached -> a shutdown event, then closed 1001
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable

import numpy as np
from aiohttp import WSMsgType, web

from media.audio import SAMPLE_RATE, from_pcm16, resample, to_pcm16
from media.buffers import AudioRing
from pipelines.base import OptionError, Pipeline
from server.auth import OPEN, AuthError, Grant
from server.limits import TokenBucket
from server.transports.session import Session

log = logging.getLogger(__name__)

SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_FRAME_BYTES = 1 << 20  # one binary frame: ~32 s of 16 kHz PCM16
OUTBOX = 256  # messages waiting for a slow client before events are dropped
MAX_AUDIO_QUEUE = 60.0  # seconds of speech the client may have waiting to play
DRAIN_TIMEOUT = 120.0  # seconds stop_stream waits for the pipelines to finish what was sent

# start_stream message -> ({name: (pipeline class, options)}, extra fields of "started");
# raises OptionError
StartFn = Callable[[dict], tuple[dict[str, tuple[type[Pipeline], dict]], dict]]


class SocketAudioOut:
    """``push_audio`` for a socket: PCM16 at the client's rate. The client plays what it gets in
    real time, so ``queued_seconds`` is how much of what was sent has not played yet."""

    def __init__(self, send: Callable[[bytes], bool], sample_rate: int):
        self._send = send
        self.sample_rate = sample_rate
        self._play_end = 0.0  # monotonic time the client finishes playing what was sent
        self._sent: deque[tuple[float, float, str | None]] = deque(maxlen=1024)  # (play end, seconds, source)

    @property
    def queued_seconds(self) -> float:
        return max(0.0, self._play_end - time.monotonic())

    def push_audio(self, samples: np.ndarray, sample_rate: int, source: str | None = None) -> bool:
        pcm = to_pcm16(resample(samples, sample_rate, self.sample_rate))
        seconds = len(pcm) / self.sample_rate
        if self.queued_seconds + seconds > MAX_AUDIO_QUEUE or not self._send(pcm.tobytes()):
            return False
        self._play_end = max(self._play_end, time.monotonic()) + seconds
        self._sent.append((self._play_end, seconds, source))
        return True

    def clear_buffer(self) -> dict[str | None, float]:
        """What was sent cannot be called back: the client stops playing on the ``interrupted``
        event. Returns the seconds it had not played yet, per source."""
        now, dropped = time.monotonic(), {}
        for end, seconds, source in self._sent:
            if end > now:
                dropped[source] = dropped.get(source, 0.0) + min(seconds, end - now)
        self._sent.clear()
        self._play_end = 0.0
        return dropped

    def audio_around_clock(self, before: float, after: float) -> np.ndarray:
        return np.zeros(0, np.float32)  # the client plays it: no play clock here


class SocketSession(Session):
    transport = "websocket"

    def __init__(self, settings, metrics, models, ws: web.WebSocketResponse, on_close=None,
                 grant: Grant | None = OPEN, authenticate: Callable[[str], Grant] | None = None):
        super().__init__(settings, metrics, models, on_close)
        self.ws = ws
        self.grant = grant  # None: the first message must carry a "token"
        self._authenticate = authenticate
        self.audio_out: SocketAudioOut | None = None
        self.samples_in = 0
        self._stream_tasks: set[asyncio.Task] = set()  # the running stream's pipelines
        self._outbox: asyncio.Queue = asyncio.Queue(OUTBOX)
        rate = settings.ws_messages_per_second
        self._rate = TokenBucket(rate, settings.ws_message_burst, time.monotonic()) if rate > 0 else None
        self.dropped = 0  # messages dropped for going over the rate
        self._warned = float("-inf")  # when the last 'too many messages' error was sent
        self._sender = self.spawn(self._send_loop(), "ws-send")

    # --- a stream: start_stream .. stop_stream ------------------------------------------------------
    def start(self, pipelines: dict, sample_rate: int, fields: dict) -> None:
        """New pipelines on a fresh ring (raises OptionError, leaving no stream)."""
        self.audio = AudioRing(sample_rate=SAMPLE_RATE)
        self.audio_out = SocketAudioOut(self._put, sample_rate)
        self.samples_in = 0
        try:
            self.add_pipelines(pipelines)
        except OptionError:
            self.pipelines = {}
            raise
        self._stream_tasks = self.start_pipelines()
        self.emit("started", session_id=self.id, pipelines=list(self.pipelines), sample_rate=sample_rate,
                  **fields)

    def write_pcm16(self, data: bytes) -> None:
        self.audio.write(resample(from_pcm16(data), self.audio_out.sample_rate, SAMPLE_RATE))
        self.samples_in += len(data) // 2

    async def finish(self) -> None:
        """The input is complete: let the pipelines hear its end and finish, then ``stopped``."""
        if self.samples_in == 0:
            self.emit_error(None, "no audio was received before stop_stream")
        else:
            tail = max(p.end_of_input_silence for p in self.pipelines.values())
            self.audio.write(np.zeros(int(tail * SAMPLE_RATE), np.float32))
            drained = asyncio.ensure_future(asyncio.gather(*(p.drained() for p in self.pipelines.values())))
            # a pipeline that ends (fails) stops the wait too
            done, _ = await asyncio.wait({drained, *self._stream_tasks}, timeout=DRAIN_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
            if drained not in done:
                drained.cancel()
                self.emit_error(None, f"the pipelines did not finish in {DRAIN_TIMEOUT:.0f} s")
        self.emit("stopped", audio_seconds=round(self.samples_in / self.audio_out.sample_rate, 3))
        await self.drain()
        await self.stop_pipelines()

    async def stop_pipelines(self) -> None:
        for task in self._stream_tasks:
            task.cancel()
        await asyncio.gather(*self._stream_tasks, return_exceptions=True)
        for name, pipeline in self.pipelines.items():
            await self.guard(name, pipeline.close())
        self.pipelines, self._stream_tasks = {}, set()

    # --- outbound ------------------------------------------------------------------------------------
    def _put(self, message: str | bytes) -> bool:
        try:
            self._outbox.put_nowait(message)
            return True
        except asyncio.QueueFull:  # the client is not reading; don't grow without bound
            return False

    def send(self, message: str) -> bool:
        return self._put(message)

    async def _send_loop(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(message)
            except (ConnectionError, RuntimeError):
                return  # closed under us; the handler notices too

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything queued has been handed to the socket."""
        deadline = time.monotonic() + timeout
        while not self._outbox.empty() and time.monotonic() < deadline and not self._sender.done():
            await asyncio.sleep(0.01)

    async def _receive(self):
        """The next message within ``--ws-idle-timeout``, or None: closed, idle (closed 4408 after an
        error) or flooding (closed 4429); messages over ``--ws-messages-per-second`` are dropped."""
        idle = self.settings.ws_idle_timeout
        while True:
            try:
                msg = await self.ws.receive(timeout=idle if idle > 0 else None)
            except asyncio.TimeoutError:
                return await self._refuse(4408, "idle timeout", f"no message for {idle:g} s: closing the socket")
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return None
            if self._rate is None or not self._rate.take(time.monotonic()):
                return msg
            self.dropped += 1
            if self.dropped >= self.settings.ws_message_burst:
                return await self._refuse(4429, "too many messages", f"{self.dropped} messages dropped for going over "
                                                f"{self.settings.ws_messages_per_second:g} a second: closing the socket")
            if time.monotonic() - self._warned > 1.0:  # one error a second, not one per message
                self._warned = time.monotonic()
                self.emit_error(None, f"too many messages (at most {self.settings.ws_messages_per_second:g} a "
                                      f"second); {self.dropped} dropped so far")

    async def _refuse(self, code: int, reason: str, message: str) -> None:
        self.emit_error(None, message)
        await self.drain(timeout=1.0)
        await self.ws.close(code=code, message=reason.encode())

    async def serve(self, start: StartFn) -> None:
        """The socket's messages, until it closes."""
        while (msg := await self._receive()) is not None:
            if self.grant is None and not await self._sign_in(msg):
                await self.drain(timeout=1.0)
                await self.ws.close(code=4401, message=b"authentication required")
                return
            if msg.type == WSMsgType.BINARY:
                if not self.pipelines:
                    self.emit_error(None, "send a start_stream message before audio")
                elif not msg.data:
                    self.emit_error(None, "empty audio frame")
                elif len(msg.data) % 2:
                    self.emit_error(None, "audio frames must be PCM16: an even number of bytes")
                else:
                    self.write_pcm16(msg.data)
                continue
            if msg.type != WSMsgType.TEXT:
                continue
            message = self.parse(msg.data)
            if message is None:
                continue
            kind = message["type"]
            if kind == "start_stream":
                if self.pipelines:
                    self.emit_error(None, "a stream is already started; send stop_stream first")
                    continue
                rate = message.get("sample_rate", SAMPLE_RATE)
                if not isinstance(rate, int) or isinstance(rate, bool) or rate not in SAMPLE_RATES:
                    self.emit_error(None, f"unsupported sample_rate {rate!r}; use one of {list(SAMPLE_RATES)}")
                    continue
                try:
                    pipelines, fields = start(message)
                    self.grant.check(pipelines)
                    self.start(pipelines, rate, fields)
                except (OptionError, AuthError) as exc:
                    self.emit_error(None, str(exc))
            elif kind == "auth":  # a first message that only signs in
                self.emit("authenticated")
            elif kind == "stop_stream":
                if not self.pipelines:
                    self.emit_error(None, "no stream to stop; send start_stream first")
                else:
                    await self.finish()
            elif kind in ("text", "config") and not self.pipelines:
                self.emit_error(None, f"no stream to {'configure' if kind == 'config' else 'send text to'}; "
                                      "send start_stream first")
            elif not await self.handle_control(message):
                self.emit_error(None, f"unknown message type {kind!r}; expected start_stream, binary audio, "
                                      "ping, text, config, interrupt or stop_stream")

    async def _sign_in(self, msg) -> bool:
        """Authentication in the first message (browsers cannot set headers on a WebSocket)."""
        token = None
        if msg.type == WSMsgType.TEXT:
            message = self.parse(msg.data)
            token = message.get("token") if message else None
        if not isinstance(token, str):
            self.emit_error(None, 'authentication required: send "token" in the first message '
                                  "(or ?token= in the URL)")
            return False
        try:
            self.grant = self._authenticate(token)
        except AuthError as exc:
            self.emit_error(None, exc.message)
            return False
        return True

    async def _release(self) -> None:
        await self.drain(timeout=1.0)
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)
        if not self.ws.closed and self.ws.prepared:  # closed by the server (shutdown): tell the client
            await self.ws.close(code=1001, message=(self.end_reason or "server shutting down").encode())


def pipelines_start(registry: dict) -> StartFn:
    """The generic ``/ws`` endpoint: ``{"pipelines": [...], "options": {name: {...}}}``."""
    def start(message: dict):
        names, options = message.get("pipelines"), message.get("options", {})
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise OptionError('start_stream needs "pipelines": a non-empty list of names')
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise OptionError('"options" must map pipeline names to objects')
        unknown = [n for n in names + list(options) if n not in registry]
        if unknown:
            raise OptionError(f"unknown pipeline(s) {unknown}; valid: {sorted(registry)}")
        return {n: (registry[n], options.get(n, {})) for n in dict.fromkeys(names)}, {}
    return start


def single_start(cls: type[Pipeline], read_options) -> StartFn:
    """A pipeline's own endpoint: its ``read_options(message) -> (options, fields)``."""
    def start(message: dict):
        options, fields = read_options(message)
        return {cls.name: (cls, options)}, fields
    return start
