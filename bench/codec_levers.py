"""The returned video's encoder, lever by lever (``bench/capacity.py --codec``): aiortc's VP8
settings against those of ``media/codecs.py`` on the same camera-like clip, as encoder CPU time
per frame and PSNR of the decoded frames against the input."""
from __future__ import annotations

import fractions
import time

import av
import cv2
import numpy as np

from testing.images import astronaut

FPS = 25
VIDEO_CLOCK = 90000


def camera_clip(width: int, height: int, frames: int, noise: float = 2.0, seed: int = 0) -> list[np.ndarray]:
    """A camera-like BGR clip: the astronaut photo panning slowly, with sensor noise."""
    rng = np.random.default_rng(seed)
    big = cv2.resize(astronaut(), (width * 3 // 2, height * 3 // 2))
    out = []
    for i in range(frames):
        x = int(width / 2 * (0.5 + 0.5 * np.sin(i / 40)))
        y = int(height / 2 * (0.5 + 0.5 * np.cos(i / 55)))
        f = big[y:y + height, x:x + width].astype(np.int16) + rng.normal(0, noise, (height, width, 3)).astype(np.int16)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * np.log10(255 ** 2 / mse) if mse else 99.0


def encode_clip(frames: list[np.ndarray], make_encoder, bitrate: int) -> tuple[float, float]:
    """(encoder CPU ms per frame, mean PSNR dB of the decoded frames against the input from the
    second second on, kbps produced) for an aiortc-style encoder given a target bitrate (as the
    receiver's estimate sets it)."""
    from aiortc.codecs.vpx import vp8_depayload

    encoder = make_encoder()
    encoder.target_bitrate = bitrate
    decoder = av.CodecContext.create("libvpx", "r")
    yuv = [av.VideoFrame.from_ndarray(f, format="bgr24").reformat(format="yuv420p") for f in frames]
    cpu, scores, size = 0.0, [], 0
    for i, frame in enumerate(yuv):
        frame.pts, frame.time_base = i * VIDEO_CLOCK // FPS, fractions.Fraction(1, VIDEO_CLOCK)
        t = time.thread_time()
        payloads, _ = encoder.encode(frame)
        cpu += time.thread_time() - t
        data = b"".join(vp8_depayload(p) for p in payloads)
        size += len(data)
        for out in decoder.decode(av.Packet(data)):
            if i >= FPS:
                scores.append(psnr(out.to_ndarray(format="bgr24"), frames[i]))
    return cpu / len(frames) * 1000, float(np.mean(scores)), size * 8 / (len(frames) / FPS) / 1000


def codec_levers(sizes: list[tuple[int, int]], bitrates: list[int]) -> dict:
    from aiortc.codecs.vpx import Vp8Encoder

    from media import codecs

    def ours(options):  # these options, no bitrate cap
        return type("Encoder", (codecs.RealtimeVp8Encoder,), {"options": options, "cap_bitrate": False})

    variants = [
        ("aiortc (cpu-used -6, noise-sensitivity 4)", Vp8Encoder),
        ("denoiser off (noise-sensitivity 0)", ours({"noise-sensitivity": "0"})),
        ("cpu-used -12", ours({"cpu-used": "-12"})),
        ("cpu-used -16", ours({"cpu-used": "-16"})),
        ("static-thresh 1200", ours({"static-thresh": "1200"})),
        ("all three: " + ", ".join(f"{k} {v}" for k, v in codecs.OPTIONS.items()), ours(codecs.OPTIONS)),
        ("all three, bitrate capped by size (media/codecs.py)", codecs.RealtimeVp8Encoder),
    ]
    rows = []
    for w, h in sizes:
        frames = camera_clip(w, h, 6 * FPS)
        for bitrate in bitrates:
            base = None
            for name, make in variants:
                ms, db, kbps = encode_clip(frames, make, bitrate)
                base = base or (ms, db)
                rows.append({"size": f"{w}x{h}", "kbps": bitrate // 1000, "encoder": name, "cpu_ms": round(ms, 2),
                             "sent_kbps": round(kbps),
                             "cpu_vs_aiortc": round(ms / base[0], 2), "psnr_db": round(db, 2),
                             "psnr_vs_aiortc_db": round(db - base[1], 2)})
                print(f"  {w}x{h} {bitrate // 1000} kbps {name}: {ms:.2f} ms/frame, {db:.2f} dB, {kbps:.0f} kbps",
                      flush=True)
    return {"rows": rows}
