"""Fundamental-frequency (F0) tracking with the YIN method, vectorised over frames.

de Cheveigné & Kawahara (2002): the cumulative-mean-normalised difference function d'(tau) has
its first dip below a threshold at the pitch period; d' there is the frame's aperiodicity
(0 = perfectly periodic), which doubles as a voicing confidence.
"""
from __future__ import annotations

from collections import deque

import numpy as np


def yin(samples: np.ndarray, sample_rate: int = 16000, fmin: float = 60.0, fmax: float = 400.0,
        frame: float = 0.04, hop: float = 0.01, threshold: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Returns (f0 Hz per frame, 0 where unvoiced; aperiodicity per frame)."""
    n = int(frame * sample_rate)
    step = int(hop * sample_rate)
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < n:
        return np.zeros(0), np.zeros(0)
    count = 1 + (len(x) - n) // step
    frames = np.lib.stride_tricks.as_strided(x, (count, n), (x.strides[0] * step, x.strides[0]))
    frames = frames - frames.mean(axis=1, keepdims=True)
    tau_max = min(int(sample_rate / fmin), n - 1)
    tau_min = max(2, int(sample_rate / fmax))
    w = n - tau_max  # integration window
    # Difference function d(tau) = e(0) + e(tau) - 2 r(tau), with r by FFT cross-correlation of
    # the frame with its first w samples. A circular correlation of size n is exact here: the
    # negative lags (down to -(w - 1)) wrap to n - w + 1 = tau_max + 1 and above, past every lag read.
    size = n
    spec = np.fft.rfft(frames, size)
    spec_w = np.fft.rfft(frames[:, :w], size)
    r = np.fft.irfft(spec * np.conj(spec_w), size)[:, :tau_max + 1]
    sq = np.cumsum(np.pad(frames ** 2, ((0, 0), (1, 0))), axis=1)
    energy_at = sq[:, np.arange(tau_max + 1) + w] - sq[:, np.arange(tau_max + 1)]
    d = sq[:, w:w + 1] + energy_at - 2 * r
    d[:, 0] = 0
    cum = np.cumsum(d[:, 1:], axis=1) / np.arange(1, tau_max + 1)
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] / np.maximum(cum, 1e-12)
    # First local minimum below the threshold in [tau_min, tau_max); else the global minimum.
    # A local minimum against both neighbours, also at the ends of the range: a dip that is still
    # falling at tau_min (F0 above fmax) or at tau_max is not a period.
    search = cmnd[:, tau_min:tau_max]
    below = search < threshold
    is_min = (search <= cmnd[:, tau_min - 1:tau_max - 1]) & (search <= cmnd[:, tau_min + 1:tau_max + 1])
    candidates = below & is_min
    has = candidates.any(axis=1)
    first = np.where(has, candidates.argmax(axis=1), search.argmin(axis=1))
    rows = np.arange(count)
    tau = first + tau_min
    # Parabolic interpolation around tau for sub-sample precision.
    t = np.clip(tau, 1, tau_max - 1)
    a, b, c = cmnd[rows, t - 1], cmnd[rows, t], cmnd[rows, t + 1]
    denom = a - 2 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    period = t + np.clip(shift, -1, 1)
    aperiodicity = cmnd[rows, tau]
    # Unvoiced: a silent frame, or one whose integration window is (near) silent while sound only
    # starts later in the frame (an onset after digital silence): there d(tau) is ~0 for every
    # small tau and d' would report a perfect period at tau_min.
    reference = sq[:, w] / w - (frames[:, :w].mean(axis=1)) ** 2  # its variance: no DC offset
    silent = (sq[:, -1] < 1e-7 * n) | (reference < np.maximum(1e-7, 0.05 * sq[:, -1] / n))
    f0 = np.where(has & ~silent, sample_rate / period, 0.0)
    return f0, np.where(silent, 1.0, aperiodicity)


class PitchTrack:
    """YIN over one stream, each frame computed once: ``push`` speech as it comes, ``window``
    reads the frames of the last seconds of it (the frames ``yin`` would give for the whole
    stream, at most ``max_seconds`` kept)."""

    def __init__(self, sample_rate: int = 16000, max_seconds: float = 10.0, frame: float = 0.04,
                 hop: float = 0.01):
        self.sample_rate, self.frame, self.hop = sample_rate, frame, hop
        self._step = int(hop * sample_rate)
        self._pending = np.zeros(0)  # samples from the next frame's start on
        self._parts: deque[tuple[np.ndarray, np.ndarray]] = deque()  # (f0, aperiodicity) per push
        self._frames = 0
        self._max_frames = int(max_seconds / hop)

    def push(self, samples: np.ndarray) -> None:
        x = np.concatenate([self._pending, np.asarray(samples, dtype=np.float64)])
        f0, aperiodicity = yin(x, self.sample_rate, frame=self.frame, hop=self.hop)
        self._pending = x[len(f0) * self._step:]
        if len(f0):
            self._parts.append((f0, aperiodicity))
            self._frames += len(f0)
        while self._parts and self._frames - len(self._parts[0][0]) >= self._max_frames:
            self._frames -= len(self._parts.popleft()[0])

    def window(self, seconds: float) -> tuple[np.ndarray, np.ndarray]:
        """(f0, aperiodicity) of the frames of the last ``seconds`` pushed."""
        if not self._parts:
            return np.zeros(0), np.zeros(0)
        count = int(seconds / self.hop)
        f0 = np.concatenate([p[0] for p in self._parts])[-count:]
        return f0, np.concatenate([p[1] for p in self._parts])[-count:]
