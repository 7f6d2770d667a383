"""Bounded buffers between the inbound tracks and the pipelines.

Audio is kept at one format for every pipeline (16 kHz mono float32) with a monotonic sample
clock: ``end`` counts every sample ever written, so a pipeline asks for ``read(start, stop)`` in
absolute sample indices and knows exactly which audio it got, whatever else has been written since.
"""
from __future__ import annotations

import asyncio
import threading

import numpy as np

from media.audio import SAMPLE_RATE


class AudioOverrun(Exception):
    """The requested samples have already been overwritten (the reader fell too far behind)."""


class AudioRing:
    def __init__(self, seconds: float = 30.0, sample_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        self.capacity = int(seconds * sample_rate)
        self._data = np.zeros(self.capacity, dtype=np.float32)
        self.end = 0  # monotonic sample clock: total samples written
        self._changed = asyncio.Event()
        self._readers = 0  # chunks() iterators running
        self._waiting = 0  # of them, those waiting for samples not written yet

    @property
    def start(self) -> int:
        """Oldest sample index still held."""
        return max(0, self.end - self.capacity)

    def write(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(samples) > self.capacity:
            self.end += len(samples) - self.capacity  # the skipped part still advances the clock
            samples = samples[-self.capacity:]
        pos = self.end % self.capacity
        first = min(len(samples), self.capacity - pos)
        self._data[pos:pos + first] = samples[:first]
        self._data[:len(samples) - first] = samples[first:]
        self.end += len(samples)
        self._changed.set()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Copy of samples [start, stop) in absolute sample indices."""
        if start < self.start:
            raise AudioOverrun(f"samples from {start} were overwritten (oldest held is {self.start})")
        if stop > self.end or stop < start:
            raise ValueError(f"cannot read [{start}, {stop}) with {self.end} samples written")
        idx = np.arange(start, stop) % self.capacity
        return self._data[idx]

    def latest(self, count: int) -> np.ndarray:
        count = min(count, self.end - self.start)
        return self.read(self.end - count, self.end)

    async def chunks(self, size: int, start: int | None = None):
        """Consecutive ``size``-sample chunks as ``(start index, samples)``, from ``start``
        (default: now) on, as they arrive. A reader that falls a whole ring behind (CPU
        starvation) skips to the present: the next chunk's start index shows the gap."""
        cursor = self.end if start is None else start
        self._readers += 1
        try:
            while True:
                if self.end < cursor + size:
                    self._waiting += 1
                    try:
                        await self.wait_for(cursor + size)
                    finally:
                        self._waiting -= 1
                try:
                    chunk = self.read(cursor, cursor + size)
                except AudioOverrun:
                    cursor = self.end - size
                    continue
                yield cursor, chunk
                cursor += size
        finally:
            self._readers -= 1

    async def consumed(self) -> None:
        """Return once a reader runs and every reader has taken all the audio written (each is
        waiting for more): what was written has been heard, and acted on."""
        while not (self._readers and self._waiting == self._readers):
            await asyncio.sleep(0.02)

    async def wait_for(self, sample_index: int) -> None:
        """Wait until ``sample_index`` samples have been written."""
        while self.end < sample_index:
            self._changed.clear()
            await self._changed.wait()


class LatestFrame:
    """Holds only the newest video frame; a frame replaced before anyone read it counts as dropped.

    Consumers on worker threads convert frames with ``to_array``, never ``frame.to_ndarray``
    directly: PyAV hangs when two threads convert the same frame at once."""

    def __init__(self, on_drop=None):
        self.on_drop = on_drop
        self._convert_lock = threading.Lock()
        self._converted: tuple = (None, None, None)  # (frame, format, array) of the last conversion
        self.frame = None
        self.received = 0
        self.dropped = 0
        self._unread = False

    def put(self, frame) -> None:
        if self._unread:
            self.dropped += 1
            if self.on_drop:
                self.on_drop()
        self.frame = frame
        self.received += 1
        self._unread = True

    def clear(self) -> None:
        """Forget the frame held (the camera stopped being decoded)."""
        self.frame, self._unread = None, False
        with self._convert_lock:
            self._converted = (None, None, None)

    def take(self):
        """The newest frame (or None), marking it read."""
        self._unread = False
        return self.frame

    def to_array(self, frame, format: str = "bgr24") -> np.ndarray:
        """``frame`` (a PyAV frame this holder handed out) as a read-only array, converted once
        per frame and format however many consumers ask, one thread at a time."""
        with self._convert_lock:
            last_frame, last_format, array = self._converted
            if last_frame is not frame or last_format != format:
                array = frame.to_ndarray(format=format)
                array.flags.writeable = False  # shared between consumers
                self._converted = (frame, format, array)
            return array
