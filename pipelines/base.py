"""The pipeline interface. One instance per session; heavy models belong to the server.

A pipeline reads its session's inputs and writes its outputs through the ``PipelineContext`` it
is given (pipelines/context.py), whatever transport carries the session (WebRTC, WebSocket):

    inputs   context.audio       AudioRing, context.sample_rate (16 kHz) mono f32, sample clock
             context.camera      LatestFrame of the inbound video, or None
             on_text(text)       typed text from the client
    outputs  context.emit(type, **fields)              a JSON event
             context.show(name, *items)                results drawn on the returned video (if any):
                                                       tracks.overlay Subtitle / Badge / Chat
             context.audio_out   AudioSink: push_audio / clear_buffer / queued_seconds / play clock
             context.interrupt(reason)                 stop the session's speech (barge-in)
             context.video_out   VideoSink (``source`` replaces the picture), or None
             context.observe_inference(name, stage, s) a latency sample for /metrics
    between  context.publish(topic, item) / context.subscribe(topic) -> bounded asyncio.Queue
    models   await context.models.shared(cls) -> what ``load_shared`` built, once per server
    HTTP     routes(server): extra endpoints (REST, WebSocket), registered at start-up

To add a pipeline: one package in ``pipelines/``, one line in ``pipelines/__init__.py``.
"""
from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from inference import ModelRegistry
    from pipelines.context import PipelineContext


class OptionError(ValueError):
    """Bad pipeline options; the message is shown to the client as is."""


class Pipeline(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    # Context media this pipeline cannot run without ("camera", "video_out", "audio_out"); a
    # transport that lacks one refuses the pipeline with a clear error.
    requires: ClassVar[frozenset[str]] = frozenset()
    # Whether this pipeline reads the camera (``context.camera``). Where no pipeline of a session
    # does and the client takes no video back, the WebRTC transport declines the client's video.
    uses_camera: ClassVar[bool] = True
    # The longest audio packets (ms) the client may send for this pipeline: 20 where speech is
    # acted on at once (translation, lip sync); up to 60 where results come about once a second.
    # A session asks for the shortest its pipelines allow (``a=ptime`` in the answer): a third of
    # the packets, each with the server's per-packet work, for up to 40 ms more delay.
    audio_packet_ms: ClassVar[int] = 20
    # Server-wide settings of this pipeline: a dataclass whose fields become flags
    # ``--<name>-<field>`` and variables ``MMS_<NAME>_<FIELD>`` (server/config.py); an instance
    # is ``settings.<name>``.
    Settings: ClassVar[type | None] = None

    def __init__(self, context: "PipelineContext", options: dict[str, Any] | None = None):
        self.context = context
        self.options: dict[str, Any] = dict(self.defaults)
        self.configure(options or {})

    # --- models (owned by the server's ModelRegistry) ------------------------------------------
    @classmethod
    def load_shared(cls, settings, registry: "ModelRegistry") -> Any:
        """Build what every session of this pipeline shares (models), once per server and
        ``shared_key``, on a worker thread. Wrap each model sessions call in
        ``registry.model(name, predict)`` so it is batched (and could run elsewhere)."""
        return None

    @classmethod
    def shared_key(cls, settings) -> tuple:
        return (settings.device,)

    @classmethod
    def routes(cls, server) -> list:
        """Extra HTTP routes (``aiohttp.web.RouteDef``) this pipeline serves, e.g. a REST API.
        ``server`` gives ``settings``, ``metrics`` and ``models``."""
        return []

    @classmethod
    def socket_endpoints(cls) -> dict[str, Any]:
        """WebSocket endpoints that run this pipeline alone, beside the generic ``/ws``: path ->
        ``start(message) -> (options, fields)``, which reads a ``start_stream`` message into this
        pipeline's options (raising OptionError) and the extra fields of the ``started`` event."""
        return {}

    # --- per session ---------------------------------------------------------------------------
    def configure(self, options: dict[str, Any]) -> None:
        """Merge new options (also called mid-session by a ``config`` message)."""
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise OptionError(f"{self.name}: unknown option(s) {sorted(unknown)}; "
                              f"valid: {sorted(self.defaults)}")
        merged = {**self.options, **options}
        if not isinstance(merged.get("overlay", True), bool):
            raise OptionError(f"{self.name}: overlay must be true or false")
        self.validate(merged)
        self.options = merged

    def validate(self, options: dict[str, Any]) -> None:
        """Raise OptionError if the merged options are not usable."""

    @classmethod
    def check_ranges(cls, options: dict[str, Any], ranges: dict[str, tuple[float, float, str]]) -> None:
        """Each ``key: (low, high, unit)`` must be a finite number in [low, high]."""
        for key, (low, high, unit) in ranges.items():
            value = options[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise OptionError(f"{cls.name}: {key} must be a number")
            if not low <= value <= high:
                raise OptionError(f"{cls.name}: {key} must be between {low} and {high}{unit}")

    @abc.abstractmethod
    async def run(self) -> None:
        """The pipeline's main loop; runs until cancelled when the session closes."""

    async def on_text(self, text: str) -> None:
        """Typed text from the client (``text`` message)."""

    async def drained(self) -> None:
        """Return once every result of the audio received so far has been emitted (the input
        has ended, e.g. a WebSocket's ``stop_stream``). By default: once the pipeline's readers
        of ``context.audio`` have all taken everything written; a pipeline with work queued
        beyond its reader (translation) says more."""
        await self.context.audio.consumed()

    @property
    def end_of_input_silence(self) -> float:
        """Seconds of silence written after the last audio so the pipeline sees speech end."""
        return 0.0

    def interrupt(self) -> dict | None:
        """The client interrupted the speech the server plays (``interrupt`` message, REST, or a
        pipeline's barge-in): drop what this pipeline still holds beyond the outbound track
        (pending synthesis, fed audio). The track itself is already cleared. Returns None when it
        held nothing, else extra fields of its ``interrupted`` event (``dropped_seconds`` is added
        to what the track dropped of its speech). Runs on the event loop; must not block."""
        return None

    async def close(self) -> None:
        """Release per-session resources (called after ``run`` is cancelled)."""
