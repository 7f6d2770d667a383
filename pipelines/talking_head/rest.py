"""The talking head's REST API: portraits, and avatar sessions fed with audio over HTTP.

    POST   /api/portraits                      upload a portrait (multipart or image/*)
    POST   /api/avatar/sessions                create an avatar session
    POST   /api/avatar/sessions/{id}/audio     feed audio (WAV, or raw PCM16 at ?sample_rate=)
    POST   /api/avatar/sessions/{id}/interrupt stop its speech now (fed and queued audio dropped)
    GET    /api/avatar/sessions/{id}           status
    DELETE /api/avatar/sessions/{id}           delete
Idle avatar sessions are removed after ``--talking-head-avatar-idle-timeout``, any after
``--max-session-seconds``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque

import numpy as np
from aiohttp import web

from media.audio import SAMPLE_RATE, decode, from_pcm16, resample
from pipelines.talking_head.avatar import TalkingHeadShared
from pipelines.talking_head.face import DEFAULT_ID, BadImageError, NoFaceError, QuotaError

log = logging.getLogger(__name__)

MAX_PORTRAIT_BYTES = 10 * 1024 * 1024
MAX_AUDIO_BYTES = 16 * 1024 * 1024
MAX_BUFFERED_SECONDS = 60.0  # audio an avatar session holds before feeding answers 429


# --- REST avatar sessions ------------------------------------------------------------------------
class AvatarSessionError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class AvatarSession:
    """Audio fed over REST for one avatar, waiting to be played by its viewer."""

    def __init__(self, portrait_id: str, sample_rate: int, chunk_duration: float):
        self.id = uuid.uuid4().hex
        self.portrait_id = portrait_id
        self.sample_rate = sample_rate  # of raw PCM chunks that name none
        self.chunk_duration = chunk_duration  # longest chunk accepted, seconds
        self.created = self.last_active = time.monotonic()
        self.chunks: deque[np.ndarray] = deque()  # 16 kHz float32
        self.buffered = 0  # samples in ``chunks``
        self.fed = 0  # samples ever fed
        self.played = 0  # samples moved onto the viewer's audio track
        self.playing_seconds = 0.0  # queued on the viewer's track, not yet sent
        self.final = False
        self.closed = False
        self.viewer: str | None = None  # WebRTC session id
        self.frames_generated = 0
        self.errors: deque[str] = deque(maxlen=10)

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def feed(self, samples: np.ndarray, final: bool) -> None:
        if self.final:
            raise AvatarSessionError(409, "the audio stream has ended (is_final was sent)")
        if (self.buffered + len(samples)) / SAMPLE_RATE > MAX_BUFFERED_SECONDS:
            raise AvatarSessionError(429, f"too much audio buffered (max {MAX_BUFFERED_SECONDS:.0f} s); "
                                          "feed it closer to real time")
        if len(samples):
            self.chunks.append(samples)
            self.buffered += len(samples)
            self.fed += len(samples)
        self.final = self.final or final
        self.touch()

    def take(self, count: int) -> np.ndarray | None:
        """Up to ``count`` samples of the oldest fed audio, or None when nothing is buffered."""
        taken, need = [], count
        while need > 0 and self.chunks:
            chunk = self.chunks[0]
            taken.append(chunk[:need])
            if len(chunk) <= need:
                self.chunks.popleft()
            else:
                self.chunks[0] = chunk[need:]
            need -= len(taken[-1])
        if not taken:
            return None
        out = np.concatenate(taken)
        self.buffered -= len(out)
        self.played += len(out)
        return out

    def drop(self) -> float:
        """Forget the fed audio not played yet (an interrupt); returns its seconds."""
        seconds = self.buffered / SAMPLE_RATE
        self.chunks.clear()
        self.buffered = 0
        self.touch()
        return seconds

    @property
    def state(self) -> str:
        if self.closed:
            return "closed"
        if self.buffered or self.playing_seconds > 0:
            return "speaking"
        if self.final:
            return "finished"
        return "idle" if self.fed else "waiting"

    def status(self) -> dict:
        now = time.monotonic()
        return {"session_id": self.id, "state": self.state, "portrait_id": self.portrait_id,
                "viewer_attached": self.viewer is not None, "frames_generated": self.frames_generated,
                "buffered_audio_seconds": round(self.buffered / SAMPLE_RATE + self.playing_seconds, 3),
                "fed_audio_seconds": round(self.fed / SAMPLE_RATE, 3),
                "played_audio_seconds": round(self.played / SAMPLE_RATE - self.playing_seconds, 3),
                "is_final": self.final, "sample_rate": self.sample_rate, "chunk_duration": self.chunk_duration,
                "uptime": round(now - self.created, 2), "idle_seconds": round(now - self.last_active, 2),
                "errors": list(self.errors)}


class AvatarSessions:
    """The REST avatar sessions of one server: bounded in number; a daemon thread removes those
    unused (no feed, no status, no viewer) for ``idle_timeout`` seconds, and any older than
    ``max_age`` seconds (0: no limit)."""

    def __init__(self, capacity: int, idle_timeout: float, max_age: float = 0.0):
        self.capacity = capacity
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.sessions: dict[str, AvatarSession] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._stopped = threading.Event()

    def create(self, portrait_id: str, sample_rate: int, chunk_duration: float) -> AvatarSession:
        with self._lock:
            self._sweep_locked()
            if len(self.sessions) >= self.capacity:
                raise AvatarSessionError(503, f"too many avatar sessions ({self.capacity})")
            session = AvatarSession(portrait_id, sample_rate, chunk_duration)
            self.sessions[session.id] = session
            if self._sweeper is None and not self._stopped.is_set():
                self._sweeper = threading.Thread(target=self._sweep_loop, name="avatar-sweeper", daemon=True)
                self._sweeper.start()
            return session

    def get(self, id: str) -> AvatarSession:
        session = self.sessions.get(id)
        if session is None:
            raise AvatarSessionError(404, f"unknown avatar session {id!r}")
        return session

    def delete(self, id: str) -> AvatarSession:
        with self._lock:
            session = self.sessions.pop(id, None)
        if session is None:
            raise AvatarSessionError(404, f"unknown avatar session {id!r}")
        session.closed = True
        return session

    def _sweep_locked(self) -> None:
        now = time.monotonic()
        for id, session in list(self.sessions.items()):
            expired = self.max_age > 0 and now - session.created > self.max_age
            if now - session.last_active > self.idle_timeout or expired:
                log.info("avatar session %s %s, removed", id, f"older than {self.max_age:.0f} s" if expired
                         else f"idle for {now - session.last_active:.0f} s")
                session.closed = True
                del self.sessions[id]

    def _sweep_loop(self) -> None:
        period = min(self.idle_timeout, self.max_age) if self.max_age > 0 else self.idle_timeout
        while not self._stopped.wait(min(5.0, max(0.05, period / 4))):
            with self._lock:
                self._sweep_locked()
                if not self.sessions:
                    self._sweeper = None
                    return

    def close(self) -> None:
        """Stop the sweeper and end every session (the server is shutting down)."""
        self._stopped.set()
        with self._lock:
            for session in self.sessions.values():
                session.closed = True
            self.sessions.clear()


def avatar_sessions(models) -> AvatarSessions:
    """The REST avatar sessions of a server: kept by its model registry, closed with it."""
    return models.keep(("talking_head", "avatar_sessions"), lambda: AvatarSessions(
        models.settings.talking_head.max_avatar_sessions, models.settings.talking_head.avatar_idle_timeout,
        models.settings.max_session_seconds))


# --- request decoding ----------------------------------------------------------------------------
def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _TooLarge(Exception):
    pass


async def _read_limited(read_chunk, limit: int) -> bytes:
    data = bytearray()
    while True:
        chunk = await read_chunk()
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            raise _TooLarge


def decode_audio(body: bytes, raw_rate: int) -> tuple[np.ndarray, int]:
    """WAV (any codec FFmpeg reads) or raw s16le mono PCM at ``raw_rate`` -> (16 kHz float32, source rate)."""
    if body[:4] == b"RIFF":
        try:
            samples, rate = decode(body, SAMPLE_RATE, format="wav", source_rates=(8000, 192000))
        except ValueError as exc:
            raise AvatarSessionError(400, f"unusable WAV: {exc}") from None
        return samples, rate
    if len(body) % 2:
        raise AvatarSessionError(400, "raw PCM must be 16-bit little-endian mono (an even number of bytes)")
    return resample(from_pcm16(body), raw_rate, SAMPLE_RATE), raw_rate


def _rate(value, default: int) -> int:
    if value is None:
        return default
    try:
        rate = int(value)
    except (TypeError, ValueError, OverflowError):
        raise AvatarSessionError(400, f"sample_rate must be an integer, not {value!r}") from None
    if not 8000 <= rate <= 192000:
        raise AvatarSessionError(400, f"unsupported sample rate {rate} Hz (8000-192000)")
    return rate


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")



def routes(cls, server) -> list:
    """``POST /api/portraits`` and the ``/api/avatar/sessions`` REST API of ``cls`` (the pipeline)."""

    async def shared() -> TalkingHeadShared:
        return await server.models.shared(cls)

    async def upload_portrait(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_PORTRAIT_BYTES + 64 * 1024:
            return _error(413, f"image too large (max {MAX_PORTRAIT_BYTES // (1024 * 1024)} MB)")
        try:
            if request.content_type.startswith("multipart/"):
                reader = await request.multipart()
                part = await reader.next()
                while part is not None and not part.filename and part.name not in ("image", "file", "portrait"):
                    await part.release()
                    part = await reader.next()
                if part is None:
                    return _error(400, 'multipart body has no image part (field "image")')
                declared = (part.headers.get("Content-Type") or "").split(";")[0].strip()
                data = await _read_limited(lambda: part.read_chunk(65536), MAX_PORTRAIT_BYTES)
            elif request.content_type.startswith("image/"):
                declared = request.content_type
                data = await _read_limited(lambda: request.content.read(65536), MAX_PORTRAIT_BYTES)
            else:
                return _error(415, f"expected multipart/form-data or image/*, not {request.content_type}")
        except _TooLarge:
            return _error(413, f"image too large (max {MAX_PORTRAIT_BYTES // (1024 * 1024)} MB)")
        except ValueError as exc:  # malformed multipart
            return _error(400, f"malformed upload: {exc}")
        if declared and not declared.startswith("image/") and declared != "application/octet-stream":
            return _error(415, f"not an image ({declared})")
        if not data:
            return _error(400, "empty upload")
        store = (await shared()).portraits
        t0 = time.perf_counter()
        try:
            portrait = await asyncio.to_thread(store.add, data)
        except BadImageError as exc:
            return _error(415, str(exc))
        except NoFaceError:
            return _error(422, "no face found")
        except QuotaError as exc:
            return _error(507, str(exc))
        return web.json_response({"portrait_id": portrait.id, "width": portrait.size[0],
                                  "height": portrait.size[1],
                                  "analysis_ms": round((time.perf_counter() - t0) * 1000, 1)}, status=201)

    async def create_session(request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except (ValueError, UnicodeDecodeError, LookupError, RecursionError):
            return _error(400, "body is not valid JSON (or is nested too deeply, or in an unknown charset)")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        unknown = set(body) - {"portrait_id", "sample_rate", "chunk_duration"}
        if unknown:
            return _error(400, f"unknown field(s) {sorted(unknown)}; valid: chunk_duration, portrait_id, sample_rate")
        portrait_id = body.get("portrait_id", DEFAULT_ID)
        chunk_duration = body.get("chunk_duration", 10.0)
        try:
            rate = _rate(body.get("sample_rate"), SAMPLE_RATE)
            if not isinstance(portrait_id, str) or len(portrait_id) > 64:
                raise AvatarSessionError(400, "portrait_id must be an id string")
            if (not isinstance(chunk_duration, (int, float)) or isinstance(chunk_duration, bool)
                    or not 0.02 <= chunk_duration <= 30):
                raise AvatarSessionError(400, "chunk_duration must be a number of seconds, 0.02-30")
            if await asyncio.to_thread((await shared()).portraits.get, portrait_id) is None:
                raise AvatarSessionError(404, f"unknown portrait {portrait_id!r}")
            session = avatar_sessions(server.models).create(portrait_id, rate, float(chunk_duration))
        except AvatarSessionError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(session.status(), status=201)

    async def session_status(request: web.Request) -> web.Response:
        try:
            session = avatar_sessions(server.models).get(request.match_info["id"])
        except AvatarSessionError as exc:
            return _error(exc.status, str(exc))
        session.touch()
        return web.json_response(session.status())

    async def feed_audio(request: web.Request) -> web.Response:
        try:
            session = avatar_sessions(server.models).get(request.match_info["id"])
            final = _flag(request.query.get("is_final"))
            rate = _rate(request.query.get("sample_rate"), session.sample_rate)
            if session.final:
                raise AvatarSessionError(409, "the audio stream has ended (is_final was sent)")
            try:
                body = await _read_limited(lambda: request.content.read(65536), MAX_AUDIO_BYTES)
            except _TooLarge:
                raise AvatarSessionError(413, f"audio chunk too large (max {MAX_AUDIO_BYTES // (1024 * 1024)} MB)")
            if not body and not final:
                raise AvatarSessionError(400, "empty audio chunk (send is_final=true to end the stream)")
            samples, source_rate = np.zeros(0, np.float32), rate
            if body:
                samples, source_rate = await asyncio.to_thread(decode_audio, body, rate)
            if len(samples) > session.chunk_duration * SAMPLE_RATE + 1:
                raise AvatarSessionError(413, f"chunk of {len(samples) / SAMPLE_RATE:.2f} s is longer than "
                                              f"this session's chunk_duration ({session.chunk_duration} s)")
            session.feed(samples, final)
        except AvatarSessionError as exc:
            refused = avatar_sessions(server.models).sessions.get(request.match_info["id"])
            if refused is not None:  # the status shows the app what went wrong
                refused.errors.append(f"{exc.status}: {exc}")
            return _error(exc.status, str(exc))
        return web.json_response({"accepted_seconds": round(len(samples) / SAMPLE_RATE, 3),
                                  "source_sample_rate": source_rate, **session.status()}, status=202)

    async def interrupt(request: web.Request) -> web.Response:
        """Stop the avatar's speech: its viewer's session is interrupted (track cleared, mouth
        closed, ``interrupted`` event); without a viewer the fed audio is dropped here."""
        try:
            session = avatar_sessions(server.models).get(request.match_info["id"])
        except AvatarSessionError as exc:
            return _error(exc.status, str(exc))
        viewer = getattr(server, "sessions", {}).get(session.viewer) if session.viewer else None
        dropped = viewer.interrupt("api") if viewer is not None else session.drop()
        return web.json_response({"dropped_seconds": round(dropped, 3), **session.status()})

    async def delete_session(request: web.Request) -> web.Response:
        try:
            session = avatar_sessions(server.models).delete(request.match_info["id"])
        except AvatarSessionError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(session.status())

    return [
        web.post("/api/portraits", upload_portrait),
        web.post("/api/avatar/sessions", create_session),
        web.get("/api/avatar/sessions/{id}", session_status),
        web.post("/api/avatar/sessions/{id}/audio", feed_audio),
        web.post("/api/avatar/sessions/{id}/interrupt", interrupt),
        web.delete("/api/avatar/sessions/{id}", delete_session),
    ]
