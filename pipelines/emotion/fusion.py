"""Emotion labels, per-modality estimates, confidence-weighted fusion and temporal smoothing.

Every modality is mapped onto one label set. A modality may cover only part of it (the voice
models know four IEMOCAP classes, no surprise/fear/disgust); fusion averages each label over the
modalities that cover it, so a modality never votes against a label it cannot see.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

LABELS = ("neutral", "happy", "sad", "angry", "surprise", "fear", "disgust")
INDEX = {label: i for i, label in enumerate(LABELS)}

# Model label names seen in the wild (FER2013, IEMOCAP, GoEmotions-style, RAVDESS) -> ours.
ALIASES = {
    "neutral": "neutral", "neu": "neutral", "calm": "neutral", "none": "neutral", "others": "neutral",
    "happy": "happy", "hap": "happy", "happiness": "happy", "joy": "happy", "exc": "happy",
    "excited": "happy", "excitement": "happy", "amusement": "happy", "love": "happy",
    "sad": "sad", "sadness": "sad", "grief": "sad",
    "angry": "angry", "ang": "angry", "anger": "angry", "fru": "angry", "frustrated": "angry",
    "annoyance": "angry",
    "surprise": "surprise", "sur": "surprise", "surprised": "surprise",
    "fear": "fear", "fea": "fear", "fearful": "fear", "scared": "fear", "nervousness": "fear",
    "disgust": "disgust", "dis": "disgust", "disgusted": "disgust", "contempt": "disgust",
}


def canonical_label(name: str) -> str | None:
    """Our label for a model's or a dataset's label name ("LABEL_3" and unknown names: None)."""
    key = re.sub(r"[^a-z]", "", str(name).lower())
    return ALIASES.get(key)


def label_map(id2label: dict) -> dict[int, int]:
    """Model output index -> our label index, for the outputs that have one of our labels."""
    mapping = {int(i): INDEX[c] for i, name in id2label.items() if (c := canonical_label(name))}
    if not mapping:
        raise ValueError(f"none of the model's labels {sorted(id2label.values())} is an emotion we know "
                         f"({', '.join(LABELS)})")
    return mapping


def project(probs: np.ndarray, mapping: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A model's class probabilities -> (probabilities over LABELS, which LABELS it covers).
    Several model classes may land on one label (IEMOCAP "hap" and "exc"): they add up."""
    out = np.zeros(len(LABELS))
    covers = np.zeros(len(LABELS), dtype=bool)
    for src, dst in mapping.items():
        out[dst] += probs[src]
        covers[dst] = True
    total = out.sum()
    return (out / total if total > 0 else np.where(covers, 1.0 / covers.sum(), 0.0)), covers


@dataclass
class Estimate:
    """One modality's current view: probabilities over LABELS, the labels it covers, and how
    much it trusts itself (0..1)."""

    probs: np.ndarray
    confidence: float
    covers: np.ndarray = field(default_factory=lambda: np.ones(len(LABELS), dtype=bool))
    detail: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return LABELS[int(np.argmax(np.where(self.covers, self.probs, -1)))]

    def scores(self) -> dict[str, float]:
        return {LABELS[i]: round(float(p), 3) for i, p in enumerate(self.probs) if self.covers[i]}


def certainty(probs: np.ndarray, covers: np.ndarray | None = None) -> float:
    """1 - normalised entropy: 1 for a one-hot distribution, 0 for a uniform one."""
    p = probs[covers] if covers is not None else probs
    p = p[p > 0]
    k = len(probs) if covers is None else int(covers.sum())
    if k <= 1:
        return 1.0
    return float(1.0 + (p * np.log(p)).sum() / math.log(k))


def fuse(estimates: dict[str, Estimate | None], weights: dict[str, float]) -> tuple[np.ndarray, dict[str, float]]:
    """Confidence-weighted average per label over the modalities that cover it.
    Returns (fused probabilities, the weight each modality got, normalised to sum 1);
    all-zero probabilities when no modality is present."""
    num = np.zeros(len(LABELS))
    den = np.zeros(len(LABELS))
    used: dict[str, float] = {}
    for name, est in estimates.items():
        if est is None:
            continue
        w = max(0.0, weights.get(name, 1.0) * est.confidence)
        if w <= 0:
            continue
        used[name] = w
        num += np.where(est.covers, w * est.probs, 0.0)
        den += np.where(est.covers, w, 0.0)
    fused = np.divide(num, den, out=np.zeros(len(LABELS)), where=den > 0)
    total = fused.sum()
    if total > 0:
        fused /= total
    norm = sum(used.values())
    return fused, {k: round(v / norm, 3) for k, v in used.items()}


class Smoother:
    """Exponential smoothing in time (time constant ``tau`` seconds) of a stream of
    distributions sampled at irregular times: a one-frame blip moves the result by only
    1 - exp(-dt/tau), a lasting change takes over within about tau * ln 2."""

    def __init__(self, tau: float):
        self.tau = tau
        self.value: np.ndarray | None = None
        self.time: float | None = None

    def update(self, probs: np.ndarray, now: float) -> np.ndarray:
        if self.value is None or self.tau <= 0:
            self.value = np.asarray(probs, dtype=float).copy()
        else:
            alpha = 1.0 - math.exp(-max(0.0, now - self.time) / self.tau)
            self.value = (1 - alpha) * self.value + alpha * np.asarray(probs, dtype=float)
        self.time = now
        return self.value

    def reset(self) -> None:
        self.value = self.time = None


class LabelHysteresis:
    """The shown label changes only when another label leads it by ``margin``, so two
    near-equal labels don't flicker back and forth."""

    def __init__(self, margin: float = 0.08):
        self.margin = margin
        self.label: str | None = None

    def update(self, probs: np.ndarray) -> str:
        best = LABELS[int(np.argmax(probs))]
        if self.label is None or probs[INDEX[best]] >= probs[INDEX[self.label]] + self.margin:
            self.label = best
        return self.label
