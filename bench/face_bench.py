#!/usr/bin/env python3
"""Face detection by face size and frame size (a script, not a test): recall and CPU per frame,
before (a scan of the frame at 480 px wide; tracked faces scaled at most 2x) and after
(``pipelines.common.faces.FaceDetector``: the same scan, then one tile of an upscaled sweep per
frame without a face, the caller counting its misses as the emotion pipeline does).

Faces (the detector's box, so "40 px" is a 40 px box) pasted with head and shoulders
(``testing.images.face_scene``) into frames from 160x120 to 1280x720: the astronaut photo and its
mirror image, at three places, over three backgrounds (grey, scikit-image's ``brick`` and
``coffee``); and the first 10 faces of scikit-image's ``lfw_subset`` that dlib finds at 120 px
(25 px photos, so blurred when enlarged), on grey. Sizes whose head and shoulders do not fit the
frame are left out.

* recall, before: the scan finds the face (the box's centre inside the true box, its size within
  a factor 1.5). After: on the first frame, and within one sweep (one frame per tile).
* frames to find: mean (max) frames until found, of the faces found.
* ms/frame: the first frame (a scan) before; each frame while searching after (scan + one tile,
  mean over the frames until found); once found, a tracked frame (the region around the last
  box), before and after. A frame with no face at all: the "none" rows (mean over a whole sweep).

    .venv/bin/python bench/face_bench.py [--sizes 40,60,80,120,200] [--frames 160x120,320x240,640x480,1280x720]
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench.harness import int_list, markdown_table, parser, publish  # noqa: E402
from pipelines.common.faces import FaceDetector  # noqa: E402
from testing.images import face_scene  # noqa: E402


class Before(FaceDetector):
    """The detector as it was: the scan only, tracked faces scaled at most 2x."""

    def largest(self, gray, near=None, attempt=0):
        if near is not None:
            x, y, w, h = near
            pad = int(0.6 * max(w, h))
            x0, y0 = max(0, x - pad), max(0, y - pad)
            box = self._largest(gray[y0:y + h + pad, x0:x + w + pad], min(2.0, self.track_size / max(w, h, 1)), x0, y0)
            if box is not None:
                return box
        return self._largest(gray, self.scan_scale(gray.shape[1]), 0, 0)


def lfw_sources(detector: FaceDetector, n: int = 10) -> list[tuple[np.ndarray, tuple]]:
    """LFW faces enlarged to 120 px on grey, with dlib's box: the first ``n`` it finds."""
    from skimage import data

    sources = []
    for face in data.lfw_subset()[:100]:
        canvas = np.full((300, 300), 110, np.uint8)
        canvas[90:210, 90:210] = cv2.resize((face * 255).astype(np.uint8), (120, 120), interpolation=cv2.INTER_CUBIC)
        found = detector.faces(canvas)
        if found:
            sources.append((canvas, found[0][0]))
        if len(sources) == n:
            break
    return sources


def cases(width: int, height: int, face: int, lfw) -> list[tuple[np.ndarray, tuple]]:
    from skimage import data

    backgrounds = [None, data.brick(), np.ascontiguousarray(data.coffee()[:, :, ::-1])]
    places = [(0.5, 0.45), (0.25, 0.4), (0.72, 0.55)]
    scenes = [face_scene(width, height, face, place, bg, mirror=mirror)
              for bg in backgrounds for place in places for mirror in (False, True)]
    return scenes + [face_scene(width, height, face, source=source) for source in lfw]


def hit(box, truth) -> bool:
    if box is None:
        return False
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    x, y, w, h = truth
    return x <= cx <= x + w and y <= cy <= y + h and 1 / 1.5 <= box[2] / w <= 1.5


