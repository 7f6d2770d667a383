"""Soak: many WebRTC connect/disconnect cycles against a server subprocess, mixing the ways
clients leave, then a check that the server is back where it started (bench/soak.py prints the
table; tests/test_soak.py runs a short one).

Cycle kinds:
    normal      audio + video + pings, ``ready`` and a ``pong`` back, then a clean close
    abrupt      the same, then its sockets go silent without a goodbye (``vanish``): the
                heartbeat timeout detaches it on the server, and the resume wait ends it
    offer_only  offer, answer, gone before ICE (``offer_only``): the connect deadline ends it
    silent      connects, never sends media or messages: the connect deadline ends it

The server's ``/health`` (``process``: asyncio tasks, threads, open fds, RSS) is read after a
warm-up (the baseline: models loaded, worker pools grown), every ``every`` cycles, and once every
session has gone at the end.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from testing.ghosts import offer_only, vanish
from testing.server import ServerProcess

KINDS = ("normal", "abrupt", "offer_only", "silent")
MIX = {"normal": 4, "abrupt": 2, "offer_only": 2, "silent": 2}  # weights
HEARTBEAT, CONNECT, RESUME = 3.0, 3.0, 3.0  # the server's --heartbeat-timeout, --connect-timeout, --resume-seconds
RSS_GROWTH_MB = 30.0


class Stages(list):
    """The stages a cycle went through, and when (for the report of one that failed)."""

    def __init__(self):
        super().__init__()
        self.t0 = time.monotonic()

    def append(self, name: str) -> None:
        super().append(f"{name} at {time.monotonic() - self.t0:.1f} s")

    def __str__(self) -> str:
        return ", ".join(self) or "not started"


@dataclass
class Soak:
    cycles: int = 500
    concurrency: int = 4
    time_limit: float = 900.0  # seconds for the cycles; what is left undone is reported
    warmup: int = 40  # cycles before the baseline: pools grown, the heap at its working size
    every: int = 100  # cycles between process samples
    server_sessions: int = 12  # a cycle waits while the server holds this many (ghosts linger seconds)
    mix: dict = field(default_factory=lambda: dict(MIX))
    seed: int = 13
    done: dict = field(default_factory=lambda: {k: 0 for k in KINDS})
    errors: list = field(default_factory=list)
    samples: list = field(default_factory=list)  # (label, cycles done, seconds, /health process + sessions)
    cycle_s: dict = field(default_factory=lambda: {k: [] for k in KINDS})

    # --- one cycle of each kind ---------------------------------------------------------------------
    async def cycle(self, url: str, kind: str, stage: Stages) -> None:
        t0 = time.monotonic()
        stage.append("offer")
        if kind == "offer_only":
            await offer_only(url)
        else:
            client = StreamClient(url, ["gender"])
            try:
                if kind == "silent":
                    await client.connect()
                else:
                    tone = np.sin(np.arange(16000) * 2 * np.pi * 180 / 16000).astype(np.float32) * 0.3
                    await client.connect(ArrayAudioTrack(tone, 16000, loop=True), PatternVideoTrack(160, 120))
                    stage.append("ready")
                    await client.next_event("ready")
                    stage.append("pong")
                    client.send({"type": "ping", "id": 1})
                    await client.next_event("pong")
                    if kind == "abrupt":
                        vanish(client.pc)
            finally:
                stage.append("close")
                await client.close()
        self.done[kind] += 1
        self.cycle_s[kind].append(time.monotonic() - t0)

    # --- the run ---------------------------------------------------------------------------------------
    async def health(self, http, url: str) -> dict:
        async with http.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body = await resp.json()
        return {"sessions": body["sessions"], **body["process"]}

    async def settle(self, http, url: str, timeout: float) -> dict:
        """/health once no session is left (or ``timeout`` passed), after a short pause."""
        deadline = time.monotonic() + timeout
        while (await self.health(http, url))["sessions"] and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        await asyncio.sleep(2.5)  # closing sessions' last callbacks; the server's memory trim (1 s samples)
        return await self.health(http, url)

    async def run_against(self, url: str) -> None:
        rng = random.Random(self.seed)
        kinds = rng.choices(list(self.mix), weights=list(self.mix.values()), k=self.warmup + self.cycles)
        settle = HEARTBEAT + CONNECT + RESUME + 10
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(self._guarded(url, k) for k in KINDS))  # each kind once, then the rest
            await self._workers(url, kinds[len(KINDS):self.warmup])
            self.samples.append(("baseline", 0, 0.0, await self.settle(http, url, settle)))
            t0 = time.monotonic()
            queue = kinds[self.warmup:]
            for start in range(0, len(queue), self.every):
                if time.monotonic() - t0 > self.time_limit:
                    break
                await self._workers(url, queue[start:start + self.every], deadline=t0 + self.time_limit)
                done = sum(self.done.values()) - self.warmup
                label = "end" if start + self.every >= len(queue) else f"after {done}"
                self.samples.append((label, done, time.monotonic() - t0, await self.settle(http, url, settle)))
            if self.samples[-1][0] != "end":
                self.samples[-1] = ("end (time limit)", *self.samples[-1][1:])

    async def _guarded(self, url: str, kind: str) -> None:
        stage = Stages()
        try:
            await asyncio.wait_for(self.cycle(url, kind, stage), 30)
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            self.errors.append(f"{kind} ({stage}): {type(exc).__name__}: {exc}")

    async def _workers(self, url: str, kinds: list[str], deadline: float | None = None) -> None:
        """Run these cycles, ``concurrency`` at a time, while the server holds fewer than
        ``server_sessions`` (so that its working set, and RSS, is alike from one sample to the next)."""
        pending = list(kinds)

        async def worker(http):
            while pending and (deadline is None or time.monotonic() < deadline):
                while (await self.health(http, url))["sessions"] >= self.server_sessions:
                    await asyncio.sleep(0.2)
                if pending:
                    await self._guarded(url, pending.pop(0))

        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(worker(http) for _ in range(self.concurrency)))

    # --- the verdict -----------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        base, end = self.samples[0][3], self.samples[-1][3]
        found = []
        if end["sessions"]:
            found.append(f"{end['sessions']} sessions left")
        for figure in ("tasks", "threads", "open_fds"):
            if end[figure] > base[figure]:
                found.append(f"{figure}: {base[figure]} -> {end[figure]}")
        # The heap's size at one instant moves ±15 MB with what the last sessions left for the
        # collector; a leak lifts every later sample, so growth is judged on the last two.
        last = [f["anon_mb"] for *_, f in self.samples[1:][-2:]] or [end["anon_mb"]]
        grown = sum(last) / len(last) - base["anon_mb"]
        if grown >= RSS_GROWTH_MB:
            found.append(f"RSS (anonymous) grew {grown:.1f} MB (last {len(last)} samples; limit {RSS_GROWTH_MB:.0f})")
        if self.errors:
            found.append(f"{len(self.errors)} cycles failed, e.g. {self.errors[0]}")
        return found

    def table(self) -> str:
        rows = ["| when | cycles | s | sessions | tasks | threads | pool threads | open fds | RSS MB | of it anonymous MB |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for label, done, seconds, f in self.samples:
            rows.append(f"| {label} | {done} | {seconds:.0f} | {f['sessions']} | {f['tasks']} | {f['threads']} | "
                        f"{f.get('pool_threads', 0)} | {f['open_fds']} | {f['rss_mb']:.1f} | {f['anon_mb']:.1f} |")
        return "\n".join(rows)

    def kinds_table(self) -> str:
        rows = ["| kind | cycles (warm-up included) | client-side s p50 |", "|---|---|---|"]
        for kind in KINDS:
            times = sorted(self.cycle_s[kind])
            p50 = f"{times[len(times) // 2]:.2f}" if times else "n/a"
            rows.append(f"| {kind} | {self.done[kind]} | {p50} |")
        return "\n".join(rows)


def server(log_path: Path, *flags: str) -> ServerProcess:
    """``webrtc_server.py`` for a soak: short timeouts so ghosts leave quickly, no load shedding
    (the soak measures leaks, not capacity), room for every cycle at once."""
    return ServerProcess.script("soak", log_path, "--heartbeat-timeout", str(HEARTBEAT), "--connect-timeout",
                                str(CONNECT), "--resume-seconds", str(RESUME), "--load-threshold", "0",
                                "--max-sessions", "64", *flags)


async def soak(log_path: Path, **kwargs) -> Soak:
    """Start a server, run a ``Soak(**kwargs)`` against it, stop it; the soak's figures."""
    run = Soak(**kwargs)
    async with server(log_path) as proc:
        await run.run_against(proc.url)
        with contextlib.suppress(Exception):
            run.server_log_tail = proc.log_tail(5)
    return run
