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

import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench import harness  # noqa: E402
from bench.harness import RESULTS, ROOT, get_json, get_metrics, hist_delta, hist_quantile, pct  # noqa: E402
from bench.session_clients import (AUDIO_RATE, Session, close_session, loss_pct, make_speech,  # noqa: E402
                                   open_session, ping_split, rtp_totals)
from bench.session_report import report, scan_log  # noqa: E402
from testing.server import ServerProcess, kill_children  # noqa: E402

ECHO_SERVER = ROOT / "bench" / "echo_server.py"
CLIENT_LAG = harness.LoopLag()  # this (client) process's own event-loop lag


async def run_level(kind: str, n: int, args, speech: np.ndarray, onset_sample: int) -> dict:
    log_path = RESULTS / f"{kind}-{n}.log"
    if kind == "ours":
        # no load shedding: the benchmark measures past the point where the server would refuse
        server = ServerProcess.script(kind, log_path, "--max-sessions", "64", "--load-threshold", "0",
                                      log_level=args.server_log_level)
    else:
        server = ServerProcess.script(kind, log_path, "--transform", args.transform, script=ECHO_SERVER,
                                      log_level=args.server_log_level)
    result: dict = {"server": kind, "sessions": n, "log": str(harness.shown(log_path))}
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
            loads = []  # ours: /health's load_detail once a second (server/load.py)
            end = t0 + args.duration
            while time.monotonic() < end:
                with contextlib.suppress(psutil.Error):
                    rss_peak = max(rss_peak, server.ps.memory_info().rss)
                if kind == "ours" and (detail := ((await get_json(http, f"{server.url}/health")) or {}).get("load_detail")):
                    loads.append(detail)
                await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
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
            if loads:  # ours: the load it would shed at, and its parts, averaged over the window
                result["load_mean"] = round(statistics.fmean(d["load"] for d in loads), 2)
                result["load_parts_mean"] = {p: round(statistics.fmean(d["parts"][p] for d in loads), 2)
                                             for p in loads[0]["parts"]}
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



async def amain(args) -> int:
    harness.loopback_only()
    lag_task = asyncio.get_running_loop().create_task(CLIENT_LAG.run())
    RESULTS.mkdir(parents=True, exist_ok=True)
    speech, onset_sample = make_speech(args.voice, args.lead_in)
    levels = args.sessions
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

    print()
    harness.publish("latest", report(rows, raw, args), {"args": vars(args), "results": raw})
    lag_task.cancel()
    return 0 if all("error" not in r for r in raw) else 1


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_load_flags(parser, "1,4,8,16", 20.0, duration_help="measurement window per level, seconds")
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
    # Hard bound on the whole run, whatever happens inside.
    budget = len(args.sessions) * 2 * (args.duration + args.warmup + args.connect_timeout + args.first_frame_timeout
                                       + args.start_timeout + 60)

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
        kill_children()
    sys.exit(code)


if __name__ == "__main__":
    main()
