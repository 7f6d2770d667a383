"""Test media made on the spot: speech from espeak-ng/flite, recordings from Debian packages,
video files Chromium can fake a camera from."""
from __future__ import annotations

import functools
import hashlib
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np

CACHE = Path(tempfile.gettempdir()) / "mms-test-media"
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
SENTENCE = ("The quick brown fox jumps over the lazy dog. Every morning I walk to the station "
            "and read the news while the train rolls through the quiet countryside.")


def load_audio(path: str | Path, rate: int = 16000) -> np.ndarray:
    """Any audio file -> mono float32 at ``rate``."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                  for f in resampler.resample(frame)]
    return np.concatenate(chunks).astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = 16000) -> Path:
    import wave
    pcm = np.clip(np.asarray(samples) * 32767, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return Path(path)


@functools.lru_cache(maxsize=None)
def espeak(voice: str = "en", text: str = SENTENCE, speed: int = 150) -> Path:
    """A WAV of espeak-ng speaking ``text`` with ``voice`` (e.g. en+f3 for a female variant)."""
    CACHE.mkdir(exist_ok=True)
    key = hashlib.sha1(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    path = CACHE / f"espeak-{key}.wav"
    if not path.exists():
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return path


@functools.lru_cache(maxsize=None)
def flite(voice: str = "slt", text: str = SENTENCE) -> Path:
    CACHE.mkdir(exist_ok=True)
    key = hashlib.sha1(f"{voice}|{text}".encode()).hexdigest()[:16]
    path = CACHE / f"flite-{key}.wav"
    if not path.exists():
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
    return path


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
