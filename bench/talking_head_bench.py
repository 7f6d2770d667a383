#!/usr/bin/env python3
"""talking_head benchmark (a script, not a timed test).

1. Rendering, in this process: ms per frame of the default 512 x 512 portrait on the cv2 path
   (one core), and of the torch ``grid_sample`` batch path on CPU tensors (8 avatars per call).
2. Rendering only, N avatars at 25 fps on a thread pool (no WebRTC): the frame rate each sustains.
3. Through WebRTC: ``webrtc_server.py --pipelines talking_head`` as a subprocess, N viewers in this
   process (``drive: mic``, each sending looped speech), for N in ``--avatars``: received video fps
   per viewer (mean, worst), server CPU (% of one core) and frames sent per second. The viewers
   count the frames they receive without decoding them (``--decode-video`` to decode), so that
   this process takes less of the cores it shares with the server.
4. Start to first frame: from the offer to the first received avatar frame (512 x 512, not the
   placeholder card), for the first session of a fresh server (models load) and later ones; and
   the server's own part (the ``talking_head`` event's ``t``).
5. Audio to lip through WebRTC (``drive: mic``): bursts of a loud vowel after silence; for each
   burst, from the moment the client's audio track hands out the frame holding the onset to the
   arrival of the first returned frame whose mouth region opens (dark pixels, as the tests count).
6. Sync for server-produced speech (``drive: translation``): the received audio onset vs the
   received open mouth.

Both processes share this machine's cores, so the WebRTC rows are a lower bound on what the server
alone sustains. Prints a markdown table and writes it to
``bench/results/talking_head.md`` (raw numbers in ``talking_head.json``).

    .venv/bin/python bench/talking_head_bench.py [--avatars 1,4,8,16] [--duration 8]
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench import harness  # noqa: E402
from bench.harness import RESULTS, get_metrics, markdown_table  # noqa: E402
from client import ArrayAudioTrack, StreamClient  # noqa: E402
from pipelines.talking_head.avatar import Avatar  # noqa: E402
from pipelines.talking_head.avatar_render import Rig, TorchWarper  # noqa: E402
from testing.images import dark_pixels, mouth_area, portrait_rig  # noqa: E402
from testing.media import espeak, frame_level, load_audio, vowel  # noqa: E402
from testing.server import ServerProcess  # noqa: E402

FPS = 25


class MouthMeter:
    """Whether the default portrait's mouth is open in a frame (as tests/test_talking_head.py counts)."""

    def __init__(self, rig: Rig):
        self.rig, self.area = rig, mouth_area(rig)

    def open(self, frame: np.ndarray) -> bool:
        if frame.shape[:2] != (512, 512):
            return False  # the placeholder card before the avatar shows
        return dark_pixels(frame, self.rig) > 0.2 * self.area


class StampedAudioTrack(ArrayAudioTrack):
    """Records when each 20 ms frame is handed to the encoder (sample position -> monotonic time)."""

    def __init__(self, samples, rate):
        super().__init__(samples, rate, loop=False)
        self.sent_at: dict[int, float] = {}

    async def recv(self):
        frame = await super().recv()
        self.sent_at[frame.pts] = time.monotonic()
        return frame


# --- 1, 2: rendering ---------------------------------------------------------------------------
def bench_render(rig: Rig) -> dict:
    speech = load_audio(espeak("en"))
    pos = [0]
    avatar = Avatar(rig, lambda: (speech[pos[0]:pos[0] + 640], 16000), seed=1)
    times = []
    for i in range(300):
        pos[0] = (i * 640) % (len(speech) - 640)
        t0 = time.perf_counter()
        avatar.render()
        times.append(time.perf_counter() - t0)
    warper = TorchWarper("cpu")
    avatars = [Avatar(rig, lambda: (speech[:640], 16000), seed=i) for i in range(8)]
    batch_times = []
    for _ in range(30):
        poses = [a.pose() for a in avatars]
        t0 = time.perf_counter()
        warper.render([a.rig for a in avatars], poses)
        batch_times.append(time.perf_counter() - t0)
    return {"cv2_ms_median": 1000 * statistics.median(times), "cv2_ms_p95": 1000 * float(np.percentile(times, 95)),
            "torch_cpu_batch8_ms_per_frame": 1000 * statistics.median(batch_times) / 8}


def bench_render_only(rig: Rig, n: int, seconds: float = 4.0) -> float:
    """N avatars each rendering at 25 fps on a shared thread pool; the worst avatar's achieved fps
    (a frame late by more than one period is skipped, as SynthVideoTrack does)."""
    speech = load_audio(espeak("en"))
    stop = time.monotonic() + seconds
    counts = [0] * n

    def run(i: int) -> None:
        avatar = Avatar(rig, lambda: (speech[(counts[i] * 640) % 300000:][:640], 16000), seed=i)
        next_at = time.monotonic()
        while next_at < stop:
            avatar.render()
            counts[i] += 1
            next_at += 1 / FPS
            late = time.monotonic() - next_at
            if late > 1 / FPS:
                next_at += int(late * FPS) / FPS
            time.sleep(max(0.0, next_at - time.monotonic()))

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(run, range(n)))
    return min(counts) / seconds


