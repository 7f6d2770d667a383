"""WebSocket transport for pipelines: a Session-like context over one socket.

A pipeline only touches its context's ``audio`` (AudioRing), ``emit``/``emit_error``,
``audio_out.push_audio``, ``publish``/``subscribe``, ``set_overlay``, ``observe_inference``,
``load_shared`` and ``settings``. ``SocketSession`` provides those over a WebSocket: the client's
PCM16 frames are resampled once into the ring, events go out as JSON text frames and speech as
binary PCM16 frames at the client's sample rate. So ``/ws/translate`` and ``/ws/stream`` run the
very pipeline class that WebRTC sessions run.

Protocol (both endpoints):
    client  {"type": "start_stream", "src_lang": "en", "tgt_lang": "es", "sample_rate": 16000}
    server  {"type": "started", "session_id", "mode", "src_lang", "tgt_lang", "sample_rate"}
    client  binary frames: PCM16 little-endian mono at sample_rate
    server  {"type": "transcript" | "translation", ...} and binary PCM16 speech at sample_rate
    client  {"type": "config", "options": {...}}  (e.g. swap languages)  -> {"type": "config", ...}
    client  {"type": "stop_stream"}  -> the rest is translated, then {"type": "stopped"}
    anything wrong -> {"type": "error", "message": ...}; the socket stays open
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
from aiohttp import WSMsgType, web

from pipelines.base import OptionError
from server.context import PipelineContext
from tracks.buffers import SAMPLE_RATE, AudioRing
from tracks.outbound import resample

log = logging.getLogger(__name__)

SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_FRAME_BYTES = 1 << 20  # one binary frame: ~32 s of 16 kHz PCM16
OUTBOX = 256  # messages waiting for a slow client before events are dropped
MAX_AUDIO_QUEUE = 60.0  # seconds of speech the client may have waiting to play


class SocketAudioOut:
    """``push_audio`` for a socket: PCM16 at the client's rate. The client plays what it gets in
    real time, so ``queued_seconds`` is how much of what was sent has not played yet."""

    def __init__(self, send, sample_rate: int):
        self._send = send
        self.sample_rate = sample_rate
        self._play_end = 0.0  # monotonic time the client finishes playing what was sent

    @property
    def queued_seconds(self) -> float:
        return max(0.0, self._play_end - time.monotonic())

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> bool:
        pcm = np.clip(resample(samples, sample_rate, self.sample_rate) * 32767, -32768, 32767).astype("<i2")
        seconds = len(pcm) / self.sample_rate
        if self.queued_seconds + seconds > MAX_AUDIO_QUEUE or not self._send(pcm.tobytes()):
            return False
        self._play_end = max(self._play_end, time.monotonic()) + seconds
        return True

    def clear_buffer(self) -> None:
        self._play_end = 0.0


class SocketSession(PipelineContext):
    """What a pipeline sees of a session, for one WebSocket."""

    def __init__(self, server, ws: web.WebSocketResponse, sample_rate: int):
        super().__init__(server)
        self.ws = ws
        self.sample_rate = sample_rate
        self.audio = AudioRing()
        self.audio_out = SocketAudioOut(self._put, sample_rate)
        self.camera = None
        self._outbox: asyncio.Queue = asyncio.Queue(OUTBOX)
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    # --- inbound -----------------------------------------------------------------------------------
    def write_pcm16(self, data: bytes) -> None:
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        self.audio.write(resample(samples, self.sample_rate, SAMPLE_RATE))

    # --- outbound ----------------------------------------------------------------------------------
    def _put(self, message: str | bytes) -> bool:
        try:
            self._outbox.put_nowait(message)
            return True
        except asyncio.QueueFull:  # the client is not reading; don't grow without bound
            self.metrics.events_dropped.inc()
            return False

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
        while not self._outbox.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def emit(self, type: str, **fields) -> None:
        if self._put(self.event_json(type, **fields)):
            self.metrics.events_out.labels(type).inc()

    async def close(self) -> None:
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)


class Stream:
    """One started stream on a socket: its context, pipeline and running task."""

    def __init__(self, context: SocketSession, pipeline, task: asyncio.Task):
        self.context, self.pipeline, self.task = context, pipeline, task
        self.samples_in = 0

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.pipeline.close()
        await self.context.close()


def translation_routes(pipeline_cls, server) -> list:
    """``/languages``, ``/ws/translate`` (complete-recording mode) and ``/ws/stream`` (continuous)."""
    from pipelines.translation import available_pairs, mt_backend_for

    open_sockets: set = set()  # per server: WebSocket streams count towards --max-sessions

    async def languages(request: web.Request) -> web.Response:
        settings = server.settings
        pairs = available_pairs(settings)
        return web.json_response({
            "pairs": [{"source": s, "target": t, "mt": mt_backend_for(settings, s, t)} for s, t in pairs],
            "sources": sorted({s for s, _ in pairs}), "targets": sorted({t for _, t in pairs}),
            "seamless_pairs": len(available_pairs(settings, "seamless")),
            "asr_model": settings.asr_model, "mt_backend": settings.mt_backend,
            "tts_backend": settings.tts_backend,
        })

    def handler(mode: str):
        async def socket(request: web.Request) -> web.StreamResponse:
            if len(server.sessions) + len(open_sockets) >= server.settings.max_sessions:
                return web.json_response({"error": f"server is full ({server.settings.max_sessions} sessions)"},
                                         status=503)
            ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=20)
            await ws.prepare(request)
            open_sockets.add(ws)
            try:
                await _serve(ws, mode)
            finally:
                open_sockets.discard(ws)
            return ws
        return socket

    async def _serve(ws: web.WebSocketResponse, mode: str) -> None:
        stream: Stream | None = None

        async def send_error(message: str) -> None:
            await ws.send_json({"type": "error", "pipeline": pipeline_cls.name, "message": message})

        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    if stream is None:
                        await send_error("send a start_stream message before audio")
                    elif not msg.data:
                        await send_error("empty audio frame")
                    elif len(msg.data) % 2:
                        await send_error("audio frames must be PCM16: an even number of bytes")
                    else:
                        stream.context.write_pcm16(msg.data)
                        stream.samples_in += len(msg.data) // 2
                    continue
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    await send_error("malformed message: not JSON")
                    continue
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "start_stream":
                    if stream is not None:
                        await send_error("a stream is already started; send stop_stream first")
                        continue
                    stream = await _start(ws, message, mode, send_error)
                elif kind == "stop_stream":
                    if stream is None:
                        await send_error("no stream to stop; send start_stream first")
                        continue
                    await _finish(stream)
                    stream = None
                elif kind == "config":
                    if stream is None:
                        await send_error("no stream to configure; send start_stream first")
                        continue
                    options = message.get("options")
                    try:
                        if not isinstance(options, dict):
                            raise OptionError('config: "options" must be an object')
                        stream.pipeline.configure(options)
                    except OptionError as exc:
                        await send_error(str(exc))
                        continue
                    stream.context.emit("config", pipeline=pipeline_cls.name, options=stream.pipeline.options)
                elif kind == "ping":
                    await ws.send_json({"type": "pong", "id": message.get("id")})
                else:
                    await send_error(f"unknown message type {kind!r}; expected start_stream, "
                                     "binary audio, config, stop_stream or ping")
        finally:
            if stream is not None:
                await stream.stop()

    async def _start(ws, message: dict, mode: str, send_error) -> Stream | None:
        rate = message.get("sample_rate", SAMPLE_RATE)
        source, target = message.get("src_lang"), message.get("tgt_lang")
        if not isinstance(source, str) or not isinstance(target, str):
            await send_error('start_stream needs "src_lang" and "tgt_lang" strings, e.g. "en" and "es"')
            return None
        if not isinstance(rate, int) or isinstance(rate, bool) or rate not in SAMPLE_RATES:
            await send_error(f"unsupported sample_rate {rate!r}; use one of {list(SAMPLE_RATES)}")
            return None
        options = {"source": source, "target": target, "mode": mode}
        extra = message.get("options", {})
        if not isinstance(extra, dict):
            await send_error('start_stream "options" must be an object')
            return None
        context = SocketSession(server, ws, rate)
        try:
            pipeline = pipeline_cls(context, {**extra, **options})
        except OptionError as exc:
            await context.close()
            await send_error(str(exc))
            return None
        task = asyncio.get_running_loop().create_task(_run(context, pipeline), name=f"ws-{context.id[:8]}")
        context.emit("started", session_id=context.id, mode=mode, src_lang=source, tgt_lang=target,
                     sample_rate=rate)
        return Stream(context, pipeline, task)

    async def _run(context: SocketSession, pipeline) -> None:
        try:
            await pipeline.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("pipeline %s failed on a WebSocket", pipeline_cls.name)
            context.emit_error(pipeline_cls.name, f"{type(exc).__name__}: {exc}")

    async def _finish(stream: Stream) -> None:
        """The recording is complete: end the last utterance with silence, translate what is
        left, then say ``stopped``."""
        context, pipeline = stream.context, stream.pipeline
        if stream.samples_in == 0:
            context.emit_error(pipeline_cls.name, "no audio was received before stop_stream")
        else:
            tail = pipeline.options["min_silence"] + 0.2
            context.audio.write(np.zeros(int(tail * SAMPLE_RATE), np.float32))
            drained = asyncio.get_running_loop().create_task(pipeline.drained())
            done, _ = await asyncio.wait({drained, stream.task}, timeout=120,
                                         return_when=asyncio.FIRST_COMPLETED)
            if drained not in done:
                drained.cancel()
                context.emit_error(pipeline_cls.name, "translation did not finish in time")
        context.emit("stopped", audio_seconds=round(stream.samples_in / context.sample_rate, 3))
        await context.drain()
        await stream.stop()

    return [web.get("/languages", languages),
            web.get("/ws/translate", handler("utterance")),
            web.get("/ws/stream", handler("streaming"))]
