"""The trainable fusion network (the reference app's route): text embeddings + MFCC sequences +
face features -> emotion, with any modality possibly missing.

    text  (384, MiniLM)        -> Linear+ReLU ----------.
    MFCC  (T x 40, up to 10 s) -> GRU, last state ------+-- concat + presence mask -> MLP -> LABELS
    face  (7, expression probs)-> Linear+ReLU ----------'

A missing modality's branch is zeroed and its presence bit is 0; training drops modalities at
random so the network learns to do without any of them. MFCCs are normalised with the training
set's mean and standard deviation, stored with the weights.

Weights file: ``torch.save`` of {"format", "labels", "config", "state_dict"}; loaded with
``weights_only=True`` (no pickled code runs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.emotion.fusion import LABELS

FORMAT = "mms-emotion-fusion/1"
MAX_MFCC_FRAMES = 1000  # 10 s at 10 ms
MFCC_STRIDE = 2  # average pairs of frames: half the GRU steps, 20 ms resolution is plenty


class FusionNet(nn.Module):
    def __init__(self, text_dim: int = 384, mfcc_dim: int = 40, face_dim: int = 7, hidden: int = 64,
                 labels: tuple[str, ...] = LABELS):
        super().__init__()
        self.config = {"text_dim": text_dim, "mfcc_dim": mfcc_dim, "face_dim": face_dim, "hidden": hidden}
        self.labels = tuple(labels)
        self.text = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU())
        self.audio = nn.GRU(mfcc_dim, hidden, batch_first=True)
        self.face = nn.Sequential(nn.Linear(face_dim, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(3 * hidden + 3, hidden), nn.ReLU(),
                                  nn.Linear(hidden, len(self.labels)))
        self.register_buffer("mfcc_mean", torch.zeros(mfcc_dim))
        self.register_buffer("mfcc_std", torch.ones(mfcc_dim))

    def forward(self, text: torch.Tensor, mfcc: torch.Tensor, lengths: torch.Tensor, face: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """text (B, 384), mfcc (B, T, 40) padded, lengths (B,), face (B, 7), mask (B, 3) of
        {0, 1} for text/voice/face presence -> logits (B, labels)."""
        t = self.text(text) * mask[:, 0:1]
        x = (mfcc - self.mfcc_mean) / self.mfcc_std
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.audio(packed)
        a = h[-1] * mask[:, 1:2]
        f = self.face(face) * mask[:, 2:3]
        return self.head(torch.cat([t, a, f, mask], dim=1))


def prepare_mfcc(mfcc: np.ndarray | None) -> np.ndarray:
    """The last 10 s of MFCC frames, pairs of frames averaged; (0, 40) when there is none."""
    if mfcc is None or len(mfcc) == 0:
        return np.zeros((0, 40), dtype=np.float32)
    m = np.asarray(mfcc, dtype=np.float32)[-MAX_MFCC_FRAMES:]
    n = len(m) // MFCC_STRIDE * MFCC_STRIDE
    if n == 0:
        return m
    return m[:n].reshape(-1, MFCC_STRIDE, m.shape[1]).mean(axis=1)


def collate(samples: list[dict], text_dim: int = 384, face_dim: int = 7) -> dict[str, torch.Tensor]:
    """Samples {"text": (384,) | None, "mfcc": (T, 40) | None, "face": (7,) | None} -> a batch."""
    mfccs = [prepare_mfcc(s.get("mfcc")) for s in samples]
    longest = max(1, max(len(m) for m in mfccs))
    batch_mfcc = np.zeros((len(samples), longest, 40), dtype=np.float32)
    for i, m in enumerate(mfccs):
        batch_mfcc[i, :len(m)] = m
    mask = np.array([[s.get("text") is not None, len(m) > 0, s.get("face") is not None]
                     for s, m in zip(samples, mfccs)], dtype=np.float32)
    text = np.stack([np.asarray(s["text"], np.float32) if s.get("text") is not None
                     else np.zeros(text_dim, np.float32) for s in samples])
    face = np.stack([np.asarray(s["face"], np.float32) if s.get("face") is not None
                     else np.zeros(face_dim, np.float32) for s in samples])
    return {"text": torch.from_numpy(text), "mfcc": torch.from_numpy(batch_mfcc),
            "lengths": torch.tensor([len(m) for m in mfccs]), "face": torch.from_numpy(face),
            "mask": torch.from_numpy(mask)}


def predict(net: FusionNet, samples: list[dict]) -> np.ndarray:
    """Probabilities (N, labels) for samples (see ``collate``)."""
    net.eval()
    with torch.inference_mode():
        return torch.softmax(net(**collate(samples)), dim=-1).numpy()


def save(net: FusionNet, path: str | Path) -> None:
    torch.save({"format": FORMAT, "labels": list(net.labels), "config": net.config,
                "state_dict": net.state_dict()}, str(path))


def load(path: str | Path) -> FusionNet:
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an emotion fusion weights file (expected format {FORMAT})")
    labels = tuple(data["labels"])
    if not set(labels) <= set(LABELS):
        raise ValueError(f"{path}: unknown labels {sorted(set(labels) - set(LABELS))}")
    net = FusionNet(**data["config"], labels=labels)
    net.load_state_dict(data["state_dict"])
    return net.eval()
