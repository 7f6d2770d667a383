"""Mouth shapes from audio: how open the jaw is and how rounded (or spread) the lips are.

Two numbers per video frame, from a short window of audio (40 ms, so at most 40 ms look-ahead
when the window is centred on the play clock):

* ``open`` 0..1: the loudness in dBFS mapped linearly from a noise floor (closed) to a loud vowel
  (wide open). Loudness is what the jaw follows most; it needs no language model.
* ``round`` -1..1: from the spectral centroid of the window. Rounded vowels (/u/, /o/) put their
  energy low (centroid well under 1 kHz), spread ones (/i/, /e/) and fricatives high.

``MouthFilter`` blends between frames: the jaw opens quickly and closes a little slower, as it
does, which also hides the 25 fps quantisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOOR_DB = -50.0  # at or below: closed (a quiet room through a browser mic is about -60 dBFS)
FULL_DB = -18.0  # at or above: fully open (loud vowels in normalised speech)
ROUND_HZ = 900.0  # centroid at which lips are fully rounded
SPREAD_HZ = 2400.0  # centroid at which lips are fully spread


@dataclass(frozen=True)
class MouthShape:
    open: float = 0.0
    round: float = 0.0


CLOSED = MouthShape()


def mouth_shape(samples: np.ndarray, sample_rate: int) -> MouthShape:
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if len(samples) < 16:
        return CLOSED
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    level_db = 20 * np.log10(max(rms, 1e-9))
    opening = float(np.clip((level_db - FLOOR_DB) / (FULL_DB - FLOOR_DB), 0.0, 1.0))
    if opening == 0.0:
        return CLOSED
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1.0 / sample_rate)
    band = (freqs >= 80) & (freqs <= 5000)
    power = spectrum[band] ** 2
    centroid = float(np.sum(freqs[band] * power) / max(np.sum(power), 1e-12))
    middle, half = (ROUND_HZ + SPREAD_HZ) / 2, (SPREAD_HZ - ROUND_HZ) / 2
    rounding = float(np.clip((middle - centroid) / half, -1.0, 1.0))
    return MouthShape(opening, rounding)


class MouthFilter:
    """Per-frame smoothing with a fast attack and a slower release."""

    def __init__(self, attack: float = 0.75, release: float = 0.45):
        self.attack, self.release = attack, release
        self.shape = CLOSED

    def __call__(self, target: MouthShape) -> MouthShape:
        rate = self.attack if target.open > self.shape.open else self.release
        self.shape = MouthShape(self.shape.open + rate * (target.open - self.shape.open),
                                self.shape.round + 0.5 * (target.round - self.shape.round))
        return self.shape
