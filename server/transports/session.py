"""What every transport's session shares: its pipelines, the control protocol and its lifetime.

The control protocol (the same on a WebRTC data channel and on a WebSocket):

    client  {"type": "ping", "id": ...}                               -> {"type": "pong", "id": ...}
    client  {"type": "text", "text": "..."}                           -> each pipeline's on_text
    client  {"type": "config", "pipeline": name, "options": {...}}    -> {"type": "config", ...}
    client  {"type": "interrupt"}       -> speech stops; {"type": "interrupted", "pipeline", "dropped_seconds"}
                                           per pipeline that had speech
    anything wrong -> {"type": "error", "pipeline": name | null, "message": ...}; the session goes on

A transport subclasses ``Session``: it provides the media (``audio`` always; ``audio_out``,
``camera``, ``video_out`` where it has them), ``send`` (one event, JSON text, never blocking: a
client that does not read loses events, counted, rather than growing a queue) and ``_release``.
A session tells the server it has ended through ``on_close``; it never reaches into the server.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable

from pipelines.base import OptionError, Pipeline
from pipelines.context import PipelineContext

log = logging.getLogger(__name__)
CLOSE_SECONDS = 10.0  # what a session's tasks and transport get to let go when it closes

MAX_MESSAGE_CHARS = 64 * 1024
MAX_DEPTH = 32  # nesting of a client message (json.dumps of an answer must not hit the recursion limit)
MAX_TEXT_CHARS = 10_000
RESTART_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # seconds before a failed pipeline runs again
RESTART_RESET = 60.0  # a run that lasted this long starts the backoff over


def _depth(value) -> int:
    """How deeply a parsed JSON value nests (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


class Session(PipelineContext):
    transport = "?"
    recorder = None  # server/recording.py Recorder, when the session is recorded

    def __init__(self, settings, metrics, models, on_close: Callable[["Session"], None] | None = None):
        super().__init__(settings, metrics, models)
        self.pipelines: dict[str, Pipeline] = {}
        self._on_close = on_close
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self.closed = asyncio.Event()
        self.client: str | None = None  # the client's address key (server/limits.py); None: exempt
        self.end_reason: str | None = None  # why the server ended it, where not shutting down
        self.taps: list[Callable[[str, dict], None]] = []  # see every event emitted (server/rooms.py)

    # --- pipelines -------------------------------------------------------------------------------
    def add_pipelines(self, requested: dict[str, tuple[type[Pipeline], dict]]) -> None:
        """Instantiate pipelines (raises OptionError for bad options, or for a pipeline that needs
        media this transport does not carry)."""
        for name, (cls, options) in requested.items():
            missing = sorted(m for m in cls.requires if getattr(self, m, None) is None)
            if missing:
                raise OptionError(f"{name} needs {', '.join(missing)}, which a {self.transport} session "
                                  "does not have")
            self.pipelines[name] = cls(self, options)

    def start_pipelines(self) -> set[asyncio.Task]:
        return {self.spawn(self._keep_running(name, pipeline), f"pipeline-{name}")
                for name, pipeline in self.pipelines.items()}

    async def _keep_running(self, name: str, pipeline: Pipeline) -> None:
        """Run a pipeline; if it fails, say so and run it again after a growing delay, so one
        failure (a model that could not load, a bug on odd input) does not end its work for good."""
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await pipeline.run()
                return  # it ended by itself
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("pipeline %s failed in session %s", name, self.id)
                if time.monotonic() - started > RESTART_RESET:
                    failures = 0
                delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
                failures += 1
                self.emit("error", pipeline=name, message=f"{type(exc).__name__}: {exc}", restart_in=delay)
            await asyncio.sleep(delay)
            self.emit("restarted", pipeline=name, failures=failures)

    def spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}-{self.id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def guard(self, name: str | None, coro) -> None:
        """Run a pipeline's coroutine; a failure becomes an ``error`` event, not a dead session."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("pipeline %s failed in session %s", name, self.id)
            self.emit_error(name, f"{type(exc).__name__}: {exc}")

    # --- events ------------------------------------------------------------------------------------
    def emit(self, type: str, **fields) -> None:
        for tap in self.taps:
            tap(type, fields)
        message = self.event_json(type, **fields)
        if self.recorder is not None:
            self.recorder.event(type, fields, message)
        if self.send(message):
            self.metrics.events_out.labels(type).inc()
        else:
            self.metrics.events_dropped.inc()

    def send(self, message: str) -> bool:
        """Hand one JSON text message to the client; False when it was dropped."""
        raise NotImplementedError

    # --- the control protocol ----------------------------------------------------------------------
    def parse(self, message: Any) -> dict | None:
        """A client's text message as a JSON object with a ``type``, or None (error sent)."""
        if not isinstance(message, str):
            self.emit_error(None, "binary messages are not supported here; send JSON text")
            return None
        if len(message) > MAX_MESSAGE_CHARS:
            self.emit_error(None, f"message too large ({len(message)} chars, max {MAX_MESSAGE_CHARS})")
            return None
        try:
            msg = json.loads(message)
        except (ValueError, RecursionError):
            self.emit_error(None, "malformed message: not JSON (or nested too deeply)")
            return None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self.emit_error(None, 'malformed message: expected an object with a "type"')
            return None
        if _depth(msg) > MAX_DEPTH:
            self.emit_error(None, f"malformed message: nested more than {MAX_DEPTH} levels")
            return None
        return msg

    async def handle_control(self, msg: dict) -> bool:
        """ping, text, config and interrupt; False for a type the control protocol does not know."""
        kind = msg["type"]
        if kind == "ping":
            self.emit("pong", id=msg.get("id"))
        elif kind == "text":
            text = msg.get("text")
            if not isinstance(text, str) or not text.strip():
                self.emit_error(None, 'a "text" message needs a non-empty "text" string')
            elif len(text) > MAX_TEXT_CHARS:
                self.emit_error(None, f"text too long ({len(text)} chars, max {MAX_TEXT_CHARS})")
            else:
                for name, pipeline in self.pipelines.items():
                    await self.guard(name, pipeline.on_text(text))
        elif kind == "config":
            self.configure(msg)
        elif kind == "interrupt":
            self.interrupt("client")
        else:
            return False
        return True

    def configure(self, msg: dict) -> None:
        name, options = msg.get("pipeline"), msg.get("options", {})
        if name is None and len(self.pipelines) == 1:
            name = next(iter(self.pipelines))  # one pipeline: it need not be named
        if not isinstance(name, str) or name not in self.pipelines:
            return self.emit_error(None, f"config: pipeline {name!r} is not active; active: {list(self.pipelines)}")
        if not isinstance(options, dict):
            return self.emit_error(name, 'config: "options" must be an object')
        try:
            self.pipelines[name].configure(options)
        except OptionError as exc:
            return self.emit_error(name, str(exc))
        self.emit("config", pipeline=name, options=self.pipelines[name].options)

    def interrupt(self, reason: str) -> float:
        """Stop the session's speech now: the outbound track drops what it has queued (its next
        20 ms frame is silence), every pipeline's ``interrupt`` hook drops what it still holds,
        and each pipeline that had speech gets an ``interrupted`` event. Returns the seconds dropped."""
        dropped = self.audio_out.clear_buffer() if self.audio_out is not None else {}
        total = 0.0
        for name, pipeline in self.pipelines.items():
            try:
                fields = pipeline.interrupt()
            except Exception as exc:  # a hook's bug must not stop the others
                log.exception("interrupting pipeline %s failed in session %s", name, self.id)
                self.emit_error(name, f"interrupt: {type(exc).__name__}: {exc}")
                fields = None
            seconds = dropped.pop(name, 0.0)
            if fields is None and not seconds:
                continue
            fields = dict(fields or {})
            seconds += fields.pop("dropped_seconds", 0.0)
            total += seconds
            self.emit("interrupted", pipeline=name, dropped_seconds=round(seconds, 3), reason=reason, **fields)
        for source, seconds in dropped.items():  # speech queued by no active pipeline
            if seconds > 0:
                total += seconds
                self.emit("interrupted", pipeline=source, dropped_seconds=round(seconds, 3), reason=reason)
        return total

    # --- lifetime ----------------------------------------------------------------------------------
    async def expire(self, seconds: float) -> None:
        """``--max-session-seconds``: a ``shutdown`` event (``reason: "max_duration"``) up to 10 s
        before the end, then the session is closed."""
        warning = min(10.0, seconds / 10)
        await asyncio.sleep(seconds - warning)
        self.emit("shutdown", reason="max_duration", retry_after=0, closing_in=round(warning, 3))
        await asyncio.sleep(warning)
        log.info("%s session %s reached its maximum duration (%.0f s)", self.transport, self.id, seconds)
        self.end_reason = "maximum session duration reached"
        await self.close()

    async def close(self) -> None:
        """Stop the pipelines, release the transport, tell the server; idempotent."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        # Bounded: a task or a transport that does not let go (aiortc waiting on a track's frame)
        # is logged and left behind rather than holding the session, and shutdown, forever.
        if tasks and (await asyncio.wait(tasks, timeout=CLOSE_SECONDS))[1]:
            log.warning("%s session %s: tasks still running %.0f s after cancel", self.transport, self.id,
                        CLOSE_SECONDS)
        for name, pipeline in self.pipelines.items():
            await self.guard(name, pipeline.close())
        try:
            await self._release()
        except Exception:  # e.g. aiortc failing to close a connection it never set up
            log.exception("releasing %s session %s failed", self.transport, self.id)
        if self._on_close is not None:
            self._on_close(self)
        self.closed.set()
        log.info("%s session %s closed", self.transport, self.id)

    async def _release(self) -> None:
        """Free what the transport holds (tracks, peer connection, socket writer)."""
