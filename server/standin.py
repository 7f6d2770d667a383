"""A talking head standing in for a room participant without a camera (server/rooms.py).

The others see the participant's portrait (``portrait``, an id from ``POST /api/portraits``)
speaking, on the video slot that would carry their camera. It is the talking_head pipeline's
``Avatar`` (the same rig, renderer and, with ``--device cuda``, the same ``BatchTicker``) behind a
``SynthVideoTrack`` at the server's frame rate, relayed to every listener like a camera. One
avatar per language the participant is heard in, rendered once each whoever watches, and only
while some listener's slot shows it (``Room.refresh`` calls ``keep``; a track nobody shows is
stopped, and made again when someone does):

* ``None``, the voice: lips driven by the participant's own voice (the newest 40 ms of their
  microphone), for listeners who hear them untranslated;
* a language: lips driven by their speech translated into it, for listeners who hear that
  language (``Room`` routes it, ``speak``). A ``SpeechTimeline`` plays each translated utterance
  on the server's clock as it is routed (after the one before), as the listener's audio track
  does when nothing else is queued on it; the lips read 40 ms around *now* of it.

While nothing is said, a talking head is rendered 5 times a second, not 25 (``QuietRate``).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np

from media.audio import SAMPLE_RATE
from media.buffers import LatestFrame
from pipelines.talking_head.avatar import Avatar
from pipelines.talking_head.face import DEFAULT_ID
from pipelines.talking_head.pipeline import LOOKAHEAD, MIC_WINDOW, PLAYED_WINDOW, TalkingHeadPipeline
from tracks.outbound import SynthVideoTrack

log = logging.getLogger(__name__)

MAX_SECONDS = 60.0  # translated speech kept ahead of now, at most
QUIET_FPS = 5.0  # frames a second of a talking head whose lips have nothing to say (blinks, sway)
QUIET_LEVEL = 1e-3  # peak of the driving audio under which the lips are still


class QuietRate:
    """A talking head's frames: rendered every tick while there is speech in its driving window,
    ``fps`` a second while there is none (the same picture handed again in between, which the
    video track holds rather than re-sends)."""

    def __init__(self, render, window, fps: float = QUIET_FPS, clock=time.monotonic):
        self.render, self.window, self.interval, self.clock = render, window, 1.0 / fps, clock
        self._last: np.ndarray | None = None
        self._at = -1e9
        self.rendered = 0

    def __call__(self) -> np.ndarray | None:
        now = self.clock()
        samples, _ = self.window()
        quiet = len(samples) == 0 or float(np.max(np.abs(samples))) < QUIET_LEVEL
        if self._last is None or not quiet or now - self._at >= self.interval:
            image = self.render()
            if image is None:
                return self._last
            self._last, self._at = image, now
            self.rendered += 1
        return self._last


class SpeechTimeline:
    """Speech scheduled on the monotonic clock: each pushed utterance plays from the end of the
    one before, or from now. Thread-safe (pushed on the event loop, read by a render thread)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._parts: list[tuple[float, np.ndarray, int]] = []  # (start time, float32 samples, rate)

    def push(self, samples: np.ndarray, rate: int) -> bool:
        now = self.clock()
        with self._lock:
            self._parts = [p for p in self._parts if p[0] + len(p[1]) / p[2] > now - 1.0]
            start = max([now] + [p[0] + len(p[1]) / p[2] for p in self._parts])
            if start - now > MAX_SECONDS:
                return False
            self._parts.append((start, np.asarray(samples, np.float32).reshape(-1), rate))
        return True

    def clear(self) -> None:
        with self._lock:
            self._parts = []

    def window(self, before: float = PLAYED_WINDOW, after: float = LOOKAHEAD) -> tuple[np.ndarray, int]:
        """Samples at SAMPLE_RATE from ``before`` seconds ago to ``after`` seconds ahead (zeros
        where nothing plays)."""
        now = self.clock()
        out = np.zeros(int((before + after) * SAMPLE_RATE), np.float32)
        t0 = now - before
        with self._lock:
            parts = list(self._parts)
        for start, samples, rate in parts:
            lo, hi = int((t0 - start) * rate), int((t0 + before + after - start) * rate)
            if hi <= 0 or lo >= len(samples):
                continue
            piece = samples[max(lo, 0):min(hi, len(samples))]
            if rate != SAMPLE_RATE:  # nearest sample: enough for a mouth shape
                piece = piece[(np.arange(int(len(piece) * SAMPLE_RATE / rate)) * rate // SAMPLE_RATE)]
            at = int(max(start - t0, 0) * SAMPLE_RATE)
            piece = piece[:len(out) - at]
            out[at:at + len(piece)] += piece
        return out, SAMPLE_RATE


class StandIn:
    """The talking heads of one participant: ``track(language)`` is the video track to relay."""

    def __init__(self, session, portrait_id: str = DEFAULT_ID):
        self.session = session
        self.portrait_id = portrait_id
        self.timelines: dict[str, SpeechTimeline] = {}  # language -> its translated speech
        self.tracks: dict[str | None, SynthVideoTrack] = {}  # language (None: the voice) -> track, while shown
        self._avatars: dict[str | None, Avatar] = {}
        self._rig = None
        self._ticker = None
        self.closed = False

    def _voice(self) -> tuple[np.ndarray, int]:
        return self.session.audio.latest(int(MIC_WINDOW * SAMPLE_RATE)), SAMPLE_RATE

    async def start(self) -> None:
        """Load the portrait and its rig (worker threads); tracks are made when asked for."""
        shared = await self.session.models.shared(TalkingHeadPipeline)
        portrait = await asyncio.to_thread(shared.portraits.get, self.portrait_id)
        if portrait is None:
            self.session.emit_error("talking_head", f"unknown portrait {self.portrait_id!r}; showing the default")
            portrait = await asyncio.to_thread(shared.portraits.get, DEFAULT_ID)
        rig = await asyncio.to_thread(shared.rig, portrait)
        if self.closed:
            return
        self._ticker, self._rig = shared.ticker, rig
        self.portrait_id = portrait.id

    def track(self, language: str | None) -> SynthVideoTrack | None:
        """The talking head for the listeners who hear ``language`` (None: the untranslated voice),
        made if it is not rendering yet; None until the portrait is loaded."""
        if self._rig is None or self.closed:
            return None
        track = self.tracks.get(language)
        if track is None:
            window = self._voice if language is None else \
                self.timelines.setdefault(language, SpeechTimeline()).window
            avatar = Avatar(self._rig, window)
            track = SynthVideoTrack(LatestFrame(), lambda: [], fps=self.session.settings.video_fps)
            if self._ticker is not None:
                self._ticker.add(avatar)
                track.source = QuietRate(avatar.batched_frame, window)
            else:
                track.source = QuietRate(avatar.render, window)
            self._avatars[language], self.tracks[language] = avatar, track
        return track

    def keep(self, languages: set[str | None]) -> None:
        """Stop rendering the talking heads of the other languages (nobody is shown them)."""
        for language in [lang for lang in self.tracks if lang not in languages]:
            self.tracks.pop(language).stop()
            avatar = self._avatars.pop(language)
            if self._ticker is not None:
                self._ticker.remove(avatar)
            self.timelines.pop(language, None)

    def speak(self, language: str, samples: np.ndarray, rate: int) -> None:
        """Translated speech into ``language`` starts playing to its listeners now (after what plays)."""
        if language in self.tracks:
            self.timelines[language].push(samples, rate)

    def close(self) -> None:
        self.closed = True
        self.keep(set())