def timed(fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    return result, (time.perf_counter() - t0) * 1000


def tracked_ms(detector, gray, box, repeats: int = 5) -> float | None:
    times = []
    for _ in range(repeats):
        box, ms = timed(detector.largest, gray, box)
        if box is None:
            return None
        times.append(ms)
    return statistics.median(times)


def bench_cell(before: Before, after: FaceDetector, width: int, height: int, face: int, lfw) -> dict:
    tiles = len(after.sweep(width, height))
    r = {"frame": f"{width}x{height}", "face": face, "n": 0, "before": 0, "first": 0, "sweep": 0,
         "frames": [], "before_ms": [], "search_ms": [], "track_before_ms": [], "track_after_ms": []}
    for frame, truth in cases(width, height, face, lfw):
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        r["n"] += 1
        box, ms = timed(before.largest, gray)
        r["before_ms"].append(ms)
        if hit(box, truth):
            r["before"] += 1
            track = tracked_ms(before, gray, box)
            if track is not None:
                r["track_before_ms"].append(track)
        for attempt in range(max(1, tiles)):
            box, ms = timed(after.largest, gray, None, attempt)
            r["search_ms"].append(ms)
            if hit(box, truth):
                r["first"] += attempt == 0
                r["sweep"] += 1
                r["frames"].append(attempt + 1)
                track = tracked_ms(after, gray, box)
                if track is not None:
                    r["track_after_ms"].append(track)
                break
    return r


def bench_empty(before: Before, after: FaceDetector, width: int, height: int) -> dict:
    """A room with no face (the coffee picture): cost per frame over a whole sweep, false finds."""
    from skimage import data

    gray = cv2.cvtColor(cv2.resize(np.ascontiguousarray(data.coffee()[:, :, ::-1]), (width, height)),
                        cv2.COLOR_BGR2GRAY)
    tiles = max(1, len(after.sweep(width, height)))
    b = [timed(before.largest, gray) for _ in range(tiles)]
    a = [timed(after.largest, gray, None, attempt) for attempt in range(tiles)]
    return {"frame": f"{width}x{height}", "tiles": tiles, "before_ms": statistics.mean(ms for _, ms in b),
            "after_ms": statistics.mean(ms for _, ms in a), "after_max_ms": max(ms for _, ms in a),
            "false_before": sum(box is not None for box, _ in b), "false_after": sum(box is not None for box, _ in a)}


def fmt(values, digits: int = 1) -> str:
    return f"{statistics.mean(values):.{digits}f}" if values else "–"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int_list, default=int_list("40,60,80,120,200"))
    p.add_argument("--frames", default="160x120,320x240,640x480,1280x720")
    args = p.parse_args()
    cv2.setNumThreads(1)
    before, after = Before(), FaceDetector()
    lfw = lfw_sources(after)
    rows, data = [], {"cells": [], "empty": [], "load": os.getloadavg()}
    for spec in args.frames.split(","):
        width, height = (int(v) for v in spec.split("x"))
        for face in args.sizes:
            if face * 1.6 > height:
                continue
            r = bench_cell(before, after, width, height, face, lfw)
            data["cells"].append(r)
            frames = f"{fmt(r['frames'])} ({max(r['frames'])})" if r["frames"] else "–"
            rows.append([r["frame"], str(face), str(r["n"]), f"{100 * r['before'] / r['n']:.0f}%",
                         f"{100 * r['first'] / r['n']:.0f}%", f"{100 * r['sweep'] / r['n']:.0f}%", frames,
                         fmt(r["before_ms"]), fmt(r["search_ms"]), fmt(r["track_before_ms"]),
                         fmt(r["track_after_ms"])])
            print(" | ".join(rows[-1]), flush=True)
        e = bench_empty(before, after, width, height)
        data["empty"].append(e)
        rows.append([e["frame"], "none", str(e["tiles"]), f"{e['false_before']} false",
                     "", f"{e['false_after']} false", "", f"{e['before_ms']:.1f}",
                     f"{e['after_ms']:.1f} (max {e['after_max_ms']:.1f})", "", ""])
        print(" | ".join(rows[-1]), flush=True)
    header = ["frame", "face px", "n", "recall before", "after: 1st frame", "after: one sweep",
              "frames to find", "ms/frame before", "ms/frame searching after", "ms tracked before",
              "ms tracked after"]
    load = " ".join(f"{v:.2f}" for v in data["load"])
    publish("faces", markdown_table(header, rows) + f"\n\nload average at the start: {load}", data)


if __name__ == "__main__":
    main()
