"""Emotion: face expression, voice and words fused live, with a CBT-style response.

Per session, four loops share the pipeline's state:
* face: a few times a second (``face_fps``) the newest camera frame goes to the face stage (dlib
  detection + expression classifier, batched across sessions); per-frame results are smoothed in
  time (``smoothing`` s) so one odd frame does not flip the label.
* voice: silero VAD gates the audio; about once a second of new speech, prosody (pitch, loudness,
  rate) of the last 3 s is compared with the speaker's own baseline into a heuristic
  arousal/valence estimate (or a transformers classifier runs), and MFCCs join a 10 s history for
  the fusion network.
* words: typed text (``on_text``) and, when recognition runs in the session, the person's own
  final transcripts (topic "transcript"); a sentence counts with a weight that halves every
  ``text_half_life`` seconds. Crisis language flags the event and switches the response to
  crisis-support guidance.
* events: about once a second while any modality is present (and at once when a new sentence
  arrives or the face's expression changes), the modalities are fused (confidence-weighted, or the
  trained fusion network with ``--emotion-fusion-weights``) and an ``emotion`` event is emitted,
  with the label and bars drawn on the returned video.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque

import numpy as np

from pipelines.base import Pipeline
from pipelines.emotion.cbt import Responder
from pipelines.emotion.models import EmotionModels, EmotionSettings, load_models
from pipelines.emotion.fusion import (INDEX, LABELS, Estimate, LabelHysteresis, Smoother, certainty,
                                     fuse)
from pipelines.emotion.prosody import ProsodyBaseline, prosody_features
from pipelines.emotion.text_emotion import crisis_terms
from inference import InferenceError
from media.audio import SAMPLE_RATE
from tracks.overlay import Badge


HOP = 0.128  # seconds of audio per VAD step
SPEECH_HISTORY = 10.0  # seconds of speech kept (MFCC history, as the reference app)
VOICE_WINDOW = 3.0  # seconds of recent speech the voice estimate describes
VOICE_HOLD = 3.0  # a voice estimate counts this long after the last speech
NO_FACE_WARNING = 5.0  # seconds of video without a face before saying so
MIN_EVENT_GAP = 0.2  # seconds: wake-ups (new text, new expression) never flood the channel


def overlay(label: str, score: float, modalities: dict, flag: str | None) -> tuple[Badge, ...]:
    """What the returned video shows: the fused label, each modality's label and score under it,
    and a red card when crisis support is in the response."""
    rows = tuple((name, info["label"], info["score"]) if info else (name, "–", None)
                 for name, info in modalities.items())
    badges = (Badge(label, score, title="emotion", rows=rows),)
    if flag:
        badges += (Badge("see the reply", title=flag, alert=True),)
    return badges


class EmotionPipeline(Pipeline):
    name = "emotion"
    Settings = EmotionSettings
    audio_packet_ms = 60  # results about once a second
    description = "Face, voice and words fused into an emotion about once a second, with a CBT-style response"
    defaults = {
        "interval": 1.0,  # seconds between events while someone is present
        "face_fps": 4.0,  # face analyses per second
        "smoothing": 1.0,  # time constant (s) of the face and voice smoothing; 0: none
        "text_half_life": 20.0,  # seconds after which a sentence counts half as much
        "face_weight": 1.0,
        "voice_weight": 0.5,  # the offline voice estimate is a heuristic: it counts less
        "text_weight": 1.5,
        "vad_threshold": 0.5,
        "overlay": True,  # the fused label and each modality as a badge on the returned video
    }

    # --- shared models ---------------------------------------------------------------------------
    @classmethod
    def shared_key(cls, settings):
        return (settings.device, *dataclasses.astuple(settings.emotion))

    @classmethod
    def load_shared(cls, settings, registry) -> EmotionModels:
        return load_models(settings.emotion, settings.device, registry)

    def validate(self, options):
        self.check_ranges(options, {
            "interval": (0.2, 30, " s"), "face_fps": (0.5, 15, ""), "smoothing": (0, 10, " s"),
            "text_half_life": (1, 3600, " s"), "face_weight": (0, 10, ""), "voice_weight": (0, 10, ""),
            "text_weight": (0, 10, ""), "vad_threshold": (0.05, 0.95, "")})

    # --- per session -------------------------------------------------------------------------------
    def __init__(self, context, options=None):
        super().__init__(context, options)
        self.models: EmotionModels | None = None
        self._loaded = asyncio.Event()
        self.face: Estimate | None = None
        self.face_time = 0.0
        self.face_smoother = Smoother(self.options["smoothing"])
        self.voice: Estimate | None = None
        self.voice_time = 0.0
        self.voice_smoother = Smoother(self.options["smoothing"])
        self.prosody = ProsodyBaseline()
        self.mfcc_history: deque[np.ndarray] = deque()
        self.mfcc_frames = 0
        self.text: Estimate | None = None
        self.text_time = 0.0
        self.text_embedding: np.ndarray | None = None
        self.text_serial = 0  # counts sentences analysed
        self.text_seen = 0  # the last sentence an event reflected
        self.crisis: list[str] = []
        self.hysteresis = LabelHysteresis()
        self.responder = Responder()
        self.response = ""
        self.response_for: tuple | None = None
        self.last_event = 0.0
        self.present = False
        self.wake = asyncio.Event()

    def configure(self, options):
        super().configure(options)
        for smoother in (getattr(self, "face_smoother", None), getattr(self, "voice_smoother", None)):
            if smoother is not None:
                smoother.tau = self.options["smoothing"]

    async def run(self) -> None:
        self.models = await self.context.models.shared(type(self))
        self._loaded.set()
        async with asyncio.TaskGroup() as tasks:
            if self.context.camera is not None:  # no camera (a WebSocket): voice and words only
                tasks.create_task(self._face_loop())
            tasks.create_task(self._voice_loop())
            tasks.create_task(self._transcript_loop())
            tasks.create_task(self._event_loop())

    async def close(self) -> None:
        self.context.show(self.name)

    # --- face --------------------------------------------------------------------------------------
    async def _face_loop(self) -> None:
        camera = self.context.camera
        seen = camera.received
        faceless_since: float | None = None
        warned = False
        misses = 0  # frames in a row without a face: each searches the next tile for small faces
        while True:
            await asyncio.sleep(1.0 / self.options["face_fps"])
            frame = camera.frame
            if frame is None or camera.received == seen:
                continue  # no new video: the last face goes stale by itself
            seen = camera.received
            t0 = time.perf_counter()
            try:
                near = tuple(self.face.detail["box"]) if self.face is not None else None
                result = await self.models.face_model.predict((camera, frame, near, misses))
            except InferenceError as exc:
                self.context.emit_error(self.name, f"face stage: {exc}; frame skipped")
                continue
            self.context.observe_inference(self.name, "face", time.perf_counter() - t0)
            now = time.monotonic()
            misses = 0 if result is not None else misses + 1
            if result is None:
                faceless_since = faceless_since or now
                if now - self.face_time > self._face_hold():
                    self.face = None
                    self.face_smoother.reset()
                if not warned and now - faceless_since >= NO_FACE_WARNING:
                    warned = True
                    self.context.emit_error(self.name, f"no face found in the video for {NO_FACE_WARNING:.0f} s; "
                                                       "face expression is left out until one appears")
                continue
            faceless_since, warned = None, False
            previous = self.face.label if self.face is not None else None
            probs = self.face_smoother.update(result.probs, now)
            x, y, w, h = result.box
            self.face = Estimate(probs, 0.3 + 0.7 * certainty(probs, result.covers), result.covers,
                                 {"backend": self.models.face_backend, "box": [x, y, w, h],
                                  "frame_label": LABELS[int(np.argmax(result.probs))]})
            self.face_time = now
            if self.face.label != previous:
                self.wake.set()

    def _face_hold(self) -> float:
        return max(2.0, 4.0 / self.options["face_fps"])  # a slow frame or two (busy CPU) is not absence

    # --- voice -------------------------------------------------------------------------------------
    async def _voice_loop(self) -> None:
        audio = self.context.audio
        vad = self.models.vad.stream()
        hop = int(HOP * SAMPLE_RATE)
        speech: deque[np.ndarray] = deque()
        speech_samples = 0
        fresh: list[np.ndarray] = []  # speech since the last estimate
        last_estimate = 0.0
        async for _, chunk in audio.chunks(hop, audio.start):  # what came while models loaded too
            probs = await vad.feed(chunk)
            if len(probs) and probs.max() >= self.options["vad_threshold"]:
                speech.append(chunk)
                fresh.append(chunk)
                speech_samples += len(chunk)
                while speech_samples - len(speech[0]) >= SPEECH_HISTORY * SAMPLE_RATE:
                    speech_samples -= len(speech.popleft())
                self.voice_time = time.monotonic()
            now = time.monotonic()
            fresh_samples = sum(len(c) for c in fresh)
            if fresh_samples >= 0.25 * SAMPLE_RATE and now - last_estimate >= self.options["interval"]:
                last_estimate = now
                recent = np.concatenate(speech)[-int(VOICE_WINDOW * SAMPLE_RATE):]
                await self._estimate_voice(recent, np.concatenate(fresh))
                fresh = []
            if self.voice is not None and now - self.voice_time > VOICE_HOLD:
                self.voice = None
                self.voice_smoother.reset()

    async def _estimate_voice(self, recent: np.ndarray, fresh: np.ndarray) -> None:
        t0 = time.perf_counter()
        mfcc = await asyncio.to_thread(self.models.mfcc, fresh)
        self.mfcc_history.append(mfcc)
        self.mfcc_frames += len(mfcc)
        while self.mfcc_frames - len(self.mfcc_history[0]) >= SPEECH_HISTORY * 100:
            self.mfcc_frames -= len(self.mfcc_history.popleft())
        if self.models.voice_model is not None:
            try:
                estimate = await self.models.voice_model.predict(recent)
            except InferenceError as exc:
                return self.context.emit_error(self.name, f"voice classifier: {exc}; result skipped")
        else:
            features = await asyncio.to_thread(prosody_features, recent)
            if features is None:
                return  # whispered or unvoiced: no prosody to go on
            estimate = self.prosody.estimate(features)
        self.context.observe_inference(self.name, "voice", time.perf_counter() - t0)
        probs = self.voice_smoother.update(estimate.probs, time.monotonic())
        self.voice = Estimate(probs, estimate.confidence, estimate.covers,
                              {**estimate.detail, "speech_seconds": round(len(recent) / SAMPLE_RATE, 2)})

    # --- words -------------------------------------------------------------------------------------
    async def on_text(self, text: str) -> None:
        await self._analyze_text(text, "typed")

    async def _transcript_loop(self) -> None:
        queue = self.context.subscribe("transcript")
        while True:
            item = await queue.get()
            if isinstance(item, dict) and item.get("final") and isinstance(item.get("text"), str) \
                    and item["text"].strip():
                await self._analyze_text(item["text"], "speech")

    async def _analyze_text(self, text: str, source: str) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return self.context.emit_error(self.name, "text is not valid UTF-8 (it contains unpaired surrogates)")
        text = " ".join(text.split())
        if not text:
            return self.context.emit_error(self.name, "text is empty")
        if not self._loaded.is_set():
            await self._loaded.wait()
        t0 = time.perf_counter()
        try:
            estimate = await self.models.text_model.predict(text)
        except InferenceError as exc:
            return self.context.emit_error(self.name, f"text classifier: {exc}; text skipped")
        embedding = estimate.detail.pop("embedding", None)
        if self.models.fusion_net is not None and embedding is None:
            embedding = (await asyncio.to_thread(self.models.encoder, [text]))[0]
        self.context.observe_inference(self.name, "text", time.perf_counter() - t0)
        estimate.detail.update(source=source, text=text if len(text) <= 120 else text[:117] + "...")
        self.text, self.text_time, self.text_embedding = estimate, time.monotonic(), embedding
        self.crisis = crisis_terms(text)
        self.text_serial += 1
        self.wake.set()

    # --- fusion and events -------------------------------------------------------------------------
    def current(self, now: float) -> dict[str, tuple[Estimate, float] | None]:
        """Each modality's estimate with its age in seconds, None where absent or stale."""
        face = (self.face, now - self.face_time) if self.face is not None and \
            now - self.face_time <= self._face_hold() else None
        voice = (self.voice, now - self.voice_time) if self.voice is not None and \
            now - self.voice_time <= VOICE_HOLD else None
        text = (self.text, now - self.text_time) if self.text is not None and \
            now - self.text_time <= 5 * self.options["text_half_life"] else None
        return {"face": face, "voice": voice, "text": text}

    async def _event_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), self.options["interval"])
            except asyncio.TimeoutError:
                pass
            gap = MIN_EVENT_GAP - (time.monotonic() - self.last_event)
            if gap > 0:
                await asyncio.sleep(gap)
            self.wake.clear()
            await self._emit()

    async def _emit(self) -> None:
        now = time.monotonic()
        present = self.current(now)
        text_decay = 0.5 ** (present["text"][1] / self.options["text_half_life"]) if present["text"] else 0.0
        weights = {"face": self.options["face_weight"], "voice": self.options["voice_weight"],
                   "text": self.options["text_weight"] * text_decay}
        estimates = {name: item[0] if item else None for name, item in present.items()}
        probs, used = fuse(estimates, weights)
        if not used:  # nobody there, or only modalities weighted to zero: nothing to say
            if self.present:
                self.present = False
                self.context.show(self.name)
            return
        self.present = True
        method = "confidence-weighted"
        if self.models.fusion_net is not None:
            probs = await asyncio.to_thread(self._network_probs, estimates)
            method = "network"
        if self.text_serial != self.text_seen:
            # A new sentence is a deliberate statement, not flicker: no hysteresis against it.
            self.text_seen = self.text_serial
            self.hysteresis.label = None
        label = self.hysteresis.update(probs)
        flag = "crisis" if self.crisis and present["text"] else None
        key = (label, self.text_serial if present["text"] else None, flag)
        if key != self.response_for:
            self.response_for = key
            said = present["text"][0].detail.get("text") if present["text"] else None
            self.response = await asyncio.to_thread(self.responder.respond, label, flag == "crisis", said)
        modalities = {}
        for name, item in present.items():
            if item is None:
                modalities[name] = None
                continue
            est, age = item
            modalities[name] = {"label": est.label, "score": round(float(est.probs[INDEX[est.label]]), 3),
                                "scores": est.scores(), "confidence": round(est.confidence, 3),
                                "weight": used.get(name, 0.0), "age_s": round(age, 2),
                                "heuristic": est.detail.get("method") == "prosody-heuristic", **est.detail}
        score = float(probs[INDEX[label]])
        self.last_event = time.monotonic()
        self.context.emit("emotion", label=label, score=round(score, 3),
                          scores={l: round(float(p), 3) for l, p in zip(LABELS, probs)},
                          modalities=modalities, fusion=method, response=self.response, flag=flag)
        self.context.show(self.name, *overlay(label, score, modalities, flag))

    def _network_probs(self, estimates: dict[str, Estimate | None]) -> np.ndarray:
        from pipelines.emotion import fusion_net as fn

        net = self.models.fusion_net
        sample = {"text": self.text_embedding if estimates["text"] is not None else None,
                  "mfcc": np.concatenate(self.mfcc_history) if estimates["voice"] is not None and self.mfcc_history else None,
                  "face": estimates["face"].probs if estimates["face"] is not None else None}
        out = fn.predict(net, [sample])[0]
        probs = np.zeros(len(LABELS))
        for i, label in enumerate(net.labels):
            probs[INDEX[label]] = out[i]
        return probs
