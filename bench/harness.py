"""What the benchmark scripts share: their command lines, the server's /health and /metrics,
the event-loop lag of a process, percentiles, markdown tables and where results are written.

Each script starts with one line that puts the repository root on ``sys.path`` (so that
``bench``, ``testing`` and the server's packages import), then imports from here.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np

from testing.net import LOOPBACK

ROOT = Path(__file__).resolve().parent.parent
HOST = LOOPBACK  # every benchmark stays on loopback
RESULTS = Path(os.environ.get("MMS_BENCH_RESULTS") or ROOT / "bench" / "results")  # git-ignored; a test's elsewhere


# --- command line --------------------------------------------------------------------------------
def int_list(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]`` (the concurrency levels of ``--sessions``, ``--avatars``)."""
    return [int(x) for x in text.split(",") if x.strip()]


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_load_flags(p: argparse.ArgumentParser, levels: str, duration: float, levels_flag: str = "--sessions",
                   levels_help: str = "comma-separated concurrency levels",
                   duration_help: str = "seconds measured per level") -> None:
    """The flags of a load benchmark: the concurrency levels and the measured seconds per level."""
    p.add_argument(levels_flag, type=int_list, default=int_list(levels), help=f"{levels_help} (default {levels})")
    p.add_argument("--duration", type=float, default=duration, help=f"{duration_help} (default {duration:g})")


def loopback_only() -> None:
    """This process's WebRTC clients gather and accept ICE candidates on loopback only."""
    from server.ice import restrict_ice_hosts

    restrict_ice_hosts([HOST])


# --- the server's HTTP endpoints -----------------------------------------------------------------
async def get_json(http: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> dict | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return await r.json() if r.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


async def get_metrics(http: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> dict[str, float]:
    """Prometheus exposition -> {'name{label=value}': value} (empty for the echo server)."""
    from prometheus_client.parser import text_string_to_metric_families

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


def hist_delta(before: dict, after: dict, name: str) -> dict[str, float]:
    """Cumulative bucket counts of a histogram (from ``get_metrics``) over a window: {le: count}."""
    out = {}
    for key, value in after.items():
        m = re.fullmatch(rf"{name}_bucket\{{le=([^}}]+)\}}", key)
        if m:
            out[m.group(1)] = value - before.get(key, 0.0)
    return out


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


# --- measuring -----------------------------------------------------------------------------------
class LoopLag:
    """A process's own event-loop lag, measured like server/metrics.py does: how late a 100 ms
    sleep wakes up. The newest ``keep`` samples, in seconds."""

    def __init__(self, keep: int = 2000):
        self.samples: collections.deque[float] = collections.deque(maxlen=keep)

    async def run(self, interval: float = 0.1, observe=None) -> None:
        """Sample forever; ``observe(lag)`` (e.g. a Prometheus histogram's) sees each sample too."""
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(interval)
            lag = max(0.0, time.monotonic() - t0 - interval)
            self.samples.append(lag)
            if observe:
                observe(lag)


def pct(values, q: float) -> float | None:
    """The ``q``-th percentile of ``values``; None for none."""
    return float(np.percentile(values, q)) if len(values) else None


def drain(client) -> list[dict]:
    """The events a ``StreamClient`` has received and nobody read yet, taken off its queue."""
    events = []
    while client.events.qsize():
        events.append(client.events.get_nowait())
    return events


# --- results -------------------------------------------------------------------------------------
def markdown_table(header: list[str], rows: list[list[str]], pad: bool = False) -> str:
    """A markdown table; ``pad`` lines the columns up for reading as plain text."""
    widths = [max(len(r[i]) for r in [header, *rows]) if pad else 0 for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) if pad else "---" for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def git_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "?"


def publish(name: str, markdown: str, data) -> None:
    """The report on stdout, and in ``bench/results/<name>.md``; the raw numbers in ``<name>.json``."""
    print(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"written {shown(RESULTS)}/{name}.md and {name}.json", flush=True)


def shown(path: Path) -> Path:
    """``path`` from the repository root where it is inside it (results may be elsewhere)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
