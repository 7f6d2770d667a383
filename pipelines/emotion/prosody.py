"""Voice: MFCCs (for the trainable fusion network) and prosody (pitch, energy, rate) of speech.

The offline estimate is a HEURISTIC, not a trained classifier: prosodic features are compared
with the same speaker's own running baseline (so a naturally high or loud voice reads as
neutral), turned into arousal (louder, higher, more varied, faster = more aroused) and a weak
valence cue (livelier pitch = more positive), and placed on the arousal/valence circumplex next to
four anchors (neutral, happy, angry, sad). The event says so (``"method": "prosody-heuristic"``).
With the hub, ``TransformersVoiceEmotion`` runs a real classifier (e.g. superb/wav2vec2-base-superb-er,
IEMOCAP 4-class).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Sequence

import numpy as np

from media.audio import SAMPLE_RATE

from pipelines.common.audio_classifier import AudioClassifier, softmax
from pipelines.emotion.fusion import INDEX, LABELS, Estimate, label_map, project
from pipelines.common.pitch import yin

N_MFCC = 40
MFCC_HOP = 160  # 10 ms


class MfccExtractor:
    """torchaudio MFCCs, (frames, 40) float32, 25 ms windows every 10 ms."""

    def __init__(self):
        import torchaudio

        self.transform = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=N_MFCC,
            melkwargs={"n_fft": 400, "hop_length": MFCC_HOP, "n_mels": 40, "center": False})

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        import torch

        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(x) < 400:
            return np.zeros((0, N_MFCC), dtype=np.float32)
        with torch.inference_mode():
            return self.transform(torch.from_numpy(x)).T.contiguous().numpy()


def prosody_features(speech: np.ndarray) -> dict | None:
    """Pitch level and variability (semitones), loudness (dBFS of speech) and a speaking-rate proxy
    (energy peaks per second: roughly syllable nuclei) of VAD-gated speech; None if unvoiced."""
    x = np.asarray(speech, dtype=np.float64)
    if len(x) < SAMPLE_RATE // 4:
        return None
    f0, aperiodicity = yin(x, SAMPLE_RATE)
    voiced = f0[(f0 > 0) & (aperiodicity < 0.25)]
    if len(voiced) < 10:
        return None
    semitones = 12 * np.log2(voiced / 100.0)
    frame = 400
    hop = MFCC_HOP
    count = 1 + (len(x) - frame) // hop
    frames = np.lib.stride_tricks.as_strided(x, (count, frame), (x.strides[0] * hop, x.strides[0]))
    rms = np.sqrt((frames ** 2).mean(axis=1) + 1e-10)
    db = 20 * np.log10(rms)
    envelope = np.convolve(db, np.ones(5) / 5, mode="same")
    # a peak: a local maximum at least 3 dB above the envelope's floor within +-100 ms
    peaks = 0
    for i in range(10, len(envelope) - 10):
        window = envelope[i - 10:i + 11]
        if envelope[i] == window.max() and envelope[i] - window.min() > 3 and envelope[i] > db.max() - 30:
            peaks += 1
    return {
        "pitch_st": float(np.median(semitones)),
        "pitch_var_st": float(np.std(semitones)),
        "loudness_db": float(np.percentile(db, 90)),
        "rate": peaks / (len(x) / SAMPLE_RATE),
        "voiced_s": len(voiced) * 0.01,
    }


# Typical within-speaker spread of each feature: a deviation of one scale unit is "notable".
SCALES = {"pitch_st": 2.0, "pitch_var_st": 1.0, "loudness_db": 4.0, "rate": 1.0}
# anchors on the (arousal, valence) plane
ANCHORS = {"neutral": (0.0, 0.0), "happy": (0.45, 0.65), "angry": (0.7, -0.55), "sad": (-0.55, -0.45)}


class ProsodyBaseline:
    """Per speaker (per session): the running median of each prosodic feature, and the
    heuristic arousal/valence of a new window relative to it."""

    def __init__(self, history: int = 30):
        self.history: deque[dict] = deque(maxlen=history)

    def estimate(self, features: dict) -> Estimate:
        if self.history:
            base = {k: float(np.median([h[k] for h in self.history])) for k in SCALES}
            z = {k: float(np.clip((features[k] - base[k]) / SCALES[k], -3, 3)) for k in SCALES}
        else:
            z = {k: 0.0 for k in SCALES}  # the first window is the baseline: neutral by definition
        self.history.append(features)
        arousal = math.tanh(0.5 * z["loudness_db"] + 0.3 * z["pitch_st"] + 0.3 * z["pitch_var_st"]
                            + 0.2 * z["rate"])
        valence = math.tanh(0.5 * z["pitch_var_st"] + 0.2 * z["pitch_st"] - 0.2 * max(0.0, z["loudness_db"] - 1))
        probs = np.zeros(len(LABELS))
        covers = np.zeros(len(LABELS), dtype=bool)
        for label, (a, v) in ANCHORS.items():
            probs[INDEX[label]] = math.exp(-((arousal - a) ** 2 + (valence - v) ** 2) / 0.18)
            covers[INDEX[label]] = True
        probs /= probs.sum()
        # Trust grows with the baseline (5 windows) and the voiced speech heard, and stays low:
        # prosody alone is a weak cue for discrete emotions.
        trust = min(1.0, len(self.history) / 5) * min(1.0, features["voiced_s"] / 1.0)
        return Estimate(probs, 0.15 + 0.35 * trust, covers, {
            "method": "prosody-heuristic", "arousal": round(arousal, 3), "valence": round(valence, 3),
            "pitch_hz": round(100 * 2 ** (features["pitch_st"] / 12), 1),
            "loudness_db": round(features["loudness_db"], 1), "rate": round(features["rate"], 2)})


class TransformersVoiceEmotion:
    """transformers audio classification (e.g. superb/wav2vec2-base-superb-er), batched."""

    name = "transformers"

    def __init__(self, model: str, device: str = "cpu"):
        self.classifier = AudioClassifier(model, device)
        self.mapping = label_map(self.classifier.id2label)

    def predict(self, clips: Sequence[np.ndarray]) -> list[Estimate]:
        out = []
        for probs in softmax(self.classifier.logits(clips)):
            probs, covers = project(probs, self.mapping)
            out.append(Estimate(probs, float(probs.max()), covers, {"method": "transformers"}))
        return out
