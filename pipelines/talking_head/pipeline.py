"""Talking head: a portrait that speaks on the session's outbound video track, lips driven by audio.

Per session an ``Avatar`` becomes the video track's source. Each time the track asks for a frame
(25 fps, on a worker thread), the avatar reads the 40 ms of driving audio around *now*, turns it
into a mouth shape (``stages/visemes.py``) and renders the portrait with it (``stages/avatar_render.py``,
about 2 ms at 512 x 512 on one core). Nothing waits on a model: the face was analysed once, when
the portrait was uploaded.

Driving audio (option ``drive``):
* ``mic``: the person's own voice, the newest 40 ms of the inbound audio ring;
* ``translation``: whatever the server plays on the outbound audio track (the translation
  pipeline pushes its speech there);
* ``api``: audio fed over REST to an avatar session (``avatar_session`` option); this pipeline
  moves it onto the outbound audio track a little ahead of time.
For the last two the lips follow the outbound audio track's play clock (40 ms of audio around it:
30 ms just sent, 10 ms about to be sent), so sound and lips leave the server together.

With ``--device cuda`` a ``BatchTicker`` thread warps every live avatar of the process in one
``grid_sample`` call per frame tick; the video source then returns the newest batched frame.

REST (see ``routes``): ``POST /api/portraits``; ``/api/avatar/sessions`` create / feed audio /
status / delete, idle sessions removed after ``--avatar-idle-timeout``.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from aiohttp import web

from pipelines.base import OptionError, Pipeline
from pipelines.talking_head.avatar_render import Pose, Rig, TorchWarper
from pipelines.talking_head.face import DEFAULT_ID, BadImageError, FaceAnalyzer, NoFaceError, Portrait, PortraitStore
from pipelines.talking_head.visemes import MouthFilter, mouth_shape
from media.audio import SAMPLE_RATE, decode, from_pcm16, resample

log = logging.getLogger(__name__)

DRIVES = ("mic", "translation", "api")
MIC_WINDOW = 0.04  # seconds of the newest inbound audio per frame (no look-ahead is possible)
# Outbound audio just sent and about to be sent: a 40 ms window centred on the play clock (the
# newest sent 20 ms frame holds the present), 10 ms of look-ahead.
PLAYED_WINDOW = 0.03
LOOKAHEAD = 0.01
MAX_PORTRAIT_BYTES = 10 * 1024 * 1024
MAX_AUDIO_BYTES = 16 * 1024 * 1024
MAX_BUFFERED_SECONDS = 60.0  # audio an avatar session holds before feeding answers 429
API_AHEAD_SECONDS = 0.3  # fed audio moved onto the outbound track this far ahead of playing


# --- one speaking portrait -----------------------------------------------------------------------
class Avatar:
    """A portrait rig plus the life around the mouth: blinks and a slow idle head motion."""

    def __init__(self, rig: Rig, audio_window: Callable[[], tuple[np.ndarray, int]], seed: int | None = None):
        self.rig = rig
        self.audio_window = audio_window
        self.mouth = MouthFilter()
        self.rng = random.Random(seed)
        self.phases = [self.rng.uniform(0, 2 * math.pi) for _ in range(4)]
        self.started = time.monotonic()
        self.next_blink = self.rng.uniform(1.0, 4.0)
        self.frames = 0
        self.latest: np.ndarray | None = None  # set by the BatchTicker on cuda

    def _blink(self, t: float) -> float:
        x = t - self.next_blink
        if x < 0:
            return 0.0
        if x < 0.08:  # closing
            return x / 0.08
        if x < 0.12:
            return 1.0
        if x < 0.26:  # opening, slower
            return 1.0 - (x - 0.12) / 0.14
        self.next_blink = t + self.rng.uniform(2.0, 6.0)  # people blink every 2-6 s
        return 0.0

    def pose(self, t: float | None = None) -> Pose:
        t = time.monotonic() - self.started if t is None else t
        samples, rate = self.audio_window()
        mouth = self.mouth(mouth_shape(samples, rate))
        p = self.phases
        return Pose(open=mouth.open, round=mouth.round, blink=self._blink(t),
                    angle=1.0 * math.sin(2 * math.pi * 0.11 * t + p[0]) + 0.4 * math.sin(2 * math.pi * 0.29 * t + p[1]),
                    dx=1.5 * math.sin(2 * math.pi * 0.07 * t + p[2]),
                    dy=1.0 * math.sin(2 * math.pi * 0.13 * t + p[3]) + 1.0 * mouth.open)

    def render(self) -> np.ndarray:
        frame = self.rig.render(self.pose())
        self.frames += 1
        return frame

    def batched_frame(self) -> np.ndarray:
        """The video source on cuda: the newest frame the BatchTicker made (or the still portrait)."""
        return self.latest if self.latest is not None else self.rig.image


class BatchTicker:
    """``--device cuda``: one thread renders every live avatar of the process per frame tick, their
    warps in one ``grid_sample`` call."""

    def __init__(self, warper: TorchWarper, fps: float):
        self.warper = warper
        self.fps = fps
        self.avatars: set[Avatar] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.ticks = 0

    def add(self, avatar: Avatar) -> None:
        with self._lock:
            self.avatars.add(avatar)
            if (self._thread is None or not self._thread.is_alive()) and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._loop, name="avatar-batch", daemon=True)
                self._thread.start()

    def remove(self, avatar: Avatar) -> None:
        with self._lock:
            self.avatars.discard(avatar)
            if not any(a.rig is avatar.rig for a in self.avatars):
                self.warper.forget(avatar.rig)

    def tick(self) -> int:
        with self._lock:
            avatars = list(self.avatars)
        if avatars:
            poses = [a.pose() for a in avatars]
            for avatar, frame in zip(avatars, self.warper.render([a.rig for a in avatars], poses)):
                avatar.latest = frame
                avatar.frames += 1
        self.ticks += 1
        return len(avatars)

    def _loop(self) -> None:
        period = 1.0 / self.fps
        next_tick = time.monotonic()
        while not self._stopped.is_set():
            try:
                if not self.tick():
                    with self._lock:
                        if not self.avatars:
                            self._thread = None
                            return
            except Exception:
                log.exception("avatar batch render failed")
            next_tick = max(next_tick + period, time.monotonic())
            self._stopped.wait(max(0.0, next_tick - time.monotonic()))

    def close(self) -> None:
        """Stop the render thread (the server is shutting down)."""
        self._stopped.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=2)


@dataclass
class TalkingHeadShared:
    portraits: PortraitStore
    ticker: BatchTicker | None
    rigs: OrderedDict = field(default_factory=OrderedDict)  # portrait id -> Rig
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rig(self, portrait: Portrait) -> Rig:
        with self.lock:
            rig = self.rigs.get(portrait.id)
            if rig is None or rig.portrait is not portrait:
                rig = self.rigs[portrait.id] = Rig(portrait)
            self.rigs.move_to_end(portrait.id)
            while len(self.rigs) > 64:
                self.rigs.popitem(last=False)
            return rig

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.close()


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
    unused (no feed, no status, no viewer) for ``idle_timeout`` seconds."""

    def __init__(self, capacity: int, idle_timeout: float):
        self.capacity = capacity
        self.idle_timeout = idle_timeout
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
            if now - session.last_active > self.idle_timeout:
                log.info("avatar session %s idle for %.0f s, removed", id, now - session.last_active)
                session.closed = True
                del self.sessions[id]

    def _sweep_loop(self) -> None:
        while not self._stopped.wait(min(5.0, max(0.05, self.idle_timeout / 4))):
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
        models.settings.talking_head.max_avatar_sessions, models.settings.talking_head.avatar_idle_timeout))


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
            samples, rate = decode(body, SAMPLE_RATE, format="wav")
        except ValueError as exc:
            raise AvatarSessionError(400, f"unreadable WAV ({exc})") from None
        if not 8000 <= rate <= 192000:
            raise AvatarSessionError(400, f"unsupported sample rate {rate} Hz (8000-192000)")
        return samples, rate
    if len(body) % 2:
        raise AvatarSessionError(400, "raw PCM must be 16-bit little-endian mono (an even number of bytes)")
    return resample(from_pcm16(body), raw_rate, SAMPLE_RATE), raw_rate


