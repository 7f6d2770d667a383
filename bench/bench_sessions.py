#!/usr/bin/env python3
"""Concurrent-session benchmark: our server vs a minimal aiortc echo server, same load.

For each level N (``--sessions 1,4,8,16``):
  1. start ``webrtc_server.py`` as a subprocess (ICE on 127.0.0.1), wait for ``/health``;
  2. connect N ``StreamClient`` sessions from this process (pipelines ["gender"]), each sending a
     320x240 moving test pattern at 25 fps and looped espeak-ng speech with a known lead-in of
     silence, and pinging the data channel once a second;
  3. after a warm-up, measure over a ``--duration`` window: server CPU per session (psutil
     cpu_times delta / wall time, % of one core / N), video fps each client receives, server RSS,
     event-loop lag p50/p99 from ``/health`` at the end of the window, data-channel ping RTT, and
     the time from speech onset to the first ``gender`` event (client clock);
  4. close the sessions and stop the server;
  5. the same load against ``bench/echo_server.py``; our CPU per session as a ratio of its.

Prints a markdown table and writes it (plus details) to ``bench/results/latest.md`` and the raw
numbers to ``bench/results/latest.json``; server logs go to ``bench/results/<server>-<N>.log``.
All traffic stays on 127.0.0.1. Every wait is bounded and the servers are always stopped.

    .venv/bin/python bench/bench_sessions.py [--sessions 1,4,8,16] [--duration 20]
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient  # noqa: E402
from server.ice import restrict_ice_hosts  # noqa: E402
from tests.media import espeak, load_audio  # noqa: E402

HOST = "127.0.0.1"
RESULTS = ROOT / "bench" / "results"
AUDIO_RATE = 48000  # what Opus carries: no resampling in the client's encoder
_children: list[subprocess.Popen] = []


def _kill_children() -> None:
    for proc in _children:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(5)


atexit.register(_kill_children)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- server subprocess ---------------------------------------------------------------------------
class ServerProcess:
    def __init__(self, name: str, argv: list[str], port: int, log_path: Path):
        self.name, self.argv, self.port, self.log_path = name, argv, port, log_path
        self.url = f"http://{HOST}:{port}"
        self.proc: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None
        self._log = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        _children.append(self.proc)
        self.ps = psutil.Process(self.proc.pid)

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def wait_healthy(self, http: aiohttp.ClientSession, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return await r.json()
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy within {timeout:.0f}s:\n{self.log_tail()}")

    async def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGINT)  # aiohttp's run_app: graceful shutdown
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    self.proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.proc.wait, 5)
        if self._log:
            self._log.close()
        return self.proc.returncode


async def get_json(http: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> dict | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return await r.json() if r.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


async def get_metrics(http: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> dict[str, float]:
    """Prometheus exposition -> {'name{label=value}': value} (empty for the echo server)."""
    try:
        async with http.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status != 200:
                return {}
            text = await r.text()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


# --- one client session --------------------------------------------------------------------------
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
    s = Session(index, client, TimedAudioTrack(speech, AUDIO_RATE, onset_sample),
                PatternVideoTrack(320, 240, fps=25.0))
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


class LoopLag:
    """This (client) process's own event-loop lag, measured like server/metrics.py does."""

    def __init__(self):
        self.samples: list[float] = []

    async def run(self, interval: float = 0.1) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(interval)
            self.samples.append(max(0.0, time.monotonic() - t0 - interval))
            del self.samples[:-2000]


CLIENT_LAG = LoopLag()


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


# --- one level against one server ----------------------------------------------------------------
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


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def hist_delta(before: dict, after: dict, name: str) -> dict[str, float]:
    """Cumulative bucket counts of a histogram over the window: {le: count}."""
    out = {}
    for key, value in after.items():
        m = re.fullmatch(rf"{name}_bucket\{{le=([^}}]+)\}}", key)
        if m:
            out[m.group(1)] = value - before.get(key, 0.0)
    return out


