"""One speaking portrait (``Avatar``), and with ``--device cuda`` the ``BatchTicker`` thread that
renders every live avatar of the server in one ``grid_sample`` call per frame tick."""
from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipelines.talking_head.avatar_render import Pose, Rig, TorchWarper
from pipelines.talking_head.face import Portrait, PortraitStore
from pipelines.talking_head.visemes import CLOSED, MouthFilter, mouth_shape

log = logging.getLogger(__name__)


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

    def close_mouth(self) -> None:
        """Speech was interrupted: shut the mouth now rather than letting it relax over frames."""
        self.mouth.shape = CLOSED

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


