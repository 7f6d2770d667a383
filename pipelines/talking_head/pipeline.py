"""Talking head: a portrait that speaks on the session's outbound video track, lips driven by audio.

Per session an ``Avatar`` becomes the video track's source. Each time the track asks for a frame
(25 fps, on a worker thread), the avatar reads the 40 ms of driving audio around *now*, turns it
into a mouth shape (``visemes.py``) and renders the portrait with it (``avatar_render.py``,
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

REST (``rest.py``): ``POST /api/portraits``; ``/api/avatar/sessions`` create / feed audio /
status / delete, idle sessions removed after ``--avatar-idle-timeout``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from media.audio import SAMPLE_RATE
from pipelines.base import OptionError, Pipeline
from pipelines.talking_head import rest
from pipelines.talking_head.avatar import Avatar, TalkingHeadShared, BatchTicker
from pipelines.talking_head.avatar_render import TorchWarper
from pipelines.talking_head.face import DEFAULT_ID, FaceAnalyzer, PortraitStore
from pipelines.talking_head.rest import AvatarSession, avatar_sessions

log = logging.getLogger(__name__)

DRIVES = ("mic", "translation", "api")
MIC_WINDOW = 0.04  # seconds of the newest inbound audio per frame (no look-ahead is possible)
# Outbound audio just sent and about to be sent: a 40 ms window centred on the play clock (the
# newest sent 20 ms frame holds the present), 10 ms of look-ahead.
PLAYED_WINDOW = 0.03
LOOKAHEAD = 0.01
API_AHEAD_SECONDS = 0.3  # fed audio moved onto the outbound track this far ahead of playing


# --- the pipeline --------------------------------------------------------------------------------
@dataclass
class TalkingHeadSettings:
    portrait_dir: str = field(default="", metadata={
        "help": "folder that keeps uploaded portraits (empty: memory only)",
        "aliases": ("--portrait-dir",), "env_aliases": ("MMS_PORTRAIT_DIR",)})
    portrait_quota_mb: float = field(default=1024.0, metadata={
        "help": "megabytes the portrait folder may hold; uploads over it answer 507 (0: no limit)"})
    portrait_quota_files: int = field(default=10000, metadata={
        "help": "portraits the portrait folder may hold; uploads over it answer 507 (0: no limit)"})
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
    _attached: AvatarSession | None = None  # drive "api": the REST avatar session shown

    @classmethod
    def shared_key(cls, settings):
        return (settings.device, settings.talking_head.portrait_dir, settings.video_fps)

    @classmethod
    def load_shared(cls, settings, registry) -> TalkingHeadShared:
        th = settings.talking_head
        store = PortraitStore(FaceAnalyzer(), th.portrait_dir or None, quota_bytes=int(th.portrait_quota_mb * 2**20),
                              quota_files=th.portrait_quota_files)
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
                attached = self._attached = self._attach(attached)
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
            if not out.push_audio(chunk, SAMPLE_RATE, self.name):
                attached.errors.append("viewer's audio track is full; audio dropped")
        attached.playing_seconds = out.queued_seconds
        if self.avatar is not None:
            attached.frames_generated = self.avatar.frames
        attached.touch()

    def interrupt(self) -> dict | None:
        """Speech stops: the mouth closes at once, and audio fed over REST and not yet moved onto
        the track is dropped (the track's own queue is already cleared)."""
        if self.avatar is not None:
            self.avatar.close_mouth()
        attached = self._attached
        if attached is None or attached.viewer != self.context.id:
            return None
        attached.playing_seconds = 0.0
        dropped = attached.drop()
        return {"dropped_seconds": dropped, "avatar_session": attached.id} if dropped else None

    async def close(self) -> None:
        if self.avatar is not None and self._shared is not None and self._shared.ticker is not None:
            self._shared.ticker.remove(self.avatar)

    @classmethod
    def routes(cls, server) -> list:
        return rest.routes(cls, server)
