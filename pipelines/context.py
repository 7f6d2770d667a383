"""What a pipeline sees of its session, whatever transport carries it (WebRTC, WebSocket).

A transport subclasses ``PipelineContext``, fills the media it has (``audio`` always;
``audio_out``, ``camera``, ``video_out`` or None) and implements ``emit``. Pipelines use only
what is declared here; they never see the server or the transport.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from media.audio import SAMPLE_RATE
from media.buffers import AudioRing, LatestFrame

if TYPE_CHECKING:
    from inference import ModelRegistry


class AudioSink(Protocol):
    """Speech sent back to the client, played in real time after what is already queued."""

    sample_rate: int  # of what it plays

    @property
    def queued_seconds(self) -> float: ...

    def push_audio(self, samples: np.ndarray, sample_rate: int, source: str | None = None) -> bool:
        """Queue float speech (-1..1) on behalf of ``source`` (a pipeline's name); False (nothing
        queued) when the bounded queue is full."""

    def clear_buffer(self) -> dict[str | None, float]:
        """Drop what is queued and not yet played; seconds dropped per source."""

    def audio_around_clock(self, before: float, after: float) -> np.ndarray:
        """Samples (at ``sample_rate``) around the play position: ``before`` s played, ``after`` to come."""


class VideoSink(Protocol):
    """The returned video: ``source`` (a callable giving a BGR picture, or None for the camera)."""

    source: Callable[[], np.ndarray] | None


class PipelineContext:
    audio: AudioRing
    sample_rate: int = SAMPLE_RATE
    audio_out: AudioSink | None = None
    camera: LatestFrame | None = None
    video_out: VideoSink | None = None

    def __init__(self, settings, metrics, models: "ModelRegistry"):
        self.settings = settings
        self.metrics = metrics
        self.models = models
        self.id = uuid.uuid4().hex
        self.started = time.monotonic()
        self.audio = AudioRing(sample_rate=self.sample_rate)
        self._subscribers: dict[str, list[asyncio.Queue]] = {}

    def event_json(self, type: str, **fields) -> str:
        """An event as sent: JSON with ``type`` and ``t`` (seconds since the session started)."""
        return json.dumps({"type": type, "t": round(time.monotonic() - self.started, 3), **fields})

    def emit(self, type: str, **fields) -> None:
        raise NotImplementedError

    def emit_error(self, pipeline: str | None, message: str) -> None:
        self.emit("error", pipeline=pipeline, message=message)

    def publish(self, topic: str, item: Any) -> None:
        """Hand an item to the session's other pipelines (e.g. "transcript" from speech
        recognition to the emotion pipeline). Never blocks: a slow subscriber loses its oldest."""
        for queue in self._subscribers.get(topic, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(item)

    def subscribe(self, topic: str, maxsize: int = 32) -> asyncio.Queue:
        """A bounded queue that receives every item later published on ``topic``."""
        queue: asyncio.Queue = asyncio.Queue(maxsize)
        self._subscribers.setdefault(topic, []).append(queue)
        return queue

    def show(self, name: str, *items) -> None:
        """Draw ``items`` (``tracks.overlay``: ``Subtitle``, ``Badge``, ``Chat``) on the returned
        video in place of what pipeline ``name`` showed before; none clears it. Nothing where there
        is no video, or where the pipeline's option ``overlay`` is false."""

    def interrupt(self, reason: str) -> None:
        """Stop the session's speech now (what plays and what is queued), e.g. when the person
        starts speaking again (barge-in); every pipeline's ``interrupt`` hook runs."""

    def observe_inference(self, pipeline: str, stage: str, seconds: float) -> None:
        self.metrics.inference.labels(pipeline, stage).observe(seconds)
