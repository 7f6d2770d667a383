"""The translation models a server shares between its sessions.

Each stage is one ``Model`` of the server (``registry.model``), loaded on first use, that sessions
call with a small picklable request and that batches what sessions send while it is busy:

    translation-asr-<whisper>   asr.Request -> asr.Recognition          (one per Whisper model)
    translation-mt              mt.MTRequest -> str                      (transformers, every pair)
    translation-tts             tts.TTSRequest -> (samples, rate)        (transformers VITS)
    translation-seamless        seamless.S2STRequest -> SpeechTranslation
    translation-apertium        mt.MTRequest -> str                      (every installed pair)
    translation-espeak          tts.TTSRequest -> (samples, rate)

The neural ones are described by a ``ModelSpec`` too, so that with ``--inference ray`` they run in
Ray Serve replicas shared by every media server (``--remote-models``); Apertium and espeak-ng
(subprocesses answering in milliseconds, no GPU to share) always run in the media server.
"""
from __future__ import annotations

import asyncio
import logging
import threading

from inference import ModelSpec
from pipelines.common.vad import SileroVAD
from pipelines.translation import asr as asr_stage
from pipelines.translation.languages import asr_model_for, available_pairs, mt_backend_for
from pipelines.translation.mt import ApertiumMT, MTRequest, TransformersMT
from pipelines.translation.tts import EspeakTTS, TransformersTTS, TTSRequest

log = logging.getLogger(__name__)

TEXT_MT = ("apertium", "transformers")  # mt backends that translate the recognised text


def asr_spec(name: str, device: str = "cpu") -> ModelSpec:
    return ModelSpec.of("pipelines.translation.asr:WhisperASR", method="recognize", name=name, device=device)


def mt_spec(settings, device: str = "cpu") -> ModelSpec:
    return ModelSpec.of("pipelines.translation.mt:TransformersMT", model=settings.mt_model, device=device)


def tts_spec(settings, device: str = "cpu") -> ModelSpec:
    return ModelSpec.of("pipelines.translation.tts:TransformersTTS", model=settings.tts_model, device=device)


def seamless_spec(settings, device: str = "cpu") -> ModelSpec:
    return ModelSpec.of("pipelines.translation.seamless:SeamlessM4T", model=settings.seamless_model, device=device)


