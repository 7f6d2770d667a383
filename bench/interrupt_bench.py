#!/usr/bin/env python3
"""Interrupt latency through WebRTC (a script, not a timed test).

``webrtc_server.py --pipelines talking_head`` runs as a subprocess; one aiortc viewer watches a
REST avatar session (``drive: api``) that is fed seconds of a loud vowel, so the server is playing
speech on the returned audio track. Once the viewer hears it, the client interrupts, and the time
is measured from the interrupt to silence on the returned audio: the arrival of the first received
20 ms frame (decoded Opus) from which every later frame is silent (RMS < -50 dBFS).

Rows:
* ``data channel``: ``{"type": "interrupt"}`` on the ``events`` channel;
* ``REST``: ``POST /api/avatar/sessions/{id}/interrupt`` (the app's backend stops the avatar);
each with the viewer's audio jitter buffer as aiortc sets it (it holds 4 packets, 80 ms, before
releasing one: a client-side delay every returned sound has, not part of the interrupt) and set to
release each packet at once (as the server does for inbound audio), which leaves the server's and
the network's part. Also: when the ``interrupted`` event arrives.

    .venv/bin/python bench/interrupt_bench.py [--tries 20]
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from bench import harness  # noqa: E402
from bench.harness import RESULTS  # noqa: E402
from client import StreamClient  # noqa: E402
from media.codecs import release_audio_early  # noqa: E402
from talking_head_client import AvatarClient  # noqa: E402
from testing.media import vowel  # noqa: E402
from testing.server import ServerProcess  # noqa: E402
from testing.speech import loud_frames, silence_after  # noqa: E402

SPEECH = (vowel(3.0) * 32767).astype("<i2").tobytes()


async def one(viewer: StreamClient, api: AvatarClient, sid: str, how: str) -> dict | None:
    viewer.send({"type": "ping"})  # a receive-only viewer's heartbeat (the server closes silent ones)
    await api.feed_audio(sid, SPEECH)
    deadline = time.monotonic() + 5
    while loud_frames(viewer.received["audio"], time.monotonic() - 0.3) < 10:  # speaking for 0.3 s
        if time.monotonic() > deadline:
            print(f"{how}: the viewer did not hear the speech within 5 s: {await api.status(sid)}",
                  file=sys.stderr, flush=True)
            return None
        await asyncio.sleep(0.05)
    harness.drain(viewer)
    sent = time.monotonic()
    if how == "data channel":
        viewer.send({"type": "interrupt"})
    else:
        await api.interrupt(sid)
    event = await viewer.next_event("interrupted", timeout=5)
    evented = time.monotonic()
    await asyncio.sleep(0.6)
    silent = silence_after(viewer.received["audio"], sent)
    await asyncio.sleep(0.3)
    return {"silence_ms": None if silent is None else 1000 * (silent - sent),
            "event_ms": 1000 * (evented - sent), "dropped_seconds": event["dropped_seconds"]}


async def main_async(args) -> dict:
    harness.loopback_only()
    results: dict = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "tries": args.tries, "rows": {}}
    async with ServerProcess.script("interrupt", RESULTS / "interrupt-server.log", "--pipelines",
                                    "talking_head") as server:
        api = AvatarClient(server.url)
        for jitter in ("aiortc default (80 ms hold)", "released at once"):
            sid = (await api.create_session(chunk_duration=3.0))["session_id"]
            viewer = StreamClient(server.url, ["talking_head"],
                                  {"talking_head": {"drive": "api", "avatar_session": sid}})
            viewer.keep_frames = 200
            try:
                await viewer.connect()
                await viewer.next_event("talking_head", timeout=30)
                if jitter == "released at once":
                    for transceiver in viewer.pc.getTransceivers():
                        if transceiver.kind == "audio":
                            release_audio_early(transceiver.receiver)
                for how in ("data channel", "REST"):
                    tries = [await one(viewer, api, sid, how) for _ in range(args.tries)]
                    results["rows"][f"{how}, client jitter buffer {jitter}"] = [t for t in tries if t]
                    print(f"{how}, {jitter}: done", file=sys.stderr, flush=True)
            finally:
                await viewer.close()
                await api.delete_session(sid)
        await api.close()
    results["loadavg_end"] = os.getloadavg()
    return results


def table(r: dict) -> str:
    rows = []
    for name, tries in r["rows"].items():
        silence = [t["silence_ms"] for t in tries if t["silence_ms"] is not None]
        events = [t["event_ms"] for t in tries]
        rows.append([name, f"{len(silence)}/{len(tries)}",
                     *(f"{harness.pct(silence, q):.0f}" if silence else "n/a" for q in (50, 95, 100)),
                     f"{harness.pct(events, 50):.0f} / {harness.pct(events, 95):.0f}"])
    return "\n".join([
        f"Machine: {r['cpus']} CPU cores shared with other work; load average "
        f"{' / '.join(f'{x:.1f}' for x in r['loadavg_start'])} at the start, "
        f"{' / '.join(f'{x:.1f}' for x in r['loadavg_end'])} at the end; {r['tries']} tries per row.",
        "",
        harness.markdown_table(["interrupt, viewer's audio", "silent", "to silence p50 ms", "p95 ms", "max ms",
                                "interrupted event p50 / p95 ms"], rows),
    ])


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--tries", type=int, default=20, help="interrupts per row (default 20)")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    harness.publish("interrupt", table(results), results)


if __name__ == "__main__":
    main()
