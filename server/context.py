"""What a pipeline sees of its session, whatever carries it (WebRTC ``Session``, or a WebSocket's
``SocketSession``): identity, settings, events, the bus between pipelines, metrics, shared models.
Transports subclass it and provide ``emit`` (and the media attributes: ``audio``, ``audio_out``,
``camera``, ``video_out`` where they have them)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any


class PipelineContext:
    def __init__(self, server):
        self.server = server
        self.settings = server.settings
        self.metrics = server.metrics
        self.id = uuid.uuid4().hex
        self.started = time.monotonic()
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

    def set_overlay(self, name: str, lines: list[str]) -> None:
        """Text drawn on the returned video; nothing where there is no video."""

    def observe_inference(self, pipeline: str, stage: str, seconds: float) -> None:
        self.metrics.inference.labels(pipeline, stage).observe(seconds)

    async def load_shared(self, cls) -> Any:
        """The pipeline's process-wide models, loaded on a worker thread the first time."""
        return await asyncio.to_thread(cls.shared, self.settings)