class TranslationModels:
    """Everything sessions share, loaded lazily per model on first use (on a worker thread).
    With a ``registry``, each stage is a batched ``Model`` (see above): the utterances of sessions
    that end while it is busy go through it together. Without one (tools, tests), each call runs
    alone on a worker thread."""

    def __init__(self, settings, device: str = "cpu", registry=None):
        self.settings = settings  # TranslationSettings
        self.device = device
        self.registry = registry
        self.vad = SileroVAD()
        self._lock = threading.RLock()  # a model is made while holding it, its backend loaded inside
        self._local: dict[str, object] = {}  # name -> backend loaded in this process
        self._models: dict[str, object] = {}  # name -> what sessions call

    def warm(self, source: str, target: str) -> None:
        """Load what a session translating ``source`` -> ``target`` needs, now rather than in its
        first utterance (``--preload translation`` does it for the default pair; with
        ``--inference ray``, remote models are deployed)."""
        if (source, target) not in available_pairs(self.settings):
            return
        try:
            self.recognizer(source)
            if self.translates_text(source, target):
                self.text_translator(source, target)
                name = self._mt(self.mt_backend(source, target))[0]
                if name in self._local:  # translated here: the pair's translator too
                    self._local[name].translator(source, target)
            self.speaker()
        except Exception:  # a session using these models reports the error itself
            log.warning("could not preload the %s -> %s translation models", source, target, exc_info=True)

    # --- the models ----------------------------------------------------------------------------------
    def _backend(self, name: str, make):
        """The backend ``name`` loaded in this process (once)."""
        with self._lock:  # loading twice in parallel would double the memory
            if name not in self._local:
                self._local[name] = make()
            return self._local[name]

    def _model(self, name: str, make, spec: ModelSpec | None = None, method: str = "predict",
               max_batch: int = 8):
        """The ``Model`` sessions call for ``name`` (made once): the batch method of ``make()``'s
        backend here, or, when ``spec`` describes it and this server sends ``name`` to Ray, a
        replica built from the spec (nothing loaded here)."""
        with self._lock:
            if name not in self._models:
                remote = spec is not None and self.registry is not None and self.registry.is_remote(name)
                predict = None if remote else getattr(self._backend(name, make), method)
                self._models[name] = (_InThread(name, predict) if self.registry is None else
                                      self.registry.model(name, predict, spec=spec, max_batch=max_batch))
            return self._models[name]

    def asr(self, language: str) -> asr_stage.WhisperASR:
        """The Whisper model for ``language``, loaded in this process (tools, tests)."""
        name = asr_model_for(self.settings, language)
        return self._backend(f"translation-asr-{name}", lambda: asr_stage.WhisperASR(name, self.device))

    def recognizer(self, language: str):
        name = asr_model_for(self.settings, language)
        return self._model(f"translation-asr-{name}", lambda: asr_stage.WhisperASR(name, self.device),
                           asr_spec(name, self.device), method="recognize")

    def mt_backend(self, source: str, target: str) -> str | None:
        return mt_backend_for(self.settings, source, target)

    def translates_text(self, source: str, target: str) -> bool:
        """Whether a text translation serves the pair (if not, Whisper's translate task does)."""
        return self.mt_backend(source, target) in TEXT_MT

    def _mt(self, backend: str) -> tuple:
        """(name, make, spec) of the text translation model of ``backend``."""
        if backend == "apertium":
            return "translation-apertium", ApertiumMT, None
        return ("translation-mt", lambda: TransformersMT(self.settings.mt_model, self.device),
                mt_spec(self.settings, self.device))

    def text_translator(self, source: str, target: str):
        backend = self.mt_backend(source, target)
        if backend not in TEXT_MT:
            raise ValueError(f"no text translation serves {source} -> {target}")
        return self._model(*self._mt(backend))

    def translator(self, source: str, target: str):
        """The pair's translator loaded in this process (``translate(text)``), or None when
        Whisper's translate task serves the pair (tools, tests)."""
        backend = self.mt_backend(source, target)
        if backend not in TEXT_MT:
            return None
        name, make, _ = self._mt(backend)
        return self._backend(name, make).translator(source, target)

    def speaker(self):
        if self.settings.tts_backend == "espeak":
            return self._model("translation-espeak", EspeakTTS)
        return self._model("translation-tts", lambda: TransformersTTS(self.settings.tts_model, self.device),
                           tts_spec(self.settings, self.device))

    def speech_translator(self):
        def make():
            from pipelines.translation.seamless import SeamlessM4T  # imports torch: only when asked for
            return SeamlessM4T(self.settings.seamless_model, self.device)
        return self._model("translation-seamless", make, seamless_spec(self.settings, self.device), max_batch=4)

    # --- what sessions call --------------------------------------------------------------------------
    async def recognize(self, language: str, samples, task: str = "transcribe",
                        prefix: str | None = None) -> asr_stage.Recognition:
        """Recognition of one utterance (see ``asr.Request``), batched with other sessions'."""
        model = await asyncio.to_thread(self.recognizer, language)
        return await model.predict(asr_stage.Request(samples, language, task, prefix))

    async def translate(self, text: str, source: str, target: str) -> str:
        model = await asyncio.to_thread(self.text_translator, source, target)
        return await model.predict(MTRequest(text, source, target))

    async def synthesize(self, text: str, language: str, voice: str | None = None):
        """(float32 samples, sample rate) of ``text`` spoken."""
        model = await asyncio.to_thread(self.speaker)
        return await model.predict(TTSRequest(text, language, voice))

    async def translate_speech(self, samples, source: str, target: str):
        """SeamlessM4T v2: a ``seamless.SpeechTranslation`` of one utterance."""
        from pipelines.translation.seamless import S2STRequest
        model = await asyncio.to_thread(self.speech_translator)
        return await model.predict(S2STRequest(samples, source, target))

    def close(self) -> None:
        """Stop the backends' processes (Apertium's pipelines); called with the registry's close."""
        with self._lock:
            backends = list(self._local.values())
        for backend in backends:
            if hasattr(backend, "close"):
                backend.close()


class _InThread:
    """A model called without a registry: each item alone, on a worker thread."""

    def __init__(self, name: str, predict):
        self.name, self._predict = name, predict

    async def predict(self, item):
        return (await asyncio.to_thread(self._predict, [item]))[0]
