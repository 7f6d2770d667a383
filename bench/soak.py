#!/usr/bin/env python3
"""Soak: N WebRTC connect/disconnect cycles (default 500) against webrtc_server.py, mixing normal
sessions, abrupt disconnects (sockets silent, no goodbye), clients that stop between offer and
ICE, and sessions that never send anything; then checks that no session is left and that the
server's asyncio tasks, threads and open file descriptors are back to their baseline (taken after
a warm-up) and its RSS grew less than 30 MB. Prints a table of the server's process figures over
the run; exits 1 if a check fails.

    .venv/bin/python bench/soak.py                         # 500 cycles, 4 at a time
    .venv/bin/python bench/soak.py --cycles 100 --concurrency 8
"""
from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench import harness  # noqa: E402
from testing.soak import MIX, Soak, soak  # noqa: E402


async def main(args) -> int:
    harness.loopback_only()
    t0 = time.monotonic()
    run = await soak(harness.RESULTS / "soak-server.log", cycles=args.cycles, concurrency=args.concurrency,
                     time_limit=args.time_limit, warmup=args.warmup, every=args.every)
    problems = run.problems()
    markdown = "\n\n".join([
        f"Soak: {sum(run.done.values()) - run.warmup} cycles after {run.warmup} of warm-up, {args.concurrency} at a "
        f"time, {time.monotonic() - t0:.0f} s in all (mix {MIX}; server --heartbeat-timeout 3 --connect-timeout 3 --resume-seconds 3)",
        run.table(), run.kinds_table(),
        "checks: " + ("all passed (0 sessions; tasks, threads, fds at baseline; RSS growth < 30 MB)"
                      if not problems else "FAILED: " + "; ".join(problems)),
    ])
    harness.publish("soak", markdown, {**dataclasses.asdict(run), "problems": problems})
    return 1 if problems else 0


if __name__ == "__main__":
    parser = harness.parser(__doc__)
    defaults = Soak()
    parser.add_argument("--cycles", type=int, default=defaults.cycles, help="cycles measured (default 500)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="cycles at a time (default 4)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="cycles before the baseline (default 40)")
    parser.add_argument("--every", type=int, default=defaults.every, help="cycles between samples (default 100)")
    parser.add_argument("--time-limit", type=float, default=defaults.time_limit,
                        help="seconds for the measured cycles; the rest is skipped and said (default 900)")
    sys.exit(asyncio.run(main(parser.parse_args())))
