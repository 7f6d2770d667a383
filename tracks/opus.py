"""The returned audio, Opus-encoded by the track itself, so that silence costs (almost) nothing.

Most sessions return silence most of the time (``gender`` never speaks). aiortc would encode
every 20 ms frame of it (its Opus encoder, on a worker thread) and send 50 RTP packets a second.
``OpusSpeechTrack`` keeps ``SpeechAudioTrack``'s play clock (a 20 ms tick, ``timestamp``,
``sent_frames``, ``on_frame``, ``tap``) but hands aiortc's sender encoded packets, which it sends as they
are: speech, and the first 200 ms of silence after it, encoded 20 ms at a time; then, as WebRTC's
Opus DTX does, one packet of silence (3 bytes, encoded once) every 400 ms and nothing between:
receivers play silence through the gaps (RTP timestamps keep real time). Speech queued during a
gap goes out at the next tick, as before. Only where the session negotiated Opus (``opus``);
otherwise it sends frames like ``SpeechAudioTrack``.
"""
from __future__ import annotations

import asyncio
import fractions
import time
from functools import lru_cache

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError

from tracks.outbound import FRAME_SAMPLES, OUT_RATE, SILENCE, SpeechAudioTrack

HANGOVER = 10  # silent frames still encoded after speech (200 ms): the encoder fades out
DTX_FRAMES = 20  # then one silence packet per 400 ms
TIME_BASE = fractions.Fraction(1, OUT_RATE)


def opus_encoder() -> av.CodecContext:
    """A libopus context as aiortc's OpusEncoder makes it (48 kHz stereo s16, 96 kbps, voip)."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = 96000
    codec.format = "s16"
    codec.layout = "stereo"
    codec.options = {"application": "voip"}
    codec.sample_rate = OUT_RATE
    codec.time_base = TIME_BASE
    return codec


def encode(codec: av.CodecContext, samples: np.ndarray) -> bytes:
    """One 20 ms frame of mono int16 at OUT_RATE -> one Opus packet."""
    frame = av.AudioFrame.from_ndarray(np.repeat(samples, 2).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = OUT_RATE
    return b"".join(bytes(p) for p in codec.encode(frame))


@lru_cache(maxsize=1)
def silence_packet() -> bytes:
    return encode(opus_encoder(), np.zeros(FRAME_SAMPLES, np.int16))


class OpusSpeechTrack(SpeechAudioTrack):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opus = False  # set by the transport once Opus is negotiated
        self.packets = 0  # packets handed to the sender
        self._codec: av.CodecContext | None = None
        self._quiet = HANGOVER  # silent ticks in a row (starts in DTX)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future | None = None  # sleeping through a DTX gap (_gap)

    def push_audio(self, samples: np.ndarray, sample_rate: int, source: str | None = None) -> bool:
        queued = super().push_audio(samples, sample_rate, source)
        if self._waiter is not None:  # from the loop or a pipeline's thread: the gap ends at the next tick
            self._loop.call_soon_threadsafe(self._wake)
        return queued

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _gap(self) -> None:
        """In a DTX gap (nothing to send until the next silence packet, unless speech is queued):
        one sleep instead of a wake-up every 20 ms. The ticks slept through are kept as sent
        silence (play clock, ``sent_frames``, ``on_frame``) when it ends: at the next silence
        packet's tick, or when ``push_audio`` queues speech (it goes out at the next tick)."""
        ticks = (HANGOVER - self._quiet) % DTX_FRAMES  # silent ticks before the next packet's
        if ticks == 0 or self._pacer.start is None or self.tap is not None:  # (a recording taps every tick)
            return
        self._loop = asyncio.get_running_loop()
        self._waiter = self._loop.create_future()
        if not self._chunks:
            delay = self._pacer.start + (self.timestamp + ticks * FRAME_SAMPLES) / OUT_RATE - time.monotonic()
            timer = self._loop.call_later(max(0.0, delay), self._wake)
            try:
                await self._waiter
            finally:
                timer.cancel()
        self._waiter = None
        while ticks and self._pacer.behind(self.timestamp) >= 0:  # the ticks now past
            self.timestamp += FRAME_SAMPLES
            self.sent_frames.append(SILENCE)
            self._quiet += 1
            ticks -= 1
            if self.on_frame:
                self.on_frame()

    async def _tick(self) -> tuple[int, np.ndarray, bool]:
        """Wait for the next 20 ms of the play clock; (pts, samples, whether it was silence)."""
        await self._pacer.wait(self.timestamp)
        pts, silent = self.timestamp, not self._chunks
        samples = self._next_samples()
        self.sent_frames.append(samples)
        self.timestamp += FRAME_SAMPLES
        if self.on_frame:
            self.on_frame()
        if self.tap:  # recording: every frame of the play clock, sent or a DTX gap
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = OUT_RATE, pts, TIME_BASE
            self.tap(frame)
        return pts, samples, silent

    async def recv(self):
        if not self.opus:
            return await super().recv()
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._quiet > HANGOVER and not self._chunks:
                await self._gap()
            pts, samples, silent = await self._tick()
            self._quiet = self._quiet + 1 if silent else 0
            if self._quiet <= HANGOVER:
                if self._codec is None:
                    self._codec = opus_encoder()
                # ~0.2 ms, here on the tick: in the shared executor a frame waited behind video work
                data = encode(self._codec, samples)
            elif (self._quiet - HANGOVER) % DTX_FRAMES == 1:
                data = silence_packet()
            else:
                continue  # a DTX gap: nothing to send
            packet = av.Packet(data)
            packet.pts = pts
            packet.time_base = TIME_BASE
            self.packets += 1
            return packet