def _rate(value, default: int) -> int:
    if value is None:
        return default
    try:
        rate = int(value)
    except (TypeError, ValueError):
        raise AvatarSessionError(400, f"sample_rate must be an integer, not {value!r}") from None
    if not 8000 <= rate <= 192000:
        raise AvatarSessionError(400, f"unsupported sample rate {rate} Hz (8000-192000)")
    return rate


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


# --- the pipeline --------------------------------------------------------------------------------
@dataclass
class TalkingHeadSettings:
    portrait_dir: str = field(default="", metadata={
        "help": "folder that keeps uploaded portraits (empty: memory only)",
        "aliases": ("--portrait-dir",), "env_aliases": ("MMS_PORTRAIT_DIR",)})
    max_avatar_sessions: int = field(default=32, metadata={
        "help": "REST avatar sessions at once",
        "aliases": ("--max-avatar-sessions",), "env_aliases": ("MMS_MAX_AVATAR_SESSIONS",)})
    avatar_idle_timeout: float = field(default=120.0, metadata={
        "help": "seconds before an unused REST avatar session is removed",
        "aliases": ("--avatar-idle-timeout",), "env_aliases": ("MMS_AVATAR_IDLE_TIMEOUT",)})


class TalkingHeadPipeline(Pipeline):
    name = "talking_head"
    Settings = TalkingHeadSettings
    description = "A portrait that speaks on the returned video, lips driven by audio"
    defaults = {
        "drive": "mic",  # mic | translation | api
        "portrait": DEFAULT_ID,  # an id from POST /api/portraits
        "avatar_session": "",  # drive "api": the REST avatar session to show
    }
    requires = frozenset({"video_out"})
    avatar: Avatar | None = None  # the video source, once the portrait is ready
    _shared: TalkingHeadShared | None = None

    @classmethod
    def shared_key(cls, settings):
        return (settings.device, settings.talking_head.portrait_dir, settings.video_fps)

    @classmethod
    def load_shared(cls, settings, registry) -> TalkingHeadShared:
        store = PortraitStore(FaceAnalyzer(), settings.talking_head.portrait_dir or None)
        ticker = None
        if settings.device.startswith("cuda"):
            ticker = BatchTicker(TorchWarper(settings.device), settings.video_fps)
        return TalkingHeadShared(store, ticker)

    def validate(self, options):
        if options["drive"] not in DRIVES:
            raise OptionError(f"talking_head: drive must be one of {list(DRIVES)}, not {options['drive']!r}")
        for key in ("portrait", "avatar_session"):
            if not isinstance(options[key], str) or len(options[key]) > 64:
                raise OptionError(f"talking_head: {key} must be an id string")
        if options["drive"] == "api":
            if not options["avatar_session"]:
                raise OptionError("talking_head: drive 'api' needs an avatar_session (POST /api/avatar/sessions)")
            if options["avatar_session"] not in avatar_sessions(self.context.models).sessions:
                raise OptionError(f"talking_head: unknown avatar session {options['avatar_session']!r}")

    # --- audio windows, called from the video track's worker thread ---
    def _audio_window(self) -> tuple[np.ndarray, int]:
        if self.options["drive"] == "mic":
            return self.context.audio.latest(int(MIC_WINDOW * SAMPLE_RATE)), SAMPLE_RATE
        out = self.context.audio_out
        return out.audio_around_clock(PLAYED_WINDOW, LOOKAHEAD), out.sample_rate

    async def run(self) -> None:
        shared: TalkingHeadShared = await self.context.models.shared(type(self))
        self._shared = shared
        shown: tuple | None = None
        attached: AvatarSession | None = None
        try:
            while True:
                wanted = self._wanted_portrait()
                if wanted != shown:
                    await self._show(shared, wanted)
                    shown = wanted
                attached = self._attach(attached)
                if attached is not None:
                    self._feed_track(attached)
                await asyncio.sleep(0.05)
        finally:
            self._detach(attached)

    def _wanted_portrait(self) -> tuple[str, str]:
        """(portrait id, avatar session id): an attached avatar session decides the portrait."""
        if self.options["drive"] == "api":
            registry = avatar_sessions(self.context.models)
            session = registry.sessions.get(self.options["avatar_session"])
            if session is not None:
                return session.portrait_id, session.id
        return self.options["portrait"], ""

    async def _show(self, shared: TalkingHeadShared, wanted: tuple[str, str]) -> None:
        portrait_id = wanted[0]
        t0 = time.perf_counter()
        portrait = await asyncio.to_thread(shared.portraits.get, portrait_id)
        if portrait is None:
            self.context.emit_error(self.name, f"unknown portrait {portrait_id!r}; showing the default")
            portrait = await asyncio.to_thread(shared.portraits.get, DEFAULT_ID)
        rig = await asyncio.to_thread(shared.rig, portrait)
        previous, self.avatar = self.avatar, Avatar(rig, self._audio_window)
        if shared.ticker is not None:
            if previous is not None:
                shared.ticker.remove(previous)
            shared.ticker.add(self.avatar)
            self.context.video_out.source = self.avatar.batched_frame
        else:
            self.context.video_out.source = self.avatar.render
        self.context.observe_inference(self.name, "setup", time.perf_counter() - t0)
        self.context.emit("talking_head", state="showing", portrait_id=portrait.id, drive=self.options["drive"],
                          width=rig.width, height=rig.height, avatar_session=wanted[1] or None)

    def _attach(self, attached: AvatarSession | None) -> AvatarSession | None:
        """Follow the ``avatar_session`` option: attach to it, or let go of one that ended."""
        wanted = self.options["avatar_session"] if self.options["drive"] == "api" else ""
        if attached is not None and (attached.closed or attached.id != wanted):
            if attached.closed:
                self.context.emit("talking_head", state="closed", avatar_session=attached.id)
            self._detach(attached)
            attached = None
        if attached is None and wanted:
            session = avatar_sessions(self.context.models).sessions.get(wanted)
            if session is not None and not session.closed:
                if session.viewer not in (None, self.context.id):
                    self.context.emit_error(self.name, f"avatar session {wanted} already has a viewer")
                    self.options = {**self.options, "avatar_session": ""}
                    return None
                session.viewer = self.context.id
                attached = session
        return attached

    def _detach(self, attached: AvatarSession | None) -> None:
        if attached is not None and attached.viewer == self.context.id:
            attached.viewer = None
            attached.playing_seconds = 0.0
            self.context.audio_out.clear_buffer()

    def _feed_track(self, attached: AvatarSession) -> None:
        """Move fed audio onto the outbound track a little ahead of the play clock (the lips
        follow that clock; keeping little queued keeps a delete or a new stream responsive)."""
        out = self.context.audio_out
        while out.queued_seconds < API_AHEAD_SECONDS:
            chunk = attached.take(int(0.1 * SAMPLE_RATE))
            if chunk is None:
                break
            if not out.push_audio(chunk, SAMPLE_RATE):
                attached.errors.append("viewer's audio track is full; audio dropped")
        attached.playing_seconds = out.queued_seconds
        if self.avatar is not None:
            attached.frames_generated = self.avatar.frames
        attached.touch()

    async def close(self) -> None:
        if self.avatar is not None and self._shared is not None and self._shared.ticker is not None:
            self._shared.ticker.remove(self.avatar)

    # --- REST ----------------------------------------------------------------------------------
    @classmethod
    def routes(cls, server) -> list:

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
            return web.json_response({"portrait_id": portrait.id, "width": portrait.size[0],
                                      "height": portrait.size[1],
                                      "analysis_ms": round((time.perf_counter() - t0) * 1000, 1)}, status=201)

        async def create_session(request: web.Request) -> web.Response:
            try:
                body = await request.json() if request.can_read_body else {}
            except (ValueError, UnicodeDecodeError):
                return _error(400, "body is not valid JSON")
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
            web.delete("/api/avatar/sessions/{id}", delete_session),
        ]
