"""Prometheus metrics and the event-loop lag monitor. One ``Metrics`` per server (own registry)."""
from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.sessions = Gauge("mms_sessions", "Live sessions", registry=r)
        self.sessions_total = Counter("mms_sessions_started", "Sessions started", registry=r)
        self.frames_in = Counter("mms_frames_in", "Media frames received", ["kind"], registry=r)
        self.frames_out = Counter("mms_frames_out", "Media frames sent", ["kind"], registry=r)
        self.frames_dropped = Counter("mms_frames_dropped", "Inbound video frames replaced before use",
                                      registry=r)
        self.video_relayed = Counter("mms_video_relayed", "Camera frames sent back as they came, neither "
                                     "decoded nor encoded (nothing drawn: tracks/relay.py)", registry=r)
        self.events_out = Counter("mms_events_out", "Data-channel events sent", ["type"], registry=r)
        self.events_dropped = Counter("mms_events_dropped", "Events dropped (channel backlog)", registry=r)
        self.loop_lag = Histogram("mms_event_loop_lag_seconds", "Event-loop scheduling lag",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("mms_inference_seconds", "Model inference latency per batch",
                                   ["pipeline", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("mms_batch_size", "Items per inference batch", ["pipeline"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.rooms = Gauge("mms_rooms", "Rooms open", registry=r)
        self.room_participants = Gauge("mms_room_participants", "Participants in rooms", registry=r)
        self.recent_lag: deque[float] = deque(maxlen=600)  # seconds, for /health percentiles

    def count_rooms(self, counts) -> None:
        """The room gauges read ``counts()`` (``RoomRegistry.counts``) at each scrape."""
        self.rooms.set_function(lambda: counts()["rooms"])
        self.room_participants.set_function(lambda: counts()["room_participants"])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def lag_percentiles_ms(self) -> dict[str, float]:
        if not self.recent_lag:
            return {"p50": 0.0, "p99": 0.0}
        lags = np.asarray(self.recent_lag) * 1000
        return {"p50": round(float(np.percentile(lags, 50)), 2), "p99": round(float(np.percentile(lags, 99)), 2)}

    async def monitor_loop_lag(self, interval: float = 0.1) -> None:
        """How late the loop wakes us: the delay any callback would see at that moment."""
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(interval)
            lag = max(0.0, time.monotonic() - t0 - interval)
            self.loop_lag.observe(lag)
            self.recent_lag.append(lag)
