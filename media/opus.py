"""Opus decoded straight to the pipelines' rate (16 kHz mono float32), with libopus itself.

aiortc decodes Opus to 48 kHz stereo (``aiortc.codecs.opus.OpusDecoder``, through PyAV) and the
server then resampled every frame to 16 kHz mono (``media.audio.MonoResampler``). libopus decodes
to any of 8, 12, 16, 24 or 48 kHz and mono or stereo by itself, doing less work for fewer samples:
a 60 ms packet of speech measured 90 µs here instead of 200 µs for the decode and resampling
(``bench/capacity.py``'s speech; the two outputs agree to 34 dB SNR, equal RMS: the difference is
the resampling filters). ``Opus16k`` is used where a session's inbound audio only goes to its
pipelines (``server/transports/webrtc.py``); a recording or a room keeps aiortc's 48 kHz.

libopus is the one PyAV's wheel carries (``av.libs/libopus-*.so*``, already loaded by its
libavcodec), else the system's. ``library()`` is None where neither is found: the session then
decodes with aiortc's decoder, as before (``tests/test_capacity.py`` checks it is found here).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import fractions
from functools import lru_cache
from pathlib import Path

import av
import numpy as np

from media.audio import SAMPLE_RATE

RATES = (8000, 12000, 16000, 24000, 48000)  # what libopus decodes to
MAX_PACKET_MS = 120  # the longest Opus packet (RFC 6716)
RTP_CLOCK = 48000  # Opus's RTP timestamps, whatever the decoded rate (RFC 7587)


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """libopus, with the two calls used here declared; None where it cannot be found."""
    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    candidates = sorted(str(p) for p in libs.glob("libopus*.so*")) + [ctypes.util.find_library("opus")]
    for path in filter(None, candidates):
        try:
            lib = ctypes.CDLL(path)
            lib.opus_decoder_create.restype = ctypes.c_void_p
            lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
            lib.opus_decode_float.restype = ctypes.c_int
            lib.opus_decode_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p,
                                              ctypes.c_int, ctypes.c_int]
            lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
            lib.opus_strerror.restype = ctypes.c_char_p
            lib.opus_strerror.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


class OpusError(ValueError):
    pass


class Opus16k:
    """An aiortc ``Decoder`` (``decode(encoded_frame) -> [frame]``) giving mono float32 frames at
    ``rate``; ``pcm(data)`` decodes one packet to samples. One per stream (it keeps libopus's
    state). Raises ``OpusError`` for a packet libopus refuses; the stream goes on."""

    def __init__(self, rate: int = SAMPLE_RATE):
        lib = library()
        if lib is None:
            raise OpusError("libopus not found")
        if rate not in RATES:
            raise ValueError(f"libopus decodes to {RATES} Hz, not {rate}")
        error = ctypes.c_int()
        self._lib, self.rate = lib, rate
        self._state = lib.opus_decoder_create(rate, 1, ctypes.byref(error))
        if not self._state or error.value:
            raise OpusError(f"opus_decoder_create: {lib.opus_strerror(error.value).decode()}")
        self._out = np.zeros(rate * MAX_PACKET_MS // 1000, np.float32)
        self._time_base = fractions.Fraction(1, rate)

    def pcm(self, data: bytes) -> np.ndarray:
        n = self._lib.opus_decode_float(self._state, data, len(data), self._out.ctypes.data, len(self._out), 0)
        if n < 0:
            raise OpusError(f"opus_decode_float: {self._lib.opus_strerror(n).decode()}")
        return self._out[:n].copy()

    def decode(self, encoded_frame) -> list[av.AudioFrame]:
        samples = self.pcm(encoded_frame.data)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = encoded_frame.timestamp * self.rate // RTP_CLOCK
        frame.time_base = self._time_base
        return [frame]

    def __del__(self):
        if getattr(self, "_state", None):
            self._lib.opus_decoder_destroy(self._state)
            self._state = None
