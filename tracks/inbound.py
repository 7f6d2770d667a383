"""Inbound track readers: pull frames from the browser's tracks into the session's buffers.

Audio is resampled once, here at the edge, to 16 kHz mono float32; everything downstream reads
that one format from the session's ``AudioRing``. Video keeps only the newest frame.
"""
from __future__ import annotations

from typing import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.audio import MonoResampler
from media.buffers import AudioRing, LatestFrame


async def read_audio(track: MediaStreamTrack, ring: AudioRing, on_frame: Callable[[], None],
                     tap: Callable[[av.AudioFrame], None] | None = None) -> None:
    resampler = MonoResampler(ring.sample_rate)
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