# --- 3-6: through WebRTC -----------------------------------------------------------------------
async def frames_sent(server: ServerProcess) -> float:
    """Video frames the server has sent so far, all sessions (its /metrics)."""
    async with aiohttp.ClientSession() as http:
        return (await get_metrics(http, server.url)).get("mms_frames_out_total{kind=video}", 0.0)


async def first_frame(server: ServerProcess, meter: MouthMeter) -> dict:
    client = StreamClient(server.url, ["talking_head"], {"talking_head": {"drive": "mic"}})
    client.keep_frames = 1
    t0 = time.monotonic()
    try:
        await client.connect(audio=ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True))
        deadline = t0 + 30
        while True:
            kept = client.received["video"]
            if kept and kept[-1][1].width == 512 and kept[-1][1].height == 512:
                arrived = kept[-1][0]
                break
            if time.monotonic() > deadline:
                raise RuntimeError("no avatar frame within 30 s")
            await asyncio.sleep(0.005)
        event = await client.next_event("talking_head", timeout=10)
    finally:
        await client.close()
    return {"client_ms": 1000 * (arrived - t0), "server_setup_ms": 1000 * event["t"]}


class light_viewers:
    """Viewers that count the video frames they receive without decoding them: the viewers share
    the server's cores, and decoding N streams of 512 x 512 VP8 would measure the viewers."""

    def __enter__(self):
        import aiortc.rtcrtpreceiver as receiver
        from av import VideoFrame

        class CountingDecoder:
            def decode(self, encoded_frame):
                frame = VideoFrame(16, 16, "yuv420p")
                frame.pts = encoded_frame.timestamp
                return [frame]

        self.receiver, self.real = receiver, receiver.get_decoder
        receiver.get_decoder = lambda codec: (CountingDecoder() if codec.mimeType.lower().startswith("video/")
                                              else self.real(codec))
        return self

    def __exit__(self, *exc):
        self.receiver.get_decoder = self.real


async def sustained(server: ServerProcess, n: int, duration: float) -> dict:
    speech = load_audio(espeak("en"))
    clients = [StreamClient(server.url, ["talking_head"], {"talking_head": {"drive": "mic"}}) for _ in range(n)]
    try:
        for client in clients:
            await client.connect(audio=ArrayAudioTrack(speech, 16000, loop=True))
        await asyncio.sleep(3.0)  # warm-up: encoders settle
        counts = [c.frame_counts["video"] for c in clients]
        sent, cpu, t0 = await frames_sent(server), server.cpu_seconds(), time.monotonic()
        load = os.getloadavg()[0]
        await asyncio.sleep(duration)
        wall = time.monotonic() - t0
        fps = [(c.frame_counts["video"] - k) / wall for c, k in zip(clients, counts)]
        return {"avatars": n, "fps_mean": statistics.mean(fps), "fps_min": min(fps),
                "server_sent_fps_per_avatar": (await frames_sent(server) - sent) / wall / n,
                "server_cpu_pct": 100 * (server.cpu_seconds() - cpu) / wall, "loadavg_1min": load}
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def audio_to_lip(server: ServerProcess, meter: MouthMeter, bursts: int = 8) -> list[float]:
    on, off = 0.6, 1.2
    clip = np.concatenate([np.zeros(int(1.5 * 16000), np.float32)] +
                          [np.concatenate([vowel(on), np.zeros(int(off * 16000), np.float32)]) for _ in range(bursts)])
    onsets = [int((1.5 + i * (on + off)) * 16000) for i in range(bursts)]
    track = StampedAudioTrack(clip, 16000)
    client = StreamClient(server.url, ["talking_head"], {"talking_head": {"drive": "mic"}})
    client.keep_frames = 2000
    try:
        await client.connect(audio=track)
        await asyncio.sleep(len(clip) / 16000 + 1.0)
        frames = [(t, f.to_ndarray(format="bgr24")) for t, f in client.received["video"]]
    finally:
        await client.close()
    latencies = []
    for onset in onsets:
        pts = onset - onset % track.step
        sent = track.sent_at.get(pts)
        if sent is None:
            continue
        opened = next((t for t, f in frames if t > sent - 0.2 and meter.open(f)), None)
        if opened is not None and opened - sent < on:
            latencies.append(1000 * (opened - sent))
    return latencies


