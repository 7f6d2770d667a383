#!/usr/bin/env python3
"""CPU per session of two servers measured at the same time, on the same core: a ratio the
machine's drift cannot bend.

``bench/capacity.py`` runs one server after the other; on a shared machine the speed drifts
between them (its speed probes have differed by up to 70% within one run), and so does the
ratio of their CPU per session. Here both servers (``--servers``, default ours and the echo) run
pinned to the server's core *together*, each with ``--sessions`` of capacity.py's cheap clients,
few enough that the core is never full (both keep real time: the fps of every session and the
loop lag are reported). For ``--windows`` windows of ``--duration`` seconds, each server's CPU
per session is read over the same window, and their ratio taken. The run is then repeated with
fresh servers started and given their sessions in the other order, which cancels what going
first or second does (a few percent, both ways); the ratio reported is the geometric mean of the
two orders' medians.

    .venv/bin/python bench/paired.py [--sessions 2] [--windows 6] [--duration 10] [--servers ours,echo]

Everything stays on 127.0.0.1; every wait is bounded and the servers are always stopped. Prints
a markdown table and writes it to ``bench/results/paired.md`` (raw numbers in ``paired.json``).
"""
from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench import harness  # noqa: E402
from bench.capacity import (SERVERS, CountingVp8Decoder, add_server_flags, client_media, lag_stats,  # noqa: E402
                            open_session, run, server_process, servers)
from bench.harness import RESULTS, get_metrics  # noqa: E402
from bench.session_clients import close_session  # noqa: E402


async def run_pair(order: list[str], args, video, audio, onset) -> list[dict]:
    """Both servers of ``order`` up together, sessions opened in that order; one row per window."""
    procs = {kind: server_process(kind, RESULTS / f"paired-{kind}.log", args) for kind in order}
    sessions: dict[str, list] = {kind: [] for kind in order}
    windows = []
    async with aiohttp.ClientSession() as http:
        try:
            for proc in procs.values():
                proc.start()
            for proc in procs.values():
                await proc.wait_healthy(http, args.start_timeout)
            await asyncio.sleep(1.0)
            for kind in order:
                sessions[kind] = await asyncio.gather(*(
                    open_session(kind, i, procs[kind].url, video, audio, onset, args.connect_timeout)
                    for i in range(args.sessions)))
                if not all(s.ok for s in sessions[kind]):
                    raise RuntimeError(f"{kind}: {[s.error for s in sessions[kind] if not s.ok]}")
            await asyncio.sleep(args.warmup)
            for _ in range(args.windows):
                m0 = {k: await get_metrics(http, p.url) for k, p in procs.items() if k != "echo"}
                cpu0 = {k: p.cpu_seconds() for k, p in procs.items()}
                frames0 = {k: [s.client.frame_counts["video"] for s in v] for k, v in sessions.items()}
                t0 = time.monotonic()
                await asyncio.sleep(args.duration)
                window = time.monotonic() - t0
                row = {"order": "/".join(order)}
                for kind, proc in procs.items():
                    row[f"{kind}_cpu_pct_per_session"] = round(
                        (proc.cpu_seconds() - cpu0[kind]) / window * 100 / args.sessions, 2)
                    row[f"{kind}_fps_min"] = round(min((s.client.frame_counts["video"] - f) / window
                                                       for s, f in zip(sessions[kind], frames0[kind])), 1)
                    if kind in m0:
                        p99, _ = lag_stats(m0[kind], await get_metrics(http, proc.url))
                        row[f"{kind}_lag_p99_ms"] = None if p99 is None else round(p99, 1)
                a, b = args.servers
                row["ratio"] = round(row[f"{b}_cpu_pct_per_session"] / row[f"{a}_cpu_pct_per_session"], 3)
                windows.append(row)
                print(f"  {row}", flush=True)
        finally:
            CountingVp8Decoder.all.clear()
            await asyncio.gather(*(close_session(s) for v in sessions.values() for s in v))
            for proc in procs.values():
                await proc.stop()
    return windows


def report(runs: list[list[dict]], ratio: float, args) -> str:
    a, b = args.servers
    rows = [[w["order"], str(w[f"{a}_cpu_pct_per_session"]), str(w[f"{b}_cpu_pct_per_session"]), f"{w['ratio']:.3f}",
             f"{w[f'{a}_fps_min']} / {w[f'{b}_fps_min']}"] for run in runs for w in run]
    medians = [statistics.median(w["ratio"] for w in run) for run in runs]
    return "\n".join([
        f"# CPU per session, {b} / {a}, measured together ({args.size}, {args.sessions} sessions each, "
        f"{harness.git_commit()})", "",
        f"Servers: {', '.join(f'**{k}**: {SERVERS[k]}' for k in args.servers)}.", "",
        harness.markdown_table(["order (started, given sessions)", f"{a} CPU %/session", f"{b} CPU %/session",
                                f"{b} / {a}", f"fps min ({a} / {b})"], rows), "",
        f"Median per order: {', '.join(f'{m:.3f}' for m in medians)}; "
        f"**{b} / {a} = {ratio:.3f}** (geometric mean of the two orders).",
    ])


async def main_async(args) -> None:
    video, audio, onset = client_media(args)
    runs = []
    for order in (args.servers, args.servers[::-1]):
        print(f"order {'/'.join(order)}: {args.sessions} sessions each", flush=True)
        runs.append(await run_pair(order, args, video, audio, onset))
    medians = [statistics.median(w["ratio"] for w in run) for run in runs]
    ratio = math.sqrt(medians[0] * medians[1])
    harness.publish("paired", report(runs, ratio, args), {"args": vars(args), "runs": runs, "ratio": ratio})


def pair(text: str) -> list[str]:
    kinds = servers(text)
    if len(kinds) != 2 or kinds[0] == kinds[1]:
        raise ValueError(f"two different servers, not {text!r}")
    return kinds


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--sessions", type=int, default=2, help="sessions on each server (default 2)")
    p.add_argument("--windows", type=int, default=6, help="windows measured per order (default 6)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per window (default 10)")
    p.add_argument("--servers", type=pair, default=["echo", "ours"],
                   help="the two servers, of ours, relay and echo; the ratio is the second's over the first's "
                        "(default echo,ours)")
    add_server_flags(p, warmup=5.0)
    args = p.parse_args()
    if not 1 <= args.sessions <= 8 or not 1 <= args.windows <= 30 or not 1 <= args.duration <= 60:
        p.error("--sessions 1-8, --windows 1-30, --duration 1-60")
    run(main_async, args)


if __name__ == "__main__":
    main()
