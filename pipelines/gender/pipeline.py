"""Voice gender: who is speaking, a female or a male voice.

Per session (after the seed app's design): silero VAD gates the inbound audio into a circular
buffer of recent speech; about once a second while someone speaks, the last few seconds of speech
are classified. Classification is one ``Model`` of the server, batched across all its sessions.

Backends (``--gender-backend``):
* ``pitch`` (embedded, no weights): median F0 of voiced frames (YIN) on a logistic scale around
  the ~160 Hz boundary between typical adult male and female voices; confidence shrinks towards
  0.5 when little voiced speech was heard. Each session's speech is pitch-tracked as it comes
  (a ``PitchTrack``, each frame once), not the whole window again for every result.
* ``wav2vec2``: any transformers audio-classification model with female/male labels, by hub id or
  local path (``--gender-model``, default 7wolf/wav2vec2-base-gender-classification).
"""
from __future__ import annotations

import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipelines.base import Pipeline
from pipelines.common.audio_classifier import AudioClassifier, softmax
from pipelines.common.pitch import PitchTrack, yin
from pipelines.common.vad import SileroVAD
from inference import InferenceError, Model, ModelSpec
from media.audio import SAMPLE_RATE
from tracks.overlay import Badge

HOP = 0.128  # seconds of audio read per step (4 VAD chunks)


@dataclass
class PitchUpdate:
    """The pitch backend's input from a session: its track and the speech heard since the last
    result (pushed on the backend's thread), classified on the last ``seconds``."""
    track: PitchTrack
    speech: np.ndarray
    seconds: float


@dataclass
class GenderResult:
    label: str  # "female" | "male"
    score: float  # probability of ``label``, 0.5..1
    detail: dict


class PitchGender:
    """Embedded backend: pitch-based, no downloaded weights."""

    name = "pitch"
    boundary_hz = 160.0
    slope = 0.08  # in log-Hz: 140 Hz -> P(female) 0.16, 200 Hz -> 0.94
    full_confidence_frames = 50  # 0.5 s of voiced frames

    def predict(self, clips: Sequence[np.ndarray | PitchUpdate]) -> list[GenderResult]:
        return [self.predict_one(clip) for clip in clips]

    def predict_one(self, clip: np.ndarray | PitchUpdate) -> GenderResult:
        if isinstance(clip, PitchUpdate):
            clip.track.push(clip.speech)
            f0, aperiodicity = clip.track.window(clip.seconds)
        else:
            f0, aperiodicity = yin(clip, SAMPLE_RATE)
        voiced = f0[(f0 > 0) & (aperiodicity < 0.2)]
        if len(voiced) == 0:
            return GenderResult("female", 0.5, {"f0_hz": None, "voiced_frames": 0})
        median = float(np.median(voiced))
        p_female = 1.0 / (1.0 + math.exp(-math.log(median / self.boundary_hz) / self.slope))
        weight = min(1.0, len(voiced) / self.full_confidence_frames)
        p_female = 0.5 + (p_female - 0.5) * weight
        label = "female" if p_female >= 0.5 else "male"
        return GenderResult(label, max(p_female, 1 - p_female),
                            {"f0_hz": round(median, 1), "voiced_frames": int(len(voiced))})


FEMALE_LABELS = {"f", "female", "woman", "women", "feminine"}
MALE_LABELS = {"m", "male", "man", "men", "masculine"}


def _label_index(labels: dict[int, str], names: set[str]) -> int | None:
    """The first label one of whose words is in ``names`` ("Female", "male_voice"; not "music")."""
    return next((i for i, label in labels.items() if names & set(re.split(r"[^a-z]+", label))), None)


class Wav2Vec2Gender:
    """transformers audio classification (hub id or local folder), batched, on cpu or cuda."""

    name = "wav2vec2"

    def __init__(self, model: str, device: str = "cpu"):
        self.classifier = AudioClassifier(model, device)
        labels = {i: label.strip().lower() for i, label in self.classifier.id2label.items()}
        self.female = _label_index(labels, FEMALE_LABELS)
        self.male = _label_index(labels, MALE_LABELS)
        if self.female is None or self.male is None:
            raise ValueError(f"model {model!r} has labels {list(labels.values())}; need female and male")

    def predict(self, clips: Sequence[np.ndarray]) -> list[GenderResult]:
        # The softmax over just the two labels: P(female), P(male) per clip.
        pairs = softmax(self.classifier.logits(clips)[:, [self.female, self.male]])
        return [GenderResult("female" if pf >= pm else "male", float(max(pf, pm)), {}) for pf, pm in pairs]


