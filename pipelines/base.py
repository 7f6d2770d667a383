"""The pipeline interface. One instance per session; heavy models are shared per process.

A pipeline reads the session's inputs and writes its outputs, all through the context it is
given: a WebRTC ``Session`` (server/session.py) or a WebSocket's ``SocketSession``, both
``PipelineContext``s (server/context.py):

    inputs   session.audio       AudioRing, 16 kHz mono float32, absolute sample clock
             session.camera      LatestFrame of the inbound video (PyAV frames) or None
             on_text(text)       typed text from the page
    outputs  session.emit(type, **fields)            a JSON event on the data channel
             session.set_overlay(name, [lines])      text drawn on the returned video
             session.audio_out.push_audio(x, rate)   speech on the returned audio track
             session.video_out.source = callable     replace the returned video's picture
             session.observe_inference(name, stage, s)   a latency sample for /metrics
    between  session.publish(topic, item) / session.subscribe(topic) -> bounded asyncio.Queue
             pipelines of one session (e.g. "transcript" from recognition to emotion)
    HTTP     routes(server): extra endpoints (REST, WebSocket), registered at start-up

To add a pipeline: one file in ``pipelines/`` with a subclass, one line in ``pipelines/__init__.py``.
"""
from __future__ import annotations

import abc
import threading
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from server.config import Settings
    from server.session import Session


class OptionError(ValueError):
    """Bad pipeline options; the message is shown to the client as is."""


class Pipeline(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    _shared: ClassVar[dict[tuple, Any]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, session: "Session", options: dict[str, Any] | None = None):
        self.session = session
        self.options: dict[str, Any] = dict(self.defaults)
        self.configure(options or {})

    # --- shared models -------------------------------------------------------------------------
    @classmethod
    def load_shared(cls, settings: "Settings") -> Any:
        """Load what every session of this pipeline shares (models). Runs once per process and
        settings key, on a worker thread. Override together with ``shared_key``."""
        return None

    @classmethod
    def shared_key(cls, settings: "Settings") -> tuple:
        return (settings.device,)

    @classmethod
    def shared(cls, settings: "Settings") -> Any:
        key = (cls.name, *cls.shared_key(settings))
        with cls._shared_lock:  # loading twice in parallel would double the memory
            if key not in Pipeline._shared:
                Pipeline._shared[key] = cls.load_shared(settings)
            return Pipeline._shared[key]

    @classmethod
    def routes(cls, server) -> list:
        """Extra HTTP routes (``aiohttp.web.RouteDef``) this pipeline serves, e.g. a REST API.
        ``server`` is the ``MediaServer`` (settings, metrics, sessions)."""
        return []

    # --- per session ---------------------------------------------------------------------------
    def configure(self, options: dict[str, Any]) -> None:
        """Merge new options (also called mid-session by a ``config`` message)."""
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise OptionError(f"{self.name}: unknown option(s) {sorted(unknown)}; "
                              f"valid: {sorted(self.defaults)}")
        merged = {**self.options, **options}
        self.validate(merged)
        self.options = merged

    def validate(self, options: dict[str, Any]) -> None:
        """Raise OptionError if the merged options are not usable."""

    @abc.abstractmethod
    async def run(self) -> None:
        """The pipeline's main loop; runs until cancelled when the session closes."""

    async def on_text(self, text: str) -> None:
        """Typed text from the client (data channel ``text`` message)."""

    async def close(self) -> None:
        """Release per-session resources (called after ``run`` is cancelled)."""
