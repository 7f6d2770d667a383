"""The sessions benchmark's clients: ``StreamClient`` sessions that send looped speech and a test
pattern, note when the speech onset goes out and when the first ``gender`` event comes back, ping
the data channel once a second, and read their RTP counters."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from testing.media import espeak, load_audio

AUDIO_RATE = 48000  # what Opus carries: no resampling in the client's encoder


class TimedAudioTrack(ArrayAudioTrack):
    """ArrayAudioTrack that notes when its frames actually go out: the wall time of the frame that
    carries the speech onset, and how far behind real time the sender is."""

    def __init__(self, samples: np.ndarray, sample_rate: int, onset_sample: int):
        super().__init__(samples, sample_rate, loop=True)
        self.onset_sample = onset_sample
        self.first_sent: float | None = None
        self.onset_sent: float | None = None
        self.last_pts = 0

    async def recv(self):
        frame = await super().recv()
        now = time.monotonic()
        if self.first_sent is None:
            self.first_sent = now
        if self.onset_sent is None and frame.pts + frame.samples > self.onset_sample:
            self.onset_sent = now
        self.last_pts = frame.pts
        return frame

    def behind_s(self) -> float | None:
        if self.first_sent is None:
            return None
        return max(0.0, (time.monotonic() - self.first_sent) - self.last_pts / self.rate)


@dataclass
class Session:
    index: int
    client: StreamClient
    audio: TimedAudioTrack
    video: PatternVideoTrack
    error: str | None = None
    connect_s: float | None = None
    first_gender: float | None = None  # time.monotonic() when the first gender event arrived
    gender_events: int = 0
    gender_latency_ms: list[float] = field(default_factory=list)  # server-reported classify latency
    error_events: list[str] = field(default_factory=list)
    pings: dict[int, float] = field(default_factory=dict)
    rtts: list[tuple[float, float]] = field(default_factory=list)  # (arrival, seconds)
    # (sent, arrival, server t) of each pong: splits the RTT into up and down (see ping_split)
    pongs: list[tuple[float, float, float]] = field(default_factory=list)
    pinger: asyncio.Task | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def onset(self) -> float | None:
        """Wall (monotonic) time the first non-silent sample was handed to the sender."""
        return self.audio.onset_sent

    def on_message(self, message) -> None:
        now = time.monotonic()
        try:
            event = json.loads(message)
        except (TypeError, ValueError):
            return
        kind = event.get("type")
        if kind == "gender":
            self.gender_events += 1
            if isinstance(event.get("latency_ms"), (int, float)):
                self.gender_latency_ms.append(float(event["latency_ms"]))
            if self.first_gender is None:
                self.first_gender = now
        elif kind == "pong":
            sent = self.pings.pop(event.get("id"), None)
            if sent is not None:
                self.rtts.append((now, now - sent))
                if isinstance(event.get("t"), (int, float)):
                    self.pongs.append((sent, now, float(event["t"])))
        elif kind == "error":
            self.error_events.append(str(event.get("message")))

    def audio_behind_s(self) -> float | None:
        """How far the client's audio sender is behind real time (its own CPU starvation)."""
        return self.audio.behind_s()

    async def ping_loop(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(1.0)
            n += 1
            if self.client.channel.readyState != "open":
                continue
            self.pings[n] = time.monotonic()
            if len(self.pings) > 100:  # unanswered: forget the oldest
                self.pings.pop(next(iter(self.pings)))
            with contextlib.suppress(Exception):
                self.client.send({"type": "ping", "id": n})


async def open_session(index: int, url: str, speech: np.ndarray, onset_sample: int, timeout: float) -> Session:
    client = StreamClient(url, pipelines=["gender"])
    return await start_session(Session(index, client, TimedAudioTrack(speech, AUDIO_RATE, onset_sample),
                                       PatternVideoTrack(320, 240, fps=25.0)), timeout)


async def start_session(s: Session, timeout: float) -> Session:
    """Connect ``s`` (its client and tracks made) and start its pings; a failure is kept in
    ``s.error``, not raised."""
    client = s.client
    client.channel.on("message", s.on_message)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(client.connect(s.audio, s.video), timeout)
        s.connect_s = time.monotonic() - t0
        s.pinger = asyncio.get_running_loop().create_task(s.ping_loop())
    except Exception as exc:  # refused, timed out, ICE failure...: reported, not fatal
        s.error = f"{type(exc).__name__}: {exc}"[:200]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)
    return s


async def close_session(s: Session) -> None:
    if s.pinger:
        s.pinger.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(s.client.close(), 10)


async def rtp_counts(s: Session) -> dict[str, float]:
    """RTP packet counters of one client: received/lost per kind (server -> client), and what the
    server's receiver reports say about our packets (client -> server)."""
    out: dict[str, float] = {}
    try:
        report = await asyncio.wait_for(s.client.pc.getStats(), 5)
    except Exception:
        return out
    for st in report.values():
        kind = getattr(st, "kind", None)
        if st.type == "inbound-rtp":
            out[f"down_{kind}_received"] = out.get(f"down_{kind}_received", 0) + st.packetsReceived
            out[f"down_{kind}_lost"] = out.get(f"down_{kind}_lost", 0) + max(0, st.packetsLost)
        elif st.type == "remote-inbound-rtp":
            out[f"up_{kind}_lost"] = out.get(f"up_{kind}_lost", 0) + max(0, st.packetsLost)
        elif st.type == "outbound-rtp":
            out[f"up_{kind}_sent"] = out.get(f"up_{kind}_sent", 0) + st.packetsSent
    return out


async def rtp_totals(sessions: list[Session]) -> dict[str, float]:
    total: dict[str, float] = {}
    for counts in await asyncio.gather(*(rtp_counts(s) for s in sessions)):
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return total


def loss_pct(d: dict[str, float], direction: str, kind: str) -> float | None:
    lost = d.get(f"{direction}_{kind}_lost", 0)
    base = d.get(f"{direction}_{kind}_received" if direction == "down" else f"{direction}_{kind}_sent", 0)
    base = base + lost if direction == "down" else base
    return None if not base else round(100 * lost / base, 2)


def ping_split(s: Session, t0: float, t1: float) -> list[tuple[float, float]]:
    """(client->server, server->client) seconds of each pong in [t0, t1].

    A pong's ``t`` is the server's time.monotonic() minus a constant origin (the session's or the
    server's start), and the server runs on this machine, on the same monotonic clock. So
    ``arrival - t = origin + down-delay``; its minimum over the session is ``origin`` plus the
    smallest down-delay seen (about a millisecond when the pings start): the split is then exact to
    that error, which only moves delay from 'down' to 'up'."""
    if not s.pongs:
        return []
    origin = min(arrival - t for _, arrival, t in s.pongs)
    return [((origin + t) - sent, arrival - (origin + t)) for sent, arrival, t in s.pongs
            if t0 <= arrival <= t1]


def make_speech(voice: str, lead_in: float) -> tuple[np.ndarray, int]:
    """espeak-ng speech after ``lead_in`` seconds of silence, and the index of its first non-silent
    sample (|x| > 0.02, about -34 dBFS)."""
    speech = load_audio(espeak(voice), rate=AUDIO_RATE)
    loud = np.flatnonzero(np.abs(speech) > 0.02)
    onset = int(lead_in * AUDIO_RATE) + (int(loud[0]) if len(loud) else 0)
    return np.concatenate([np.zeros(int(lead_in * AUDIO_RATE), dtype=np.float32), speech]), onset
