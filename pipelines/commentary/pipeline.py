"""Live chat commentary: Twitch-style comments about the stream, written by the multimodal LSTM
of ``commentary/`` (trained with ``python -m pipelines.commentary preprocess|train``).

Per session, a rolling window of the live stream is kept as the model was trained: the camera's
newest picture sampled ``fps`` times a second (the checkpoint's preprocessing settings) and the
last ``window`` seconds of the session's 16 kHz audio ring. Every ``interval`` seconds the window
goes to a worker thread, where ``commentary.data.window_features`` (the same function that made the
training features) prepares it and the model writes one comment. At most one comment is being
written per session; a tick that finds the previous one still running is skipped.

The checkpoint is server-wide (``--commentary-checkpoint``): clients do not choose files on the
server. Without one, the session gets an ``error`` event naming the training commands.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from pipelines.commentary.data import window_features
from pipelines.base import OptionError, Pipeline
from tracks.overlay import Chat

log = logging.getLogger(__name__)

NO_CHECKPOINT = (
    "no commentary model is configured. Train one from a recorded stream and its chat log: "
    "`python -m pipelines.commentary preprocess --stream stream.mp4 chat.log --out features/`, then "
    "`python -m pipelines.commentary train features/ --checkpoint commentary.pt`, and start the server with "
    "`--commentary-checkpoint commentary.pt` (or MMS_COMMENTARY_CHECKPOINT)")


def write_comment(commentator, camera, frames: list, audio: np.ndarray, temperature: float, top_k: int) -> str:
    """One comment on a window of live stream (worker thread): PyAV frames of ``camera`` (a
    LatestFrame; None where there was no picture), oldest first, and the window's audio."""
    pictures: dict[int, np.ndarray] = {}  # a frame sampled twice is converted once
    for frame in frames:
        if frame is not None and id(frame) not in pictures:
            pictures[id(frame)] = camera.to_array(frame, "rgb24")
    rgb = [None if frame is None else pictures[id(frame)] for frame in frames]
    window = window_features(rgb, audio, commentator.features)
    return commentator.comment([window], temperature, top_k)[0]


@dataclass
class CommentarySettings:
    checkpoint: str = field(default="", metadata={
        "help": "checkpoint written by `python -m pipelines.commentary train` (empty: none)"})


CHAT_LINES = 3  # latest comments shown on the returned video


class CommentaryPipeline(Pipeline):
    name = "commentary"
    Settings = CommentarySettings
    audio_packet_ms = 60  # comments every few seconds
    description = "Twitch-style chat comments about the stream, written by a multimodal LSTM"
    requires = frozenset({"camera"})
    defaults = {
        "interval": 5.0,  # seconds between comments
        "temperature": 0.8,  # 0: always the most likely words (greedy)
        "top_k": 10,  # sample among the k most likely words; 0: all of them
        "overlay": True,  # the latest comments as chat lines on the returned video
    }

    @classmethod
    def shared_key(cls, settings):
        return (settings.device, settings.commentary.checkpoint)

    @classmethod
    def load_shared(cls, settings, registry):
        if not settings.commentary.checkpoint:
            return None
        from pipelines.commentary.model import Commentator  # torch: only when a model is configured

        return Commentator.load(settings.commentary.checkpoint, settings.device)

    def validate(self, options):
        self.check_ranges(options, {"interval": (0.5, 120, " seconds"), "temperature": (0, 5, " (0: greedy)")})
        if not isinstance(options["top_k"], int) or isinstance(options["top_k"], bool) \
                or not 0 <= options["top_k"] <= 1000:
            raise OptionError("commentary: top_k must be a whole number between 0 (all words) and 1000")

    def __init__(self, context, options=None):
        super().__init__(context, options)
        self.chat: deque[Chat] = deque(maxlen=CHAT_LINES)  # shown on the returned video

    async def run(self) -> None:
        try:
            commentator = await self.context.models.shared(type(self))
        except Exception as exc:  # a missing, corrupt or foreign file: say so, the session carries on
            log.exception("commentary checkpoint %s failed to load", self.context.settings.commentary.checkpoint)
            self.context.emit_error(self.name, f"cannot load the commentary model: {exc}")
            return
        if commentator is None:
            self.context.emit_error(self.name, NO_CHECKPOINT)
            return
        features = commentator.features
        frames: deque = deque(maxlen=features.frames_per_window)  # PyAV frames; converted off the loop
        loop = asyncio.get_running_loop()
        period = 1.0 / features.fps
        started = loop.time()
        audio_at_start = self.context.audio.end
        media_since = None  # when the first picture or sound arrived (media starts after ICE/DTLS)
        next_comment = started + self.options["interval"]
        writing: asyncio.Task | None = None
        tick = 0
        try:
            while True:
                frames.append(self.context.camera.frame)
                now = loop.time()
                if media_since is None and (self.context.camera.frame is not None
                                            or self.context.audio.end > audio_at_start):
                    media_since = now
                window_full = media_since is not None and now - media_since >= features.window
                if window_full and now >= next_comment and (writing is None or writing.done()):
                    next_comment = now + self.options["interval"]
                    audio = self.context.audio.latest(features.samples_per_window)
                    writing = loop.create_task(self._comment(commentator, list(frames), audio))
                # The next sample time; after a stall, the present (missed pictures are gone).
                tick = max(tick + 1, int((loop.time() - started) / period))
                await asyncio.sleep(max(0.0, started + tick * period - loop.time()))
        finally:
            if writing is not None:
                writing.cancel()

    async def _comment(self, commentator, frames: list, audio: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            text = await asyncio.to_thread(write_comment, commentator, self.context.camera, frames, audio,
                                           float(self.options["temperature"]), int(self.options["top_k"]))
        except Exception as exc:  # a task of its own: report here, the session carries on
            log.exception("commentary failed in session %s", self.context.id)
            self.context.emit_error(self.name, f"{type(exc).__name__}: {exc}")
            return
        latency = time.perf_counter() - t0
        self.context.observe_inference(self.name, "generate", latency)
        if text:  # the model may end a comment at once (<eos>): nothing to say this time
            self.context.emit("comment", text=text, latency_ms=round(latency * 1000, 1))
            self.chat.append(Chat(text, user="AI"))
            self.context.show(self.name, *self.chat)
