#!/usr/bin/env python3
"""Sessions per server core: our server (``gender``) and ``bench/echo_server.py`` (a bare aiortc
echo, ``--transform none``) side by side, measured on the server, not on its clients.

* The server runs pinned to one core (``taskset -c <--server-cpu>``), this process and its clients
  to another (``--client-cpu``), so the two never compete for a core.
* The clients are cheap: they send a VP8 stream encoded once with PyAV (``bench/results/
  capacity-WxH.ivf``, a camera-like clip: the astronaut photo panning, with sensor noise) and
  speech encoded once to Opus, as packets, without encoding anything per session (aiortc's sender
  packs an ``av.Packet`` as it is, as it does for ``MediaPlayer(path, decode=False)``), in packets
  as long as the server's answer asks (``a=ptime``, as browsers follow it; ``--audio-ptime 20``:
  always 20 ms); and they do
  not decode what comes back beyond what is needed to count it and check it: returned VP8 frames
  are counted, the size read from each keyframe's header, and the first frames of each session
  decoded to check they are pictures of that size; returned audio is counted, not decoded.
* Sessions are added step by step (``--sessions 1,2,4,...``, bounded) to one running server; at
  each step, after a warm-up, a ``--duration`` window measures the server's CPU (psutil, % of one
  core), the video each client receives (fps), the server's event-loop lag (its Prometheus
  histogram, over the window) and, for the sessions just added, the time from the speech onset
  they sent to their first ``gender`` event. A step holds real time when every session receives
  >= 24 fps, the loop lag p99 is < 50 ms and (ours) every new session's onset -> gender is
  < 1.5 s; the first step that does not ends that server's run. Sessions per core = the largest
  step held (the server has one core).
* ``--codec`` first measures the levers of the returned video's encoder one by one: aiortc's VP8
  settings against those in ``media/codecs.py`` on the same clip: encoder CPU time per frame and
  PSNR of the decoded frames against the input.

The machine may be shared: ``uptime`` and a speed probe (``speed_probe``: CPU time of a fixed
VP8 encode on the server's core) are noted before each server's run; compare ratios measured in
one run, where the probes agree. Prints markdown tables and writes them to
``bench/results/capacity.md`` (raw numbers in ``capacity.json``); server logs in
``bench/results/capacity-<server>.log``. Everything stays on 127.0.0.1; every wait is bounded and
the servers are always stopped.

    .venv/bin/python bench/capacity.py [--sessions 1,2,4,6,8,12,16] [--size 320x240] [--codec]
"""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench import harness  # noqa: E402
from bench.codec_levers import FPS, VIDEO_CLOCK, camera_clip, codec_levers  # noqa: E402
from bench.harness import RESULTS, ROOT, get_metrics, hist_delta, hist_quantile  # noqa: E402
from bench.packet_media import PacketTrack, opus_packets, speech_track  # noqa: E402
from bench.session_clients import Session, close_session, make_speech, start_session  # noqa: E402
from client import StreamClient  # noqa: E402
from testing.server import ServerProcess  # noqa: E402

REAL_TIME = {"fps": 24.0, "lag_p99_s": 0.05, "onset_gender_s": 1.5}