async def run_level(kind: str, n: int, args, speech: np.ndarray, onset_sample: int) -> dict:
    port = free_port()
    log_path = RESULTS / f"{kind}-{n}.log"
    py = sys.executable
    if kind == "ours":
        argv = [py, str(ROOT / "webrtc_server.py"), "--port", str(port), "--ice-host", HOST,
                "--max-sessions", "64", "--log-level", args.server_log_level]
    else:
        argv = [py, str(ROOT / "bench" / "echo_server.py"), "--port", str(port), "--ice-host", HOST,
                "--transform", args.transform, "--log-level", args.server_log_level]
    server = ServerProcess(kind, argv, port, log_path)
    result: dict = {"server": kind, "sessions": n, "log": str(log_path.relative_to(ROOT))}
    sessions: list[Session] = []
    async with aiohttp.ClientSession() as http:
        try:
            server.start()
            await server.wait_healthy(http, args.start_timeout)
            await asyncio.sleep(1.0)  # let model preloading (ours) finish before the first offer
            t_connect = time.monotonic()
            sessions = await asyncio.gather(*(open_session(i, server.url, speech, onset_sample, args.connect_timeout)
                                              for i in range(n)))
            live = [s for s in sessions if s.ok]
            result["connect_wall_s"] = round(time.monotonic() - t_connect, 2)
            result["connected"] = len(live)
            result["connect_errors"] = [s.error for s in sessions if not s.ok]
            if not live:
                raise RuntimeError("no session connected")

            # Warm-up: every session has video coming back (bounded), then settle.
            deadline = time.monotonic() + args.first_frame_timeout
            while time.monotonic() < deadline and any(s.client.frame_counts["video"] == 0 for s in live):
                await asyncio.sleep(0.2)
            result["no_video_after_warmup"] = sum(s.client.frame_counts["video"] == 0 for s in live)
            await asyncio.sleep(args.warmup)

            # Measurement window.
            me = psutil.Process()
            m0 = await get_metrics(http, server.url)
            rtp0 = await rtp_totals(live)
            psutil.cpu_percent(None)
            load0 = os.getloadavg()[0]
            CLIENT_LAG.samples.clear()
            t0, cpu0, me0 = time.monotonic(), server.ps.cpu_times(), me.cpu_times()
            frames0 = [(s.client.frame_counts["video"], s.client.frame_counts["audio"]) for s in live]
            rss_peak = 0
            end = t0 + args.duration
            while (now := time.monotonic()) < end:
                with contextlib.suppress(psutil.Error):
                    rss_peak = max(rss_peak, server.ps.memory_info().rss)
                await asyncio.sleep(min(1.0, end - now))
            t1, cpu1, me1 = time.monotonic(), server.ps.cpu_times(), me.cpu_times()
            machine_cpu = psutil.cpu_percent(None)
            client_lag = list(CLIENT_LAG.samples)
            behind = [b for s in live if (b := s.audio_behind_s()) is not None]
            frames1 = [(s.client.frame_counts["video"], s.client.frame_counts["audio"]) for s in live]
            health = await get_json(http, f"{server.url}/health")
            m1 = await get_metrics(http, server.url)
            rtp1 = await rtp_totals(live)
            rtp = {k: rtp1.get(k, 0) - rtp0.get(k, 0) for k in rtp1}
            with contextlib.suppress(psutil.Error):
                rss_peak = max(rss_peak, server.ps.memory_info().rss)
            window = t1 - t0

            cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / window * 100
            bench_cpu = (me1.user + me1.system - me0.user - me0.system) / window * 100
            fps = [(b[0] - a[0]) / window for a, b in zip(frames0, frames1)]
            afps = [(b[1] - a[1]) / window for a, b in zip(frames0, frames1)]
            rtts = [r for s in live for (at, r) in s.rtts if t0 <= at <= t1]
            split = [x for s in live for x in ping_split(s, t0, t1)]
            onsets = [s.first_gender - s.onset for s in live
                      if s.first_gender is not None and s.onset is not None]
            lag = (health or {}).get("event_loop_lag_ms") or {}
            result.update({
                "window_s": round(window, 2),
                "cpu_pct": round(cpu, 1),
                "cpu_pct_per_session": round(cpu / len(live), 2),
                "client_process_cpu_pct": round(bench_cpu, 1),
                "machine_cpu_pct": round(machine_cpu, 1),
                # other processes on the machine, % of one core (what the benchmark did not control)
                "others_cpu_pct": round(max(0.0, machine_cpu * psutil.cpu_count() - cpu - bench_cpu), 1),
                "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
                "client_loop_lag_ms_p50": None if not client_lag else round(pct(client_lag, 50) * 1000, 1),
                "client_loop_lag_ms_p99": None if not client_lag else round(pct(client_lag, 99) * 1000, 1),
                "client_audio_behind_s_max": None if not behind else round(max(behind), 2),
                "machine_cores": psutil.cpu_count(),
                "fps": [round(f, 2) for f in fps],
                "fps_mean": round(statistics.fmean(fps), 2),
                "fps_min": round(min(fps), 2),
                # server CPU per video frame the clients got back: comparable even when CPU-starved
                "cpu_ms_per_returned_frame": (round(cpu * 10 / sum(fps), 2) if sum(fps) else None),
                "rtp_window": rtp,
                "loss_down_video_pct": loss_pct(rtp, "down", "video"),
                "loss_down_audio_pct": loss_pct(rtp, "down", "audio"),
                "loss_up_video_pct": loss_pct(rtp, "up", "video"),
                "loss_up_audio_pct": loss_pct(rtp, "up", "audio"),
                "audio_fps_mean": round(statistics.fmean(afps), 2),
                "rss_mb": round(rss_peak / 2**20, 1),
                "lag_p50_ms": lag.get("p50"),
                "lag_p99_ms": lag.get("p99"),
                "health_sessions": (health or {}).get("sessions"),
                "ping_rtt_ms_p50": None if not rtts else round(pct(rtts, 50) * 1000, 1),
                "ping_rtt_ms_p99": None if not rtts else round(pct(rtts, 99) * 1000, 1),
                "pongs_in_window": len(rtts),
                "ping_up_ms_p50": None if not split else round(pct([u for u, _ in split], 50) * 1000, 1),
                "ping_down_ms_p50": None if not split else round(pct([d for _, d in split], 50) * 1000, 1),
                "onset_to_gender_s": [round(x, 3) for x in onsets],
                "gender_missing": sum(1 for s in live if s.first_gender is None),
                "gender_events": sum(s.gender_events for s in live),
                "gender_latency_ms_max": max((x for s in live for x in s.gender_latency_ms), default=None),
                "error_events": sorted({e for s in live for e in s.error_events}),
                "error_event_count": sum(len(s.error_events) for s in live),
            })
            if m1:  # ours: server-side counters over the window
                d = lambda k: m1.get(k, 0.0) - m0.get(k, 0.0)  # noqa: E731
                result["server_video_out_fps_per_session"] = round(d("mms_frames_out_total{kind=video}") / window / len(live), 2)
                result["server_video_in_fps_per_session"] = round(d("mms_frames_in_total{kind=video}") / window / len(live), 2)
                result["server_frames_dropped_per_s"] = round(d("mms_frames_dropped_total") / window, 2)
                result["server_events_dropped"] = d("mms_events_dropped_total")
                lag_hist = hist_delta(m0, m1, "mms_event_loop_lag_seconds")
                total = lag_hist.get("+Inf", 0.0)
                if total:
                    result["window_lag_samples"] = int(total)
                    result["window_lag_over_25ms_pct"] = round(100 * (1 - lag_hist.get("0.025", 0) / total), 1)
                    result["window_lag_over_100ms_pct"] = round(100 * (1 - lag_hist.get("0.1", 0) / total), 1)
                    result["window_lag_p50_ms_est"] = round(hist_quantile(lag_hist, 0.5) * 1000, 1)
                    result["window_lag_p99_ms_est"] = round(hist_quantile(lag_hist, 0.99) * 1000, 1)
                    result["window_lag_max_bucket_ms"] = min(
                        (float(le) * 1000 for le, c in lag_hist.items() if c >= total), default=None)
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            await asyncio.gather(*(close_session(s) for s in sessions), return_exceptions=True)
            result["exit_code"] = await server.stop()
            result["log_problems"] = scan_log(log_path)
    return result


