"""How loaded the server is, judged by what its users feel: one figure, 0 (idle) to 1 (users
notice) and beyond, and the parts it is made of.

Every ``interval`` seconds ``LoadMonitor`` takes cheap readings, turns each into a part where 1.0
means "users feel this", smooths each part over a few samples, and calls the largest part the load:

    part    reading                                                              1.0 at
    cpu     this process's CPU time / wall time / the cores it may use          every core busy
    video   returned video frames skipped (the track fell behind) / due         20% of frames missed
    rtt     median over WebRTC sessions of the round trip to the client:        1 s
            RTCP (remote-inbound-rtp roundTripTime), or the data channel's
            SCTP round trip, whichever is larger
    udp     UDP datagrams the kernel dropped (/proc/net/snmp InErrors) /        5% dropped
            datagrams received, machine-wide (Linux only)
    lag     event-loop lag, 90th percentile of the interval                     200 ms

The server refuses new sessions (503, ``Retry-After``) while the load is at or above
``--load-threshold`` (0.7), before the sessions it has degrade, and ``/health`` answers 503 so a
balancer sends users elsewhere. Measured on the 2-core test machine: see README, Deploying.
"""
from __future__ import annotations

import asyncio
import concurrent.futures.thread
import ctypes
import gc
import logging
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import psutil
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

FULL = {"cpu": 1.0, "video": 0.2, "rtt": 1.0, "udp": 0.05, "lag": 0.2}  # each reading where its part is 1.0
SMOOTHING = 0.5  # weight of the newest sample in each part's moving average
RETRY_AFTER = 5  # seconds a refused client is told to wait
MIN_FRAMES = 10  # fewer returned frames due in an interval say nothing about the frame rate
MIN_DATAGRAMS = 100  # likewise for UDP drops


def usable_cores() -> float:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 quota if any."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = float(os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return max(cores, 0.1)


def udp_counters() -> tuple[int, int] | None:
    """(datagrams received, datagrams dropped) by this network namespace's UDP, IPv4 and IPv6;
    None where /proc/net/snmp does not exist."""
    try:
        lines = Path("/proc/net/snmp").read_text().splitlines()
    except OSError:
        return None
    received = dropped = 0
    for names, values in zip(lines, lines[1:]):
        if names.startswith("Udp:") and values.startswith("Udp:"):
            row = dict(zip(names.split()[1:], map(int, values.split()[1:])))
            received += row.get("InDatagrams", 0)
            dropped += row.get("InErrors", 0)  # RcvbufErrors are counted in InErrors too
    try:
        for line in Path("/proc/net/snmp6").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "Udp6InDatagrams":
                received += int(value)
            elif name == "Udp6InErrors":
                dropped += int(value)
    except (OSError, ValueError):
        pass
    return received, dropped


def trim_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; nothing elsewhere): what
    sessions freed would otherwise stay in the resident size, fragmented across the heap."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def process_figures() -> dict[str, float]:
    """What a leak would grow: asyncio tasks (of the running loop), threads, open file
    descriptors, resident memory, and of it the anonymous part (the heap: file-backed pages of
    the libraries come and go with the machine's memory pressure; Linux only, else the RSS)."""
    me = psutil.Process()
    try:
        fds = me.num_fds()
    except AttributeError:  # Windows
        fds = me.num_handles()
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:  # no running loop
        tasks = 0
    rss = me.memory_info().rss / 2 ** 20
    anon = rss
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    # Worker threads of thread pools (asyncio's executor, the models') are made as work comes, up
    # to each pool's bound, and kept: counted apart from the threads that could leak.
    pooled = len(getattr(concurrent.futures.thread, "_threads_queues", ()))
    return {"tasks": tasks, "threads": threading.active_count() - pooled, "pool_threads": pooled,
            "open_fds": fds, "rss_mb": round(rss, 1), "anon_mb": round(anon, 1)}


