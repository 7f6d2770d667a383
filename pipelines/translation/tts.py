"""Speech synthesis backends, each ``synthesize(text, language, voice) -> (float32 samples, rate)``.

* ``EspeakTTS``: espeak-ng from Debian (GPL: a separate process per sentence, ~20 ms, no model to
  keep warm), about a hundred languages; ``--stdout`` gives a WAV.
* ``TransformersTTS``: a transformers VITS model (MMS-TTS ``facebook/mms-tts-spa`` and friends), by
  hub id or local folder; ``{lang3}`` in the name picks a model per language (ISO 639-3).

Both also synthesise a batch, ``predict(requests) -> [(samples, rate)]`` over ``TTSRequest``s, as a
model of the server (see models.py).
"""
from __future__ import annotations

import functools
import io
import shutil
import subprocess
import threading
import wave
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from media.audio import from_pcm16

ESPEAK = "espeak-ng"
# espeak-ng voice for a language where the bare ISO 639-1 code is not itself a voice.
ESPEAK_VOICE = {"en": "en-us", "fr": "fr-fr", "pt": "pt-br", "zh": "cmn", "vi": "vi"}
ISO1_TO_3 = {"en": "eng", "es": "spa", "ca": "cat", "fr": "fra", "de": "deu", "it": "ita", "pt": "por",
             "nl": "nld", "ru": "rus", "pl": "pol", "uk": "ukr", "ar": "ara", "hi": "hin"}


@functools.lru_cache(maxsize=1)
def espeak_voices() -> frozenset[str]:
    """The voice names espeak-ng knows (languages and their regional variants)."""
    if not shutil.which(ESPEAK):
        return frozenset()
    listing = subprocess.run([ESPEAK, "--voices"], capture_output=True, text=True, timeout=10).stdout
    return frozenset(line.split()[1] for line in listing.splitlines()[1:] if len(line.split()) > 1)


def espeak_languages() -> set[str]:
    """ISO 639-1 codes espeak-ng can speak."""
    voices = espeak_voices()
    return {v for v in voices if len(v) == 2} | {lang for lang, v in ESPEAK_VOICE.items() if v in voices}


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    return from_pcm16(frames), rate


@dataclass(frozen=True)
class TTSRequest:
    """One text to speak (what crosses to a model that may run in another process)."""
    text: str
    language: str
    voice: str | None = None


class Synthesizer:
    def synthesize(self, text: str, language: str, voice: str | None = None) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def predict(self, requests: Sequence[TTSRequest]) -> list[tuple[np.ndarray, int]]:
        return [self.synthesize(r.text, r.language, r.voice) for r in requests]


class EspeakTTS(Synthesizer):
    name = "espeak"

    def __init__(self, speed: int = 165):
        if not shutil.which(ESPEAK):
            raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
        self.speed = speed

    def voice_for(self, language: str, voice: str | None = None) -> str:
        """The espeak-ng voice to use; ``voice`` may be a full name (es-419) or a variant (+f3)."""
        base = ESPEAK_VOICE.get(language, language)
        if voice and voice.startswith("+"):
            return base + voice
        # A voice of another language (left over from before a language swap) is not used.
        if voice and voice.split("-")[0] == base.split("-")[0]:
            return voice
        return base

    def synthesize(self, text: str, language: str, voice: str | None = None) -> tuple[np.ndarray, int]:
        # "--" ends the options: text that starts with "-" is spoken, not parsed as a flag.
        result = subprocess.run([ESPEAK, "-v", self.voice_for(language, voice), "-s", str(self.speed),
                                 "--stdout", "--", text], capture_output=True, timeout=30, check=True)
        return decode_wav(result.stdout)


class TransformersTTS(Synthesizer):
    name = "transformers"

    def __init__(self, model: str, device: str = "cpu"):
        self.model_name, self.device = model, device
        self._models: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def _load(self, language: str):
        import torch
        from transformers import AutoTokenizer, VitsModel

        name = self.model_name.format(lang3=ISO1_TO_3.get(language, language), lang=language)
        with self._lock:
            if name not in self._models:
                self._models[name] = (AutoTokenizer.from_pretrained(name),
                                      VitsModel.from_pretrained(name).to(self.device).eval(), torch)
            return self._models[name]

    def synthesize(self, text: str, language: str, voice: str | None = None) -> tuple[np.ndarray, int]:
        return self.synthesize_batch([text], language)[0]

    def synthesize_batch(self, texts: Sequence[str], language: str) -> list[tuple[np.ndarray, int]]:
        """Several texts of one language in one padded forward pass, each cut to its own length."""
        tokenizer, model, torch = self._load(language)
        ids = [tokenizer(text)["input_ids"] for text in texts]
        longest = max(map(len, ids))
        # Padded by hand (a tokenizer may have no pad token in its vocabulary): id 0, masked out
        input_ids = torch.tensor([row + [0] * (longest - len(row)) for row in ids], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids], device=self.device)
        with torch.inference_mode():
            output = model(input_ids=input_ids, attention_mask=mask)
        rate = int(model.config.sampling_rate)
        waveforms = output.waveform.float().cpu().numpy()
        return [(waveforms[i, :int(n)].copy(), rate) for i, n in enumerate(output.sequence_lengths.tolist())]

    def predict(self, requests: Sequence[TTSRequest]) -> list[tuple[np.ndarray, int]]:
        """One forward pass per language in the batch, not one per request."""
        out: list = [None] * len(requests)
        languages: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            languages.setdefault(r.language, []).append(i)
        for language, indices in languages.items():
            for i, result in zip(indices, self.synthesize_batch([requests[i].text for i in indices], language)):
                out[i] = result
        return out