def hist_quantile(cumulative: dict[str, float], q: float) -> float | None:
    """Prometheus-style quantile estimate from cumulative bucket counts (linear within a bucket)."""
    bounds = sorted(((float(le), c) for le, c in cumulative.items()), key=lambda x: x[0])
    total = bounds[-1][1] if bounds else 0
    if not total:
        return None
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in bounds:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_le, prev_c = le, c
    return prev_le


def scan_log(path: Path) -> dict:
    """Counts of WARNING/ERROR/Traceback lines in a server log, and the first few distinct ones."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    bad = [l for l in lines if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Exception", l)]
    distinct: list[str] = []
    for line in bad:
        key = re.sub(r"^\S+ \S+ ", "", line)  # drop the timestamp
        key = re.sub(r"[0-9a-f]{32}", "<id>", key)[:160]
        if key not in distinct:
            distinct.append(key)
    return {"lines": len(lines), "problem_lines": len(bad), "distinct": distinct[:8]}


# --- report --------------------------------------------------------------------------------------
def fmt(x, spec=".1f", none="n/a") -> str:
    return none if x is None else format(x, spec)


def saturated(r: dict | None, target_fps: float = 25.0) -> bool:
    """The run could not keep real time: returned video well below target, or the clients' own
    audio senders behind the wall clock (the machine, not just the server, ran out of CPU)."""
    if not r or "fps_mean" not in r:
        return False
    return r["fps_mean"] < 0.9 * target_fps or (r.get("client_audio_behind_s_max") or 0) > 0.5


def table(rows: list[tuple[dict, dict | None]]) -> str:
    head = ("| sessions | connected (ours/echo) | our CPU/session % | echo CPU/session % | ratio "
            "| out fps (mean/min) | echo fps (mean/min) | loop lag p50/p99 ms | echo lag p50/p99 ms "
            "| onset→gender s (mean/max) | RSS MB (ours/echo) |")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for ours, echo in rows:
        def cell_fps(r):
            return "n/a" if not r or "fps_mean" not in r else f"{r['fps_mean']:.1f} / {r['fps_min']:.1f}"

        def cell_lag(r):
            return "n/a" if not r or r.get("lag_p50_ms") is None else f"{r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f}"

        ours_cpu = ours.get("cpu_pct_per_session")
        echo_cpu = echo.get("cpu_pct_per_session") if echo else None
        ratio = f"{ours_cpu / echo_cpu:.2f}" if ours_cpu and echo_cpu else "n/a"
        onsets = ours.get("onset_to_gender_s") or []
        onset = "n/a" if not onsets else f"{statistics.fmean(onsets):.2f} / {max(onsets):.2f}"
        if ours.get("gender_missing"):
            onset += f" ({ours['gender_missing']} none)"
        conn = f"{ours.get('connected', 0)}/{echo.get('connected', 0) if echo else '-'}"
        rss = f"{fmt(ours.get('rss_mb'), '.0f')} / {fmt(echo.get('rss_mb') if echo else None, '.0f')}"
        mark = "*" if saturated(ours) or saturated(echo) else ""
        lines.append(f"| {ours['sessions']}{mark} | {conn} | {fmt(ours_cpu)} | {fmt(echo_cpu)} | {ratio} "
                     f"| {cell_fps(ours)} | {cell_fps(echo)} | {cell_lag(ours)} | {cell_lag(echo)} "
                     f"| {onset} | {rss} |")
    return "\n".join(lines)


def details(rows: list[tuple[dict, dict | None]]) -> str:
    cols = [
        ("sessions", lambda r: str(r["sessions"])),
        ("server", lambda r: r["server"]),
        ("CPU total %", lambda r: fmt(r.get("cpu_pct"))),
        ("CPU ms / returned frame", lambda r: fmt(r.get("cpu_ms_per_returned_frame"), ".2f")),
        ("bench-process CPU %", lambda r: fmt(r.get("client_process_cpu_pct"))),
        ("other processes CPU %", lambda r: fmt(r.get("others_cpu_pct"))),
        ("load avg", lambda r: "/".join(f"{x:.1f}" for x in r.get("loadavg_start_end") or []) or "n/a"),
        ("client loop lag p50/p99 ms", lambda r: "n/a" if r.get("client_loop_lag_ms_p50") is None
         else f"{r['client_loop_lag_ms_p50']:.0f} / {r['client_loop_lag_ms_p99']:.0f}"),
        ("client audio behind s", lambda r: fmt(r.get("client_audio_behind_s_max"), ".2f")),
        ("video loss up/down %", lambda r: f"{fmt(r.get('loss_up_video_pct'), '.1f')} / "
                                            f"{fmt(r.get('loss_down_video_pct'), '.1f')}"),
        ("ping RTT p50/p99 ms", lambda r: "n/a" if r.get("ping_rtt_ms_p50") is None
         else f"{r['ping_rtt_ms_p50']:.0f} / {r['ping_rtt_ms_p99']:.0f}"),
        ("ping p50 up/down ms", lambda r: "n/a" if r.get("ping_up_ms_p50") is None
         else f"{r['ping_up_ms_p50']:.0f} / {r['ping_down_ms_p50']:.0f}"),
        ("srv video out/in fps/session", lambda r: "-" if "server_video_out_fps_per_session" not in r else
         f"{r['server_video_out_fps_per_session']:.1f} / {r['server_video_in_fps_per_session']:.1f}"),
        ("srv frames dropped/s", lambda r: fmt(r.get("server_frames_dropped_per_s"))),
        ("window lag p50/p99 ms est. (>25 / >100 ms)", lambda r: "-" if "window_lag_over_25ms_pct" not in r else
         f"{r['window_lag_p50_ms_est']:.1f} / {r['window_lag_p99_ms_est']:.0f} "
         f"({r['window_lag_over_25ms_pct']:.0f}% / {r['window_lag_over_100ms_pct']:.0f}%)"),
        ("gender events", lambda r: str(r.get("gender_events", 0))),
        ("classify latency max ms", lambda r: fmt(r.get("gender_latency_ms_max"), ".0f")),
        ("error events", lambda r: str(r.get("error_event_count", 0))),
        ("log problem lines", lambda r: str((r.get("log_problems") or {}).get("problem_lines", 0))),
        ("errors", lambda r: "; ".join(filter(None, [r.get("error")] + list(dict.fromkeys(
            r.get("connect_errors") or [])))) or "-"),
    ]
    lines = ["| " + " | ".join(name for name, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for pair in rows:
        for r in pair:
            if r:
                lines.append("| " + " | ".join(cell(r) for _, cell in cols) + " |")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------
def make_speech(voice: str, lead_in: float) -> tuple[np.ndarray, int]:
    """espeak-ng speech after ``lead_in`` seconds of silence, and the index of its first non-silent
    sample (|x| > 0.02, about -34 dBFS)."""
    speech = load_audio(espeak(voice), rate=AUDIO_RATE)
    loud = np.flatnonzero(np.abs(speech) > 0.02)
    onset = int(lead_in * AUDIO_RATE) + (int(loud[0]) if len(loud) else 0)
    return np.concatenate([np.zeros(int(lead_in * AUDIO_RATE), dtype=np.float32), speech]), onset


def log_notes(raw: list[dict]) -> list[str]:
    notes = []
    for r in raw:
        problems = r.get("log_problems") or {}
        if problems.get("problem_lines"):
            notes.append(f"- `{r['log']}`: {problems['problem_lines']} warning/error lines, e.g.")
            notes.extend(f"  - `{line}`" for line in problems.get("distinct", []))
    return (["Server logs:", "", *notes, ""] if notes else
            ["Server logs: no warnings or errors.", ""])


async def amain(args) -> int:
    restrict_ice_hosts([HOST])
    lag_task = asyncio.get_running_loop().create_task(CLIENT_LAG.run())
    RESULTS.mkdir(parents=True, exist_ok=True)
    speech, onset_sample = make_speech(args.voice, args.lead_in)
    levels = [int(x) for x in args.sessions.split(",") if x.strip()]
    kinds = {"both": ["ours", "echo"], "ours": ["ours"], "echo": ["echo"]}[args.only]
    print(f"levels {levels}, {args.duration:.0f}s window after {args.warmup:.0f}s warm-up; "
          f"speech clip {len(speech) / AUDIO_RATE:.1f}s (looped, onset at {onset_sample / AUDIO_RATE:.2f}s); "
          f"{psutil.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    rows: list[tuple[dict, dict | None]] = []
    raw = []
    for n in levels:
        pair: dict[str, dict] = {}
        for kind in kinds:
            print(f"[{n:>2} sessions] {kind}: running...", flush=True)
            r = await run_level(kind, n, args, speech, onset_sample)
            raw.append(r)
            pair[kind] = r
            summary = {k: r.get(k) for k in ("connected", "cpu_pct_per_session", "fps_mean", "fps_min",
                                              "lag_p50_ms", "lag_p99_ms", "rss_mb", "error")}
            print(f"[{n:>2} sessions] {kind}: {json.dumps(summary)}", flush=True)
        ours = pair.get("ours") or {"sessions": n}
        rows.append((ours, pair.get("echo")))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "?"
    md = "\n".join([
        f"Sessions benchmark, {time.strftime('%Y-%m-%d %H:%M')}, commit {commit}, {platform.machine()} "
        f"{psutil.cpu_count()} cores, {args.duration:.0f}s window per level, clients in the bench process "
        f"(same machine), echo transform `{args.transform}`.",
        "",
        table(rows),
        "",
        "CPU is % of one core (server process, all threads), measured over the window and divided by the "
        "connected sessions; fps is what each client decoded. Loop lag p50/p99 is /health's at the end of "
        "the window (its last 600 samples = 60 s, so it includes server start-up; the window-only "
        "estimate from /metrics is in the details). onset→gender: client clock, from the first non-silent "
        "audio sample sent to the first `gender` event received. `*`: the run could not keep real time "
        "(returned video under 90% of 25 fps, or the clients' own audio senders over 0.5 s behind the wall "
        "clock): the machine ran out of CPU, so CPU/session there is the share each server got, not what "
        "it needs, and onset→gender includes the clients' lag. Compare 'CPU ms / returned frame' instead.",
        "",
        "Details:",
        "",
        details(rows),
        "",
        *log_notes(raw),
    ])
    print()
    print(md)
    (RESULTS / "latest.md").write_text(md)
    (RESULTS / "latest.json").write_text(json.dumps({"args": vars(args), "results": raw}, indent=1))
    print(f"written {RESULTS.relative_to(ROOT)}/latest.md and latest.json", flush=True)
    lag_task.cancel()
    return 0 if all("error" not in r for r in raw) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="1,4,8,16", help="comma-separated concurrency levels")
    parser.add_argument("--duration", type=float, default=20.0, help="measurement window per level, seconds")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds after all sessions have video")
    parser.add_argument("--only", choices=["both", "ours", "echo"], default="both")
    parser.add_argument("--transform", choices=["edges", "invert", "none"], default="edges",
                        help="the echo server's per-frame video operation")
    parser.add_argument("--voice", default="en", help="espeak-ng voice of the test speech")
    parser.add_argument("--lead-in", type=float, default=1.0, help="seconds of silence before the speech")
    parser.add_argument("--connect-timeout", type=float, default=40.0)
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--first-frame-timeout", type=float, default=20.0)
    parser.add_argument("--server-log-level", default="WARNING")
    args = parser.parse_args()
    levels = [int(x) for x in args.sessions.split(",") if x.strip()]
    # Hard bound on the whole run, whatever happens inside.
    budget = sum(2 * (args.duration + args.warmup + args.connect_timeout + args.first_frame_timeout
                      + args.start_timeout + 60) for _ in levels)

    async def guarded() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await asyncio.wait_for(amain(args), budget)

    try:
        code = asyncio.run(guarded())
    except (asyncio.CancelledError, asyncio.TimeoutError, KeyboardInterrupt) as exc:
        print(f"benchmark stopped: {type(exc).__name__}", file=sys.stderr)
        code = 2
    finally:
        _kill_children()
    sys.exit(code)


if __name__ == "__main__":
    main()
