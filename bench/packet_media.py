"""Pre-encoded media for cheap benchmark clients: speech as Opus packets of a given length, and a
track that sends packets as they are (aiortc's sender packs an ``av.Packet`` as it does for
``MediaPlayer(path, decode=False)``), paced in real time, its audio in packets as long as the
server's answer asks (``a=ptime``), as browsers send them."""
from __future__ import annotations

import fractions
import re
import time
from typing import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench.session_clients import AUDIO_RATE
from client import StreamClient
from tracks.outbound import Pacer


def opus_packets(samples: np.ndarray, ms: int = 20) -> list[bytes]:
    """48 kHz mono float speech -> Opus packets of ``ms`` (stereo, as aiortc's encoder makes them)."""
    step = AUDIO_RATE * ms // 1000
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format, codec.bit_rate = AUDIO_RATE, "stereo", "s16", 64000
    codec.options = {"frame_duration": str(ms)}
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % step, np.int16)])
    packets = []
    for i in range(0, len(pcm), step):
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm[None, i:i + step], 2, 0).T.reshape(1, -1),
                                           format="s16", layout="stereo")
        frame.sample_rate, frame.pts = AUDIO_RATE, i
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return packets


def answer_ptime(client: StreamClient) -> int:
    """The audio packet length (ms) the server's answer asks for (``a=ptime``; 20 without one)."""
    found = re.search(r"^a=ptime:(\d+)", client.answer_sdp or "", re.M)
    return int(found.group(1)) if found else 20


class PacketTrack(MediaStreamTrack):
    """Pre-encoded packets, looped, paced in real time, sent as they are (no encoding). Notes
    when the packet holding ``onset`` (an index) first goes out, and how far behind it runs."""

    def __init__(self, kind: str, packets: list[bytes], clock_rate: int, step: int, onset: int | None = None,
                 before_first: Callable[["PacketTrack"], None] | None = None):
        super().__init__()
        self.kind = kind
        self.packets, self.clock_rate, self.step, self.onset = packets, clock_rate, step, onset
        self.before_first = before_first  # called once, at the first recv (the answer is known then)
        self.count = 0
        self.pacer = Pacer(clock_rate)
        self.first_sent: float | None = None
        self.onset_sent: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.before_first is not None:
            self.before_first(self)
            self.before_first = None
        await self.pacer.wait(self.count * self.step)
        now = time.monotonic()
        if self.first_sent is None:
            self.first_sent = now
        if self.onset_sent is None and self.count == self.onset:
            self.onset_sent = now
        packet = av.Packet(self.packets[self.count % len(self.packets)])
        packet.pts = self.count * self.step
        packet.time_base = fractions.Fraction(1, self.clock_rate)
        self.count += 1
        return packet

    def behind_s(self) -> float | None:
        if self.first_sent is None:
            return None
        return max(0.0, time.monotonic() - self.first_sent - (self.count - 1) * self.step / self.clock_rate)


def speech_track(client: StreamClient, audio: dict[int, list[bytes]], onset_sample: int) -> PacketTrack:
    """``client``'s audio: ``audio`` (Opus packets of each length, in ms, 20 among them), sent in
    the length its answer's ``a=ptime`` names where ``audio`` has it, else in 20 ms packets.
    Notes when the packet holding ``onset_sample`` goes out."""

    def follow_answer(track: PacketTrack) -> None:
        ms = answer_ptime(client)
        if ms in audio:
            step = AUDIO_RATE * ms // 1000
            track.packets, track.step, track.onset = audio[ms], step, onset_sample // step

    step = AUDIO_RATE // 50
    return PacketTrack("audio", audio[20], AUDIO_RATE, step, onset_sample // step, follow_answer)
