"""SeamlessM4T v2: speech to translated speech in one model (transformers ``SeamlessM4Tv2Model``),
for GPU machines with the weights (``facebook/seamless-m4t-v2-large`` by hub id or local folder).

One call recognises the source (text decoder with the source language: the caption) and one
translates speech to speech (text decoder with the target language, then the unit decoder and
vocoder), both from one pass of the speech encoder's input features.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from media.audio import SAMPLE_RATE

# ISO 639-1 -> the ISO 639-3 codes SeamlessM4T names its languages with.
CODES = {"ar": "arb", "bn": "ben", "ca": "cat", "cs": "ces", "cy": "cym", "da": "dan", "de": "deu",
         "en": "eng", "et": "est", "fi": "fin", "fr": "fra", "hi": "hin", "id": "ind", "it": "ita",
         "ja": "jpn", "ko": "kor", "mt": "mlt", "nl": "nld", "fa": "pes", "pl": "pol", "pt": "por",
         "ro": "ron", "ru": "rus", "sk": "slk", "es": "spa", "sv": "swe", "sw": "swh", "te": "tel",
         "tl": "tgl", "th": "tha", "tr": "tur", "uk": "ukr", "ur": "urd", "uz": "uzn", "vi": "vie",
         "zh": "cmn"}


@dataclass
class SpeechTranslation:
    source_text: str
    text: str
    samples: np.ndarray  # float32 mono
    sample_rate: int


@dataclass(frozen=True)
class S2STRequest:
    """One utterance to translate, 16 kHz mono (what crosses to a model that may run elsewhere)."""
    samples: np.ndarray
    source: str
    target: str


class SeamlessM4T:
    def __init__(self, model: str, device: str = "cpu"):
        import torch
        from transformers import AutoProcessor, SeamlessM4Tv2Model

        self.torch, self.device = torch, device
        self.processor = AutoProcessor.from_pretrained(model)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = SeamlessM4Tv2Model.from_pretrained(model, dtype=dtype).to(device).eval()
        self.dtype = dtype
        self.sample_rate = int(getattr(self.model.config, "sampling_rate", SAMPLE_RATE))
        self._lock = threading.Lock()  # one generate at a time per model (GPU memory)

    def translate(self, samples: np.ndarray, source: str, target: str, max_new_tokens: int = 200) -> SpeechTranslation:
        src, tgt = CODES.get(source, source), CODES.get(target, target)
        inputs = self.processor(audio=np.asarray(samples, dtype=np.float32), sampling_rate=SAMPLE_RATE,
                                return_tensors="pt")
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items()}
        with self._lock, self.torch.inference_mode():
            heard = self.model.generate(**inputs, tgt_lang=src, generate_speech=False,
                                        max_new_tokens=max_new_tokens)
            spoken = self.model.generate(**inputs, tgt_lang=tgt, return_intermediate_token_ids=True,
                                         max_new_tokens=max_new_tokens)
        source_text = self.processor.decode(_sequences(heard)[0], skip_special_tokens=True).strip()
        text = self.processor.decode(spoken.sequences[0], skip_special_tokens=True).strip()
        waveform = spoken.waveform[0]
        if getattr(spoken, "waveform_lengths", None) is not None:
            waveform = waveform[: int(spoken.waveform_lengths.reshape(-1)[0])]
        return SpeechTranslation(source_text, text, waveform.float().cpu().numpy().reshape(-1), self.sample_rate)


    def predict(self, requests: Sequence[S2STRequest]) -> list[SpeechTranslation]:
        return [self.translate(r.samples, r.source, r.target) for r in requests]


def _sequences(output):
    """Token ids from a text-only generate (a tensor, or an output object with ``sequences``)."""
    return output.sequences if hasattr(output, "sequences") else output
