"""The translation models a server shares between its sessions."""
from __future__ import annotations

import asyncio
import logging
import threading

from pipelines.common.vad import SileroVAD
from pipelines.translation import asr as asr_stage
from pipelines.translation.languages import asr_model_for, available_pairs, mt_backend_for
from pipelines.translation.mt import ApertiumTranslator, TransformersTranslator, apertium_pairs
from pipelines.translation.tts import EspeakTTS, TransformersTTS

log = logging.getLogger(__name__)


class TranslationModels:
    """Everything sessions share, loaded lazily per model on first use (on a worker thread).
    With a ``registry``, recognition is a batched ``Model`` per Whisper model: the utterances of
    sessions that end while it is busy go through it together (``recognize``)."""

    def __init__(self, settings, device: str = "cpu", registry=None):
        self.settings = settings  # TranslationSettings
        self.device = device
        self.registry = registry
        self.vad = SileroVAD()
        self._lock = threading.Lock()
        self._asr: dict[str, asr_stage.WhisperASR] = {}
        self._recognizers: dict[str, object] = {}
        self._mt: dict[tuple, object] = {}
        self._tts = None
        self._seamless = None

    def warm(self, source: str, target: str) -> None:
        """Load what a session translating ``source`` -> ``target`` needs, now rather than in its
        first utterance (``--preload translation`` does it for the default pair)."""
        if (source, target) not in available_pairs(self.settings):
            return
        try:
            self.asr(source)
            self.translator(source, target)
            self.tts()
        except Exception:  # a session using these models reports the error itself
            log.warning("could not preload the %s -> %s translation models", source, target, exc_info=True)

    def _get(self, cache: dict, key, make):
        with self._lock:  # loading twice in parallel would double the memory
            if key not in cache:
                cache[key] = make()
            return cache[key]

    def asr(self, language: str) -> asr_stage.WhisperASR:
        name = asr_model_for(self.settings, language)
        return self._get(self._asr, name, lambda: asr_stage.WhisperASR(name, self.device))

    async def recognize(self, language: str, samples, task: str = "transcribe",
                        prefix: str | None = None) -> asr_stage.Recognition:
        """Recognition of one utterance (see ``asr.Request``), batched with other sessions'."""
        asr = await asyncio.to_thread(self.asr, language)
        request = asr_stage.Request(samples, language, task, prefix)
        if self.registry is None:
            return (await asyncio.to_thread(asr.recognize, [request]))[0]
        with self._lock:
            if asr.name not in self._recognizers:
                self._recognizers[asr.name] = self.registry.model(f"translation-asr-{asr.name}", asr.recognize,
                                                                  max_batch=8)
        return await self._recognizers[asr.name].predict(request)

    def translator(self, source: str, target: str):
        backend = mt_backend_for(self.settings, source, target)
        if backend == "apertium":
            mode = apertium_pairs()[(source, target)]
            return self._get(self._mt, (backend, source, target), lambda: ApertiumTranslator(source, target, mode))
        if backend == "transformers":
            return self._get(self._mt, (backend, source, target), lambda: TransformersTranslator(
                self.settings.mt_model, source, target, self.device))
        return None  # "whisper": the recogniser translates

    def tts(self):
        if self._tts is None:
            with self._lock:
                if self._tts is None:
                    self._tts = (EspeakTTS() if self.settings.tts_backend == "espeak"
                                 else TransformersTTS(self.settings.tts_model, self.device))
        return self._tts

    def seamless(self):
        from pipelines.translation.seamless import SeamlessM4T  # imports torch: only when asked for
        with self._lock:
            if self._seamless is None:
                self._seamless = SeamlessM4T(self.settings.seamless_model, self.device)
            return self._seamless