async def translation_sync(server: ServerProcess, meter: MouthMeter, bursts: int = 5) -> list[float]:
    """Server-produced speech: pushed to the outbound track through the REST API drive (the same
    code path as translation: audio_out + play-clock lips). Received open mouth minus received sound."""
    from talking_head_client import AvatarClient

    api = AvatarClient(server.url)
    sid = (await api.create_session(chunk_duration=2.0))["session_id"]
    client = StreamClient(server.url, ["talking_head"], {"talking_head": {"drive": "api", "avatar_session": sid}})
    client.keep_frames = 2000
    offsets = []
    try:
        await client.connect()
        await client.next_event("talking_head", timeout=20)
        await asyncio.sleep(1.0)
        marks = []
        for _ in range(bursts):
            marks.append(time.monotonic())
            await api.feed_audio(sid, (vowel(0.6) * 32767).astype("<i2").tobytes())
            await asyncio.sleep(1.6)
        frames = [(t, f.to_ndarray(format="bgr24")) for t, f in client.received["video"]]
        audio = [(t, frame_level(f)) for t, f in client.received["audio"]]
    finally:
        await client.close()
        await api.delete_session(sid)
        await api.close()
    for mark in marks:
        heard = next((t for t, level in audio if t > mark and level > 0.05), None)
        seen = next((t for t, f in frames if t > mark and meter.open(f)), None)
        if heard is not None and seen is not None:
            offsets.append(1000 * (seen - heard))
    return offsets


async def main_async(args) -> dict:
    harness.loopback_only()
    rig = portrait_rig()
    meter = MouthMeter(rig)
    results: dict = {"loadavg_start": os.getloadavg(), "cpus": os.cpu_count()}
    results["render"] = bench_render(rig)
    results["render_only_fps"] = {n: bench_render_only(rig, n) for n in args.avatars}
    async with ServerProcess.script("talking_head", RESULTS / "talking_head-server.log", "--pipelines",
                                    "talking_head", "--max-sessions", "20") as server:
        results["first_frame_cold"] = await first_frame(server, meter)
        results["first_frame_warm"] = [await first_frame(server, meter) for _ in range(5)]
        results["audio_to_lip_ms"] = await audio_to_lip(server, meter)
        results["server_speech_sync_ms"] = await translation_sync(server, meter)
        if args.decode_video:
            results["sustained"] = [await sustained(server, n, args.duration) for n in args.avatars]
        else:
            with light_viewers():
                results["sustained"] = [await sustained(server, n, args.duration) for n in args.avatars]
        results["viewers_decode_video"] = args.decode_video
    results["loadavg_end"] = os.getloadavg()
    return results


def table(r: dict) -> str:
    warm = [f["client_ms"] for f in r["first_frame_warm"]]
    warm_server = [f["server_setup_ms"] for f in r["first_frame_warm"]]
    lat = r["audio_to_lip_ms"]
    sync = r["server_speech_sync_ms"]
    measures = [
        ["render, cv2 path, 512x512",
         f"{r['render']['cv2_ms_median']:.2f} ms/frame median, {r['render']['cv2_ms_p95']:.2f} ms p95"],
        ["render, torch grid_sample batch of 8 on CPU tensors",
         f"{r['render']['torch_cpu_batch8_ms_per_frame']:.2f} ms/frame"],
        ["start to first avatar frame, first session (models load)",
         f"{r['first_frame_cold']['client_ms']:.0f} ms (server part {r['first_frame_cold']['server_setup_ms']:.0f} ms)"],
        ["start to first avatar frame, later sessions",
         f"median {statistics.median(warm):.0f} ms, max {max(warm):.0f} ms "
         f"(server part median {statistics.median(warm_server):.0f} ms)"],
        [f"audio to lip through WebRTC, drive mic ({len(lat)} onsets)",
         f"median {statistics.median(lat):.0f} ms, min {min(lat):.0f}, max {max(lat):.0f}" if lat else "n/a"],
        [f"lips vs sound of server-played speech, received ({len(sync)} onsets; + = lips later)",
         f"median {statistics.median(sync):+.0f} ms, range {min(sync):+.0f} .. {max(sync):+.0f}" if sync else "n/a"],
    ]
    levels = [[str(s["avatars"]), f"{r['render_only_fps'][s['avatars']]:.1f}", f"{s['fps_mean']:.1f} / {s['fps_min']:.1f}",
               f"{s['server_sent_fps_per_avatar']:.1f}", f"{s['server_cpu_pct']:.0f}%",
               f"{10 * s['server_cpu_pct'] / max(0.1, s['server_sent_fps_per_avatar'] * s['avatars']):.1f}",
               f"{s['loadavg_1min']:.1f}"] for s in r["sustained"]]
    return "\n".join([
        f"Machine: {r['cpus']} CPU cores shared with other work; load average (1/5/15 min) "
        f"{' / '.join(f'{x:.1f}' for x in r['loadavg_start'])} at the start, "
        f"{' / '.join(f'{x:.1f}' for x in r['loadavg_end'])} at the end.",
        "",
        markdown_table(["measure", "value"], measures),
        "",
        f"WebRTC viewers {'decode' if r['viewers_decode_video'] else 'count without decoding'} the video they receive.",
        "",
        markdown_table(["avatars", "render only: fps per avatar (worst)", "WebRTC: received fps mean / worst",
                        "server sent fps per avatar", "server CPU (% of a core)", "server CPU ms / sent frame",
                        "load avg"], levels),
    ])


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_load_flags(parser, "1,4,8,16", 8.0, levels_flag="--avatars", levels_help="comma-separated avatar counts")
    parser.add_argument("--decode-video", action="store_true",
                        help="viewers decode the VP8 they receive (default: they only count frames)")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    harness.publish("talking_head", table(results), results)


if __name__ == "__main__":
    main()
