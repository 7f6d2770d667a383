"""A transformers audio-classification model (hub id or local folder), batched correctly.

Clips of different lengths are padded into one batch with an attention mask only where the model
honours the mask: its feature extractor says it returns one (the transformers convention) and its
convolutional front end is not group-normalised. A group norm (as in wav2vec2-base and the models
fine-tuned from it) normalises over the whole padded length, so padding would change every clip's
result; such models get one forward pass per group of equal-length clips instead (in steady state
every session's window has the same length, so that is still one batch).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from media.audio import SAMPLE_RATE


class AudioClassifier:
    def __init__(self, model: str, device: str = "cpu"):
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        self.torch = torch
        self.device = device
        self.extractor = AutoFeatureExtractor.from_pretrained(model)
        self.model = AutoModelForAudioClassification.from_pretrained(model).to(device).eval()
        self.id2label = {int(i): str(label) for i, label in self.model.config.id2label.items()}
        self.pad_with_mask = (bool(getattr(self.extractor, "return_attention_mask", False))
                              and getattr(self.model.config, "feat_extract_norm", None) != "group")

    def logits(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """(clips, labels) float32 logits, in the order of ``clips`` (16 kHz mono float)."""
        clips = [np.asarray(c, dtype=np.float32).reshape(-1) for c in clips]
        out = np.zeros((len(clips), len(self.id2label)), dtype=np.float32)
        if self.pad_with_mask:
            groups = [list(range(len(clips)))] if clips else []
        else:
            by_length: dict[int, list[int]] = {}
            for i, clip in enumerate(clips):
                by_length.setdefault(len(clip), []).append(i)
            groups = list(by_length.values())
        for group in groups:
            inputs = self.extractor([clips[i] for i in group], sampling_rate=SAMPLE_RATE, padding=True,
                                    return_tensors="pt", return_attention_mask=self.pad_with_mask)
            if not self.pad_with_mask:
                inputs.pop("attention_mask", None)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with self.torch.inference_mode():
                out[group] = self.model(**inputs).logits.float().cpu().numpy()
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