def make_backend(name: str, model: str, device: str):
    if name == "pitch":
        return PitchGender()
    if name == "wav2vec2":
        return Wav2Vec2Gender(model, device)
    raise ValueError(f"unknown gender backend {name!r}; valid: pitch, wav2vec2")


@dataclass
class GenderModels:
    vad: SileroVAD
    backend: str  # its name
    classifier: Model  # the backend's predict, batched across sessions (in this process or in Ray)


@dataclass
class GenderSettings:
    backend: str = field(default="pitch", metadata={
        "help": "voice-gender backend: pitch (embedded) or wav2vec2", "choices": ("pitch", "wav2vec2")})
    model: str = field(default="7wolf/wav2vec2-base-gender-classification", metadata={
        "help": "transformers model id or local path for the wav2vec2 backend"})


class GenderPipeline(Pipeline):
    name = "gender"
    Settings = GenderSettings
    uses_camera = False
    audio_packet_ms = 60  # results about once a second
    description = "Female or male voice, about once a second while someone speaks"
    defaults = {
        "interval": 1.0,  # seconds between results while speech continues
        "window": 3.0,  # seconds of recent speech classified
        "min_speech": 0.5,  # seconds of speech needed before the first result
        "vad_threshold": 0.5,
        "overlay": True,  # the result as a badge on the returned video
    }

    @classmethod
    def shared_key(cls, settings):
        return (settings.device, settings.gender.backend, settings.gender.model)

    @classmethod
    def load_shared(cls, settings, registry) -> GenderModels:
        s = settings.gender
        if s.backend == "pitch":  # a few ms of numpy per clip: not worth a trip to another process
            classifier = registry.model(cls.name, PitchGender().predict, max_batch=32)
        else:
            spec = ModelSpec.of(f"{__name__}:make_backend", name=s.backend, model=s.model, device=settings.device)
            classifier = registry.model(cls.name, spec=spec, max_batch=32)
        return GenderModels(SileroVAD(), s.backend, classifier)

    def validate(self, options):
        self.check_ranges(options, {"interval": (0.2, 30, " seconds"), "window": (0.5, 10, " seconds"),
                                    "vad_threshold": (0.05, 0.95, "")})
        self.check_ranges(options, {"min_speech": (0.1, options["window"], " s (the window)")})

    async def run(self) -> None:
        models: GenderModels = await self.context.models.shared(type(self))
        audio = self.context.audio
        vad = models.vad.stream()
        hop = int(HOP * SAMPLE_RATE)
        speech: deque[np.ndarray] = deque()  # circular buffer of recent speech chunks
        speech_samples = 0
        fresh: list[np.ndarray] = []  # speech chunks since the last result
        track = PitchTrack(SAMPLE_RATE, max_seconds=10) if models.backend == "pitch" else None
        last_result = 0.0
        async for _, chunk in audio.chunks(hop, audio.start):  # what came while models loaded too
            probs = await vad.feed(chunk)
            window = int(self.options["window"] * SAMPLE_RATE)
            if len(probs) and probs.max() >= self.options["vad_threshold"]:
                speech.append(chunk)
                speech_samples += len(chunk)
                fresh.append(chunk)
                while speech_samples - len(speech[0]) >= window:
                    speech_samples -= len(speech.popleft())
                if len(fresh) * hop > window + hop:
                    fresh.pop(0)  # older than the window: never classified
            now = time.monotonic()
            if (speech_samples >= self.options["min_speech"] * SAMPLE_RATE
                    and len(fresh) * hop >= 0.25 * SAMPLE_RATE
                    and now - last_result >= self.options["interval"]):
                last_result = now
                if track is not None:
                    clip = PitchUpdate(track, np.concatenate(fresh), speech_samples / SAMPLE_RATE)
                else:
                    clip = np.concatenate(speech)
                fresh = []
                await self._classify(models, clip, speech_samples / SAMPLE_RATE)

    async def _classify(self, models: GenderModels, clip: np.ndarray | PitchUpdate, seconds: float) -> None:
        t0 = time.perf_counter()
        try:
            result: GenderResult = await models.classifier.predict(clip)
        except InferenceError as exc:
            self.context.emit_error(self.name, f"classifier: {exc}; result skipped")
            return
        latency = time.perf_counter() - t0
        self.context.observe_inference(self.name, models.backend, latency)
        self.context.emit("gender", label=result.label, score=round(result.score, 3),
                          backend=models.backend, speech_seconds=round(seconds, 2),
                          latency_ms=round(latency * 1000, 1), **result.detail)
        self.context.show(self.name, Badge(result.label, result.score, title="voice"))
