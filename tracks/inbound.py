"""Inbound track readers: pull frames from the browser's tracks into the session's buffers.

Audio is resampled once, here at the edge, to 16 kHz mono float32; everything downstream reads
that one format from the session's ``AudioRing``. Video keeps only the newest frame.
"""
from __future__ import annotations

from typing import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.audio import SAMPLE_RATE
from media.buffers import AudioRing, LatestFrame


class AudioResampler:
    """Any PyAV audio frame -> 16 kHz mono float32 samples (stateful: keeps filter history).

    Channels are averaged here rather than by libswresample, whose downmix adds them at -3 dB
    (a stereo copy of a mono voice would come out 1.41x louder than the voice)."""

    def __init__(self, rate: int = SAMPLE_RATE):
        self.rate = rate
        self._resampler: av.AudioResampler | None = None
        self._layout = None

    def __call__(self, frame: av.AudioFrame) -> np.ndarray:
        if self._resampler is None or frame.layout.name != self._layout:
            self._layout = frame.layout.name
            self._resampler = av.AudioResampler(format="fltp", layout=self._layout, rate=self.rate)
        out = [f.to_ndarray().mean(axis=0) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


async def read_audio(track: MediaStreamTrack, ring: AudioRing, on_frame: Callable[[], None],
                     tap: Callable[[av.AudioFrame], None] | None = None) -> None:
    resampler = AudioResampler(ring.sample_rate)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if tap:  # before the ring: a recording's clock of this audio starts with its first frame
            tap(frame)
        ring.write(resampler(frame))
        on_frame()


async def read_video(track: MediaStreamTrack, latest: LatestFrame, on_frame: Callable[[], None],
                     tap: Callable[[av.VideoFrame], None] | None = None) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        latest.put(frame)
        on_frame()
        if tap:
            tap(frame)
