"""Audio formats, in one place: the pipelines' sample rate, resampling, PCM16, decoding files.

Every pipeline sees 16 kHz mono float32 in -1..1 (``SAMPLE_RATE``); transports convert once, on
the way in, with what is here.
"""
from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16000  # what pipelines read from AudioRing
# libswresample downmixes to mono with each channel at -3 dB ((L + R) x 0.7071 for stereo): a
# stereo copy of a mono voice would come out 1.41x louder than the voice. Its output is scaled
# back by these gains, so that channels are averaged; other layouts are averaged in numpy.
DOWNMIX_GAIN = {"mono": 1.0, "stereo": float(np.sqrt(0.5))}


class MonoResampler:
    """PyAV audio frames (any rate, format and layout) -> mono float32 at ``rate``, channels
    averaged. Stateful (it keeps the filter's history): one per stream. ``flush()`` returns the
    samples still held at the end of a stream."""

    def __init__(self, rate: int = SAMPLE_RATE):
        self.rate = rate
        self._resampler: av.AudioResampler | None = None
        self._layout: str | None = None
        self._gain: float | None = None

    def __call__(self, frame: av.AudioFrame) -> np.ndarray:
        if (self._resampler is None and frame.sample_rate == self.rate and frame.format.name == "flt"
                and frame.layout.name == "mono"):  # already the format (media/opus.py decodes to it)
            return frame.to_ndarray().reshape(-1)
        if self._resampler is None or frame.layout.name != self._layout:
            self._layout = frame.layout.name
            self._gain = DOWNMIX_GAIN.get(self._layout)
            # mono and stereo: swresample's own downmix (half the time of averaging in numpy)
            self._resampler = av.AudioResampler(format="flt" if self._gain else "fltp",
                                                layout="mono" if self._gain else self._layout, rate=self.rate)
        return self._convert(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        return self._convert(self._resampler.resample(None)) if self._resampler else np.zeros(0, np.float32)

    def _convert(self, frames: list[av.AudioFrame]) -> np.ndarray:
        if self._gain is None:
            parts = [f.to_ndarray().mean(axis=0) for f in frames]
        else:
            parts = [f.to_ndarray().reshape(-1) for f in frames]
        out = (parts[0] if len(parts) == 1 else np.concatenate(parts)) if parts else np.zeros(0, np.float32)
        out = out.astype(np.float32, copy=False)
        if self._gain not in (None, 1.0):
            out *= self._gain  # (a fresh array: PyAV's to_ndarray copies)
        return out


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling of mono float audio between integer rates."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if from_rate == to_rate:
        return samples
    g = np.gcd(int(from_rate), int(to_rate))
    return resample_poly(samples, to_rate // g, from_rate // g).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float -1..1 -> int16 (little-endian on every platform we run on), clipped."""
    return np.clip(np.asarray(samples, dtype=np.float32) * 32767.0, -32768, 32767).astype("<i2")


def from_pcm16(data: bytes | np.ndarray) -> np.ndarray:
    """PCM16 little-endian bytes (or an int16 array) -> float32 -1..1."""
    pcm = np.frombuffer(data, dtype="<i2") if isinstance(data, (bytes, bytearray, memoryview)) else data
    return np.asarray(pcm).astype(np.float32) / 32768.0


def decode(source: str | Path | bytes, rate: int = SAMPLE_RATE, format: str | None = None,
           source_rates: tuple[int, int] = (1, 10**6)) -> tuple[np.ndarray, int]:
    """Any audio FFmpeg reads (a path, or the bytes of a file) -> (mono float32 at ``rate``, the
    file's own rate). Raises ``ValueError`` for what cannot be decoded, and for a file whose
    declared rate is outside ``source_rates``, checked before anything is decoded (a header
    claiming 1 Hz would otherwise resample into gigabytes)."""
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), format=format) as container:
            stream = container.streams.audio[0]
            if not source_rates[0] <= (stream.rate or 0) <= source_rates[1]:
                raise ValueError(f"unsupported sample rate {stream.rate} Hz "
                                 f"({source_rates[0]}-{source_rates[1]})")
            resampler = MonoResampler(rate)
            parts = [resampler(frame) for frame in container.decode(stream)]
            parts.append(resampler.flush())
            source_rate = stream.rate
    except (av.FFmpegError, IndexError, AttributeError) as exc:  # AttributeError: a stream with no codec
        raise ValueError(f"unreadable audio ({exc})") from None
    return (np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)), source_rate


def load(path: str | Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """An audio file -> mono float32 at ``rate``."""
    return decode(path, rate)[0]