# --- media, made once ----------------------------------------------------------------------------
def vp8_file(width: int, height: int, seconds: int = 10, bitrate: int = 400_000) -> Path:
    """The camera clip as a VP8 .ivf a browser might send (a keyframe every 2 s), made once."""
    path = RESULTS / f"capacity-{width}x{height}.ivf"
    if path.exists():
        return path
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="ivf") as out:
        stream = out.add_stream("libvpx", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bitrate
        stream.codec_context.gop_size = 2 * FPS
        stream.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        for i, img in enumerate(camera_clip(width, height, seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


def read_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as f:
        return [bytes(p) for p in f.demux(video=0) if p.size]


# --- cheap receiving -----------------------------------------------------------------------------
class Received:
    """What a counting decoder hands the track instead of a decoded frame (the client counts it)."""

    __slots__ = ()


RECEIVED = Received()


class CountingVp8Decoder:
    """Counts returned VP8 frames, reads the size of each keyframe from its header, and decodes
    only the first ``check`` frames (from the first keyframe) to check they are pictures."""

    all: list["CountingVp8Decoder"] = []
    check = 10

    def __init__(self):
        self.codec = av.CodecContext.create("libvpx", "r")
        self.frames = 0
        self.bytes = 0
        self.keyframe_size: tuple[int, int] | None = None
        self.checked: list[tuple[int, int]] = []  # sizes of the frames decoded
        self.errors = 0
        CountingVp8Decoder.all.append(self)

    def decode(self, encoded_frame) -> list:
        data = encoded_frame.data
        self.frames += 1
        self.bytes += len(data)
        if len(data) >= 10 and not data[0] & 1 and data[3:6] == b"\x9d\x01\x2a":  # a keyframe
            self.keyframe_size = (int.from_bytes(data[6:8], "little") & 0x3FFF,
                                  int.from_bytes(data[8:10], "little") & 0x3FFF)
        if self.keyframe_size and len(self.checked) < self.check:
            try:
                self.checked += [(f.width, f.height) for f in self.codec.decode(av.Packet(data))]
            except av.FFmpegError:
                self.errors += 1
        return [RECEIVED]


class CountingDecoder:
    def decode(self, encoded_frame) -> list:
        return [RECEIVED]


def cheap_receivers() -> None:
    """This process's aiortc receivers count returned media instead of decoding all of it."""
    from aiortc import rtcrtpreceiver

    def get_decoder(codec):
        return CountingVp8Decoder() if codec.mimeType.lower() == "video/vp8" else CountingDecoder()

    rtcrtpreceiver.get_decoder = get_decoder


# --- one server, sessions added step by step ------------------------------------------------------
async def open_session(kind: str, index: int, url: str, video: list[bytes], audio: dict[int, list[bytes]],
                       onset_sample: int, timeout: float) -> Session:
    """``audio``: the speech as Opus packets of each length (ms) a server may ask for
    (``speech_track``)."""
    client = StreamClient(url, pipelines=["gender"], options={"gender": {"overlay": False}} if kind == "relay" else None)
    track = speech_track(client, audio, onset_sample)
    return await start_session(Session(index, client, track,
                                       PacketTrack("video", video, VIDEO_CLOCK, VIDEO_CLOCK // FPS)), timeout)


def lag_stats(m0: dict, m1: dict) -> tuple[float | None, float | None]:
    """(p99 estimate in ms, share of samples over 50 ms) of the loop-lag histogram over a window."""
    cum = hist_delta(m0, m1, "mms_event_loop_lag_seconds")
    total = cum.get("+Inf", 0)
    if not total:
        return None, None
    p99 = hist_quantile(cum, 0.99)
    return (None if p99 is None else p99 * 1000), 1 - cum.get("0.05", 0) / total


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def speed_probe(cpu: int, frames: list[np.ndarray]) -> float:
    """CPU milliseconds of a fixed piece of work on core ``cpu``: a VP8 encode of the clip's frames
    (as the servers do) and some Python. A shared machine's speed drifts (the same run half an
    hour apart cost 30% more for ours and the echo alike): the probe before each server's run says
    whether the two ran on the same machine, so to speak."""
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt, codec.bit_rate = frames[0].shape[1], frames[0].shape[0], "yuv420p", 500_000
        codec.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0"}
        t0 = time.thread_time()
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            codec.encode(frame)
        total = sum(i * i for i in range(300_000))
        assert total
        return round((time.thread_time() - t0) * 1000, 1)
    finally:
        os.sched_setaffinity(0, mine)


def server_process(kind: str, log_path: Path, args) -> ServerProcess:
    """``kind``'s server (SERVERS), pinned to the server's core; not started."""
    if kind != "echo":
        server = ServerProcess.script(kind, log_path, "--max-sessions", "256", "--pipelines", "gender",
                                      "--load-threshold", "0",  # no shedding: this measures where real time ends
                                      log_level=args.server_log_level)
    else:
        server = ServerProcess.script(kind, log_path, "--transform", "none", "--encoder", args.echo_encoder,
                                      script=ROOT / "bench" / "echo_server.py", log_level=args.server_log_level)
    server.argv = ["taskset", "-c", str(args.server_cpu), *server.argv]
    return server


async def run_server(kind: str, args, video: list[bytes], audio: dict[int, list[bytes]], onset_sample: int,
                     probe_frames: list[np.ndarray]) -> dict:
    log_path = RESULTS / f"capacity-{kind}.log"
    server = server_process(kind, log_path, args)
    run = {"server": kind, "uptime": uptime(), "probe_ms": speed_probe(args.server_cpu, probe_frames),
           "steps": [], "log": str(harness.shown(log_path))}
    print(f"{kind}: {run['uptime']}; speed probe {run['probe_ms']} ms", flush=True)
    sessions: list[Session] = []
    me = psutil.Process()
    async with aiohttp.ClientSession() as http:
        try:
            server.start()
            await server.wait_healthy(http, args.start_timeout)
            await asyncio.sleep(1.0)  # model preloading (ours)
            for n in args.sessions:
                added = await asyncio.gather(*(open_session(kind, i, server.url, video, audio, onset_sample, args.connect_timeout)
                                               for i in range(len(sessions), n)))
                sessions += added
                live = [s for s in sessions if s.ok]
                deadline = time.monotonic() + args.first_frame_timeout
                while time.monotonic() < deadline and any(s.client.frame_counts["video"] == 0 for s in live):
                    await asyncio.sleep(0.2)
                await asyncio.sleep(args.warmup)
                m0 = await get_metrics(http, server.url)
                t0, cpu0, me0 = time.monotonic(), server.cpu_seconds(), me.cpu_times()
                frames0 = [s.client.frame_counts["video"] for s in live]
                bytes0 = sum(d.bytes for d in CountingVp8Decoder.all)
                await asyncio.sleep(args.duration)
                t1, cpu1, me1 = time.monotonic(), server.cpu_seconds(), me.cpu_times()
                bytes1 = sum(d.bytes for d in CountingVp8Decoder.all)
                frames1 = [s.client.frame_counts["video"] for s in live]
                m1 = await get_metrics(http, server.url)
                window = t1 - t0
                fps = [(b - a) / window for a, b in zip(frames0, frames1)]
                p99, over = lag_stats(m0, m1)
                new = [s for s in added if s.ok]
                onsets = [(s.first_gender - s.onset) if s.first_gender and s.onset else None for s in new]
                behind = [b for s in live if (b := s.audio.behind_s()) is not None]
                step = {
                    "sessions": n, "connected": len(live), "window_s": round(window, 2),
                    "cpu_pct": round((cpu1 - cpu0) / window * 100, 1),
                    "cpu_pct_per_session": round((cpu1 - cpu0) / window * 100 / max(1, len(live)), 2),
                    "video_kbps_per_session": round((bytes1 - bytes0) * 8 / window / 1000 / max(1, len(live))),
                    "fps_mean": round(statistics.fmean(fps), 2) if fps else 0.0,
                    "fps_min": round(min(fps), 2) if fps else 0.0,
                    "lag_p99_ms": None if p99 is None else round(p99, 1), "lag_over_50ms": over,
                    "onset_gender_s": [None if o is None else round(o, 3) for o in onsets],
                    "client_cpu_pct": round((me1.user + me1.system - me0.user - me0.system) / window * 100, 1),
                    "client_send_behind_s": round(max(behind), 3) if behind else None,
                    "connect_errors": [s.error for s in added if not s.ok],
                }
                step["held"] = held = (
                    len(live) == n and step["fps_min"] >= REAL_TIME["fps"]
                    and over is not None and over < 0.01
                    and (kind == "echo" or all(o is not None and o < REAL_TIME["onset_gender_s"] for o in onsets)))
                run["steps"].append(step)
                print(f"  {n:>3} sessions: cpu {step['cpu_pct']:5.1f}% ({step['cpu_pct_per_session']:.1f}/session) "
                      f"fps {step['fps_mean']:.1f}/{step['fps_min']:.1f} {step['video_kbps_per_session']} kbps lag p99 {step['lag_p99_ms']} ms "
                      f"onset->gender {max((o for o in onsets if o is not None), default=None)} "
                      f"client cpu {step['client_cpu_pct']}% {'held' if held else 'NOT held'} "
                      f"{'; '.join(step['connect_errors'])}", flush=True)
                if not held:
                    break
        finally:
            sizes = {d.keyframe_size for d in CountingVp8Decoder.all if d.keyframe_size}
            run["returned_sizes"] = sorted(sizes)
            run["checked_frames"] = sum(len(d.checked) for d in CountingVp8Decoder.all)
            run["checked_sizes"] = sorted({s for d in CountingVp8Decoder.all for s in d.checked[-1:]})
            run["decode_errors"] = sum(d.errors for d in CountingVp8Decoder.all)
            CountingVp8Decoder.all.clear()
            await asyncio.gather(*(close_session(s) for s in sessions))
            await server.stop()
    held = [s["sessions"] for s in run["steps"] if s["held"]]
    run["sessions_per_core"] = max(held, default=0)
    return run


# --- report -----------------------------------------------------------------------------------------
def report(runs: dict, codec: dict | None, args) -> str:
    out = [f"# Capacity: sessions per server core ({args.size}, {harness.git_commit()})", ""]
    if codec:
        out += ["## The returned video's VP8 encoder, lever by lever (same clip, one thread)", "",
                harness.markdown_table(
                    ["size", "target kbps", "encoder", "sent kbps", "CPU ms/frame", "vs aiortc", "PSNR dB",
                     "vs aiortc dB"],
                    [[r["size"], str(r["kbps"]), r["encoder"], str(r["sent_kbps"]), f"{r['cpu_ms']:.2f}",
                      f"{r['cpu_vs_aiortc']:.2f}",
                      f"{r['psnr_db']:.2f}", f"{r['psnr_vs_aiortc_db']:+.2f}"] for r in codec["rows"]]), ""]
    if not runs:
        return "\n".join(out)
    by_n: dict[int, dict] = {}
    for kind, run in runs.items():
        for step in run["steps"]:
            by_n.setdefault(step["sessions"], {})[kind] = step

    def cell(step, key, fmt="{}"):
        return "-" if step is None or step.get(key) is None else fmt.format(step[key])

    kinds = list(runs)
    ours = [k for k in kinds if k != "echo"]

    def ratio(step, echo):
        return (f"{step['cpu_pct_per_session'] / echo['cpu_pct_per_session']:.2f}"
                if step and echo and echo["cpu_pct_per_session"] else "-")

    def each(steps, key, fmt):
        return " / ".join(cell(step, key, fmt) for step in steps)

    rows = []
    for n in sorted(by_n):
        steps = [by_n[n].get(k) for k in kinds]
        onsets = [[x for x in step["onset_gender_s"] if x is not None] if step else [] for step, k in zip(steps, kinds)
                  if k != "echo"]
        rows.append([str(n), *(cell(step, "cpu_pct_per_session", "{:.1f}") for step in steps),
                     *(ratio(by_n[n].get(k), by_n[n].get("echo")) for k in ours if "echo" in kinds),
                     each(steps, "fps_min", "{:.1f}"), each(steps, "lag_p99_ms", "{:.0f}"),
                     " / ".join(f"{max(v):.2f}" if v else "-" for v in onsets),
                     each(steps, "client_cpu_pct", "{:.0f}"),
                     " / ".join("-" if step is None else "yes" if step["held"] else "no" for step in steps)])
    both = " / ".join(kinds)
    out += ["## Sessions on one server core", "",
            f"Servers: {', '.join(f'**{k}**: {SERVERS[k]}' for k in kinds)}.", "",
            harness.markdown_table(["sessions", *(f"{k} CPU %/session" for k in kinds),
                                    *(f"ratio {k} / echo" for k in ours if "echo" in kinds),
                                    f"fps min ({both})", "loop lag p99 ms", f"onset→gender s (max, new; {' / '.join(ours)})",
                                    f"client core % ({both})", f"real time ({both})"], rows), ""]
    spc = {k: r["sessions_per_core"] for k, r in runs.items()}
    out += [harness.markdown_table(["server", "sessions per core", "returned video sizes", "load before its run",
                                    "speed probe before its run (ms, lower is faster)"],
                                   [[k, str(r["sessions_per_core"]),
                                     ", ".join(f"{w}x{h}" for w, h in r["returned_sizes"]) or "-",
                                     r["uptime"].split("load average:")[-1].strip(), str(r["probe_ms"])]
                                    for k, r in runs.items()]), ""]
    for k in ours:
        if spc.get("echo") and k in spc:
            out.append(f"Sessions per core, {k} / echo: **{spc[k] / spc['echo']:.2f}x** "
                       f"(held: every session >= {REAL_TIME['fps']:.0f} fps, loop lag p99 < 50 ms, "
                       f"ours: onset → gender < {REAL_TIME['onset_gender_s']} s).")
    return "\n".join(out)


def client_media(args, packet_ms: tuple[int, ...] = (20, 40, 60)) -> tuple[list[bytes], dict[int, list[bytes]], int]:
    """This process set up for the cheap clients (loopback only, counting receivers, on its own
    core), and their media: the camera's VP8 frames, the speech as Opus packets of each length in
    ``packet_ms`` (those a server may ask for), and the speech's onset sample."""
    harness.loopback_only()
    cheap_receivers()
    os.sched_setaffinity(0, {args.client_cpu})
    w, h = (int(x) for x in args.size.split("x"))
    speech, onset_sample = make_speech(args.voice, args.lead_in)
    return read_packets(vp8_file(w, h)), {ms: opus_packets(speech, ms) for ms in packet_ms}, onset_sample


async def main_async(args) -> None:
    # Opus packets of each length a server may ask for (--audio-ptime answer), or 20 ms only
    video, audio, onset_sample = client_media(args, (20, 40, 60) if args.audio_ptime == "answer" else (20,))
    w, h = (int(x) for x in args.size.split("x"))
    codec = codec_levers([(320, 240), (640, 480)], [500_000, 1_500_000]) if args.codec else None
    probe_frames = camera_clip(w, h, 2 * FPS)
    runs = {}
    for kind in args.servers:
        runs[kind] = await run_server(kind, args, video, audio, onset_sample, probe_frames)
    harness.publish("capacity", report(runs, codec, args), {"args": vars(args), "runs": runs, "codec": codec})


SERVERS = {
    "ours": "this server, gender (its badge drawn on the returned video)",
    "relay": "this server, gender with overlay off (nothing drawn: the camera's frames relayed, tracks/relay.py)",
    "echo": "bench/echo_server.py, a bare aiortc echo",
}


def servers(text: str) -> list[str]:
    kinds = [k for k in text.split(",") if k]
    if set(kinds) - set(SERVERS):
        raise ValueError(f"servers are {', '.join(SERVERS)}, not {text!r}")
    return kinds


def add_server_flags(p, warmup: float) -> None:
    """The flags of the servers (``server_process``) and the cheap clients (``client_media``)."""
    p.add_argument("--size", default="320x240", help="the clients' camera size (default 320x240)")
    p.add_argument("--echo-encoder", choices=("aiortc", "ours"), default="aiortc",
                   help="the echo's VP8 settings: aiortc's (the baseline), or ours (media/codecs.py)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--warmup", type=float, default=warmup)
    p.add_argument("--voice", default="en")
    p.add_argument("--lead-in", type=float, default=1.0)
    p.add_argument("--connect-timeout", type=float, default=40.0)
    p.add_argument("--start-timeout", type=float, default=90.0)
    p.add_argument("--server-log-level", default="WARNING")


def run(main_async, args) -> None:
    """``main_async(args)``, and whatever servers it started stopped, however it ends."""
    try:
        asyncio.run(main_async(args))
    finally:
        from testing.server import kill_children
        kill_children()


def main() -> None:
    p = harness.parser(__doc__)
    harness.add_load_flags(p, "1,2,4,6,8,10,12,16,20,24", 8.0, levels_help="session counts, stepped up")
    add_server_flags(p, warmup=3.0)
    p.add_argument("--servers", type=servers, default=["ours", "echo"],
                   help="which servers to step up, in order, of ours, relay and echo (default ours,echo; '' for none)")
    p.add_argument("--codec", action="store_true", help="first measure the VP8 encoder's levers")
    p.add_argument("--audio-ptime", choices=("answer", "20"), default="answer",
                   help="the clients' audio packets: as long as the answer's a=ptime asks (as browsers "
                        "send them; default), or always 20 ms")
    p.add_argument("--first-frame-timeout", type=float, default=15.0)
    run(main_async, p.parse_args())


if __name__ == "__main__":
    main()