class LoadMonitor:
    def __init__(self, settings, metrics, sessions: Callable[[], Iterable], interval: float = 1.0):
        self.settings = settings
        self.metrics = metrics  # its recent_lag samples are read here
        self.sessions = sessions  # the server's live sessions, every transport
        self.interval = interval
        self.cores = usable_cores()
        self.parts = {name: 0.0 for name in FULL}  # smoothed, 1.0 = users feel it
        self.readings: dict[str, float | None] = {}  # the last raw readings, for /health
        self._cpu = self._udp = self._at = None
        self._busy = False  # there were sessions at the last sample
        self._frames: dict[str, tuple[int, int]] = {}  # session id -> (sent, skipped) at the last sample
        r = metrics.registry
        self._load_gauge = Gauge("mms_load", "Load: 1.0 is where users feel it (server/load.py)", registry=r)
        self._part_gauge = Gauge("mms_load_part", "Parts of the load, each 1.0 where users feel it", ["part"],
                                 registry=r)
        self._threshold_gauge = Gauge("mms_load_threshold", "Load at which new sessions are refused", registry=r)
        self._threshold_gauge.set(settings.load_threshold)
        self.refused = Counter("mms_sessions_refused", "New sessions refused", ["reason"], registry=r)
        self._process_gauge = Gauge("mms_process", "Process figures: tasks, threads, open_fds, rss_mb", ["figure"],
                                    registry=r)

    @property
    def load(self) -> float:
        return max(self.parts.values())

    def overloaded(self) -> bool:
        return self.settings.load_threshold > 0 and self.load >= self.settings.load_threshold

    def report(self) -> dict:
        return {"load": round(self.load, 3), "threshold": self.settings.load_threshold,
                "parts": {k: round(v, 3) for k, v in self.parts.items()},
                "readings": {k: (round(v, 4) if v is not None else None) for k, v in self.readings.items()}}

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # a reading that fails must not stop the monitor
                log.exception("load sample failed")
            await asyncio.sleep(self.interval)

    async def sample(self) -> None:
        """Take the readings since the last sample and update the parts."""
        now, cpu, udp = time.monotonic(), time.process_time(), udp_counters()
        readings: dict[str, float | None] = {}
        if self._at is not None:
            wall = max(now - self._at, 1e-3)
            readings["cpu"] = (cpu - self._cpu) / wall / self.cores
            if udp is not None and self._udp is not None:
                received, dropped = udp[0] - self._udp[0], udp[1] - self._udp[1]
                readings["udp"] = dropped / (received + dropped) if received + dropped >= MIN_DATAGRAMS else 0.0
            readings["video"] = self._video_missed()
            readings["rtt"] = await self._round_trip()
            lags = sorted(list(self.metrics.recent_lag)[-max(1, round(wall / 0.1)):])
            readings["lag"] = lags[int(0.9 * (len(lags) - 1))] if lags else 0.0
            for name, value in readings.items():
                part = (value or 0.0) / FULL[name]
                self.parts[name] = SMOOTHING * part + (1 - SMOOTHING) * self.parts[name]
                self._part_gauge.labels(name).set(self.parts[name])
            self.readings = readings
            self._load_gauge.set(self.load)
        busy = any(True for _ in self.sessions())
        if self._busy and not busy:  # the last session left (no one to pause): free its cycles, give memory back
            gc.collect()
            await asyncio.to_thread(trim_memory)
        self._busy = busy
        for name, value in process_figures().items():
            self._process_gauge.labels(name).set(value)
        self._at, self._cpu, self._udp = now, cpu, udp

    def _video_missed(self) -> float | None:
        """Of the returned video frames due since the last sample, the fraction skipped (an
        unchanged card held rather than re-sent counts as sent)."""
        sent = skipped = 0
        frames = {}
        for session in self.sessions():
            track = getattr(session, "video_out", None)
            if track is None or not hasattr(track, "skipped"):
                continue
            frames[session.id] = now = (track.sent + getattr(track, "held", 0), track.skipped)
            before = self._frames.get(session.id, (0, 0))
            sent += now[0] - before[0]
            skipped += now[1] - before[1]
        self._frames = frames
        return skipped / (sent + skipped) if sent + skipped >= MIN_FRAMES else None

    async def _round_trip(self) -> float | None:
        """Median over WebRTC sessions of each one's round trip to its client, in seconds."""
        trips = []
        for session in list(self.sessions()):
            pc = getattr(session, "pc", None)
            if pc is None or pc.connectionState != "connected":
                continue
            measured = []
            for sender in pc.getSenders():
                if sender.transport is None:
                    continue
                try:
                    stats = await sender.getStats()
                except Exception:  # closed meanwhile
                    continue
                measured += [s.roundTripTime for s in stats.values()
                             if s.type == "remote-inbound-rtp" and getattr(s, "roundTripTime", None) is not None]
            # aiortc keeps the data channel's smoothed SCTP round trip privately
            sctp_rtt = getattr(pc.sctp, "_srtt", None) if pc.sctp is not None else None
            if sctp_rtt is not None:
                measured.append(sctp_rtt)
            if measured:
                trips.append(max(measured))
        return statistics.median(trips) if trips else None
