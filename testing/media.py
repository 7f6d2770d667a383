"""Test media made on the spot: speech from espeak-ng/flite, recordings from Debian packages, a
synthetic vowel, files Chromium can fake a camera and a microphone from."""
from __future__ import annotations

import functools
import hashlib
import subprocess
import tempfile
import wave
from pathlib import Path

import av
import numpy as np

from media.audio import load, to_pcm16

CACHE = Path(tempfile.gettempdir()) / "mms-test-media"
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
SENTENCE = ("The quick brown fox jumps over the lazy dog. Every morning I walk to the station "
            "and read the news while the train rolls through the quiet countryside.")


def load_audio(path: str | Path, rate: int = 16000) -> np.ndarray:
    """Any audio file -> mono float32 at ``rate`` (the server's own decoder)."""
    return load(path, rate)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """Mono float -1..1 -> a 16-bit PCM WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_pcm16(samples).tobytes())
    return Path(path)


def _cached(program: str, key: str, make) -> Path:
    """The WAV ``make(path)`` writes, made once per ``key`` in a folder shared by every run."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{program}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.wav"
    if not path.exists():
        subprocess.run(make(path), check=True)
    return path


@functools.lru_cache(maxsize=None)
def espeak(voice: str = "en", text: str = SENTENCE, speed: int = 150) -> Path:
    """A WAV of espeak-ng speaking ``text`` with ``voice`` (e.g. en+f3 for a female variant)."""
    return _cached("espeak", f"{voice}|{speed}|{text}",
                   lambda path: ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text])


@functools.lru_cache(maxsize=None)
def flite(voice: str = "slt", text: str = SENTENCE) -> Path:
    """A WAV of flite speaking ``text`` with ``voice`` (slt is female; awb, rms, kal are male)."""
    return _cached("flite", f"{voice}|{text}", lambda path: ["flite", "-voice", voice, "-t", text, "-o", str(path)])


def vowel(seconds: float, rate: int = 16000, level: float = 0.3) -> np.ndarray:
    """A loud open vowel: harmonics of 140 Hz shaped by /a/ formants (700, 1200 Hz)."""
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * 140 * k * t) / k * (1.5 if 500 < 140 * k < 1400 else 0.4) for k in range(1, 25))
    return (level * x / np.abs(x).max()).astype(np.float32)


def frame_level(frame: av.AudioFrame) -> float:
    """RMS level (0..1) of a received 16-bit audio frame."""
    return float(np.sqrt(np.mean((frame.to_ndarray().astype(np.float32) / 32768) ** 2)))


def write_y4m(path: str | Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Frames (H x W x 3 BGR uint8) -> a YUV4MPEG2 file, the format Chromium's fake camera reads."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for image in frames:
            yuv = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
            f.write(b"FRAME\n")
            for index, plane in enumerate(yuv.planes):
                h, w = (height, width) if index == 0 else (height // 2, width // 2)
                data = np.frombuffer(plane, dtype=np.uint8).reshape(h, plane.line_size)[:, :w]
                f.write(data.tobytes())
    return Path(path)
