"""Faces of every size with dlib's HOG frontal-face detector (built into the dlib wheel).

dlib slides an 80 px window over an image pyramid that only shrinks, so in the image it is given it
finds faces of about 80 px and up. ``FaceDetector`` finds faces from ``min_face`` (40) px in
frames of any size, cheapest pass first:

* **track** (``near``: the face's last box): only a region around it, scaled so the face is
  ~100 px. A fraction of a scan's cost, for faces of any size: the steady state.
* **scan**: the whole frame scaled down to ``detect_width`` (480) px wide, as before: faces from
  ~80 px in the scaled frame (~105 px in 640x480, ~215 px in 1280x720).
* **sweep**, only when track and scan found nothing: the faces the scan is too coarse for, one
  tile per call. The tiles cover the frame at scales halving from the one that makes a
  ``min_face`` face 88 px down to the scan's (coarse levels first), each scaled tile at most
  ``sweep_pixels`` (400k px: a 320x240 frame is one tile), overlapping so that every face of a
  level's sizes lies whole in some tile. ``attempt`` (frames without a face so far) picks the
  tile, so a caller that counts its misses cycles through them all: a small face is found
  within a sweep (1 frame at 320x240, 8 at 640x480, 32 at 1280x720), and a frame without a face
  costs a scan plus one tile, never the whole upscaled frame at once.

A frame with a large face costs what it did before (scan, then track). Of several faces found in
one pass, the largest is chosen among those the detector scores at least half as high as the best.
"""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height in the frame's pixels

WINDOW = 80  # px: dlib's frontal face detector's smallest face
TARGET = 88  # px a face is scaled to, with a margin over the window
RELATIVE_SCORE = 0.5  # of the best detection's score: the least a face needs to be chosen for its size


class FaceDetector:
    track_size = 100  # px the tracked face is scaled to

    def __init__(self, detect_width: int = 480, min_face: int = 40, sweep_pixels: int = 400_000):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.detect_width = detect_width
        self.min_face = min_face
        self.sweep_pixels = sweep_pixels

    def largest(self, gray: np.ndarray, near: Box | None = None, attempt: int = 0) -> Box | None:
        """The largest face's box in ``gray``'s pixels, or None. ``near``: the face's last box;
        ``attempt``: how many calls in a row found no face (picks the sweep's tile)."""
        if near is not None:
            x, y, w, h = near
            pad = int(0.6 * max(w, h))
            x0, y0 = max(0, x - pad), max(0, y - pad)
            scale = min(self.track_size / self.min_face, self.track_size / max(w, h, 1))
            box = self._largest(gray[y0:y + h + pad, x0:x + w + pad], scale, x0, y0)
            if box is not None:
                return box
        height, width = gray.shape[:2]
        box = self._largest(gray, self.scan_scale(width), 0, 0)
        tiles = self.sweep(width, height)
        if box is None and tiles:
            scale, x0, y0, x1, y1 = tiles[attempt % len(tiles)]
            box = self._largest(gray[y0:y1, x0:x1], scale, x0, y0)
        return box

    def faces(self, gray: np.ndarray) -> list[tuple[Box, float]]:
        """Every face with its detector score, for one-off analysis (a portrait): the scan and,
        when it finds nothing, the whole frame at the sweep's finest scale at once."""
        found = self._detect(gray, self.scan_scale(gray.shape[1]), 0, 0)
        if not found and self.sweep(gray.shape[1], gray.shape[0]):
            found = self._detect(gray, TARGET / self.min_face, 0, 0)
        return found

    def scan_scale(self, width: int) -> float:
        return min(1.0, self.detect_width / width)

    def sweep(self, width: int, height: int) -> list[tuple[float, int, int, int, int]]:
        """The sweep's tiles (scale, x0, y0, x1, y1), coarse levels first; none where the scan
        already finds ``min_face`` faces."""
        return _tiles(width, height, self.scan_scale(width), TARGET / self.min_face, self.sweep_pixels)

    def _largest(self, gray: np.ndarray, scale: float, x0: int, y0: int) -> Box | None:
        """The largest face found, among those scored at least ``RELATIVE_SCORE`` of the best: a
        false detection that barely passes the detector (a patch of a space suit at 0.002 next to
        the face at 1.5) does not win by being a pixel wider, and then get tracked."""
        found = self._detect(gray, scale, x0, y0) if gray.size else []
        if not found:
            return None
        floor = RELATIVE_SCORE * max(score for _, score in found)
        return max((box for box, score in found if score >= floor), key=lambda b: b[2] * b[3])

    def _detect(self, gray: np.ndarray, scale: float, x0: int, y0: int) -> list[tuple[Box, float]]:
        image = np.ascontiguousarray(gray) if scale == 1.0 else cv2.resize(
            gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        rects, scores, _ = self.detector.run(image, 0, 0.0)
        return [((x0 + int(max(0, r.left()) / scale), y0 + int(max(0, r.top()) / scale),
                  int(r.width() / scale), int(r.height() / scale)), float(s)) for r, s in zip(rects, scores)]


@lru_cache(maxsize=64)
def _tiles(width: int, height: int, scan: float, finest: float, pixels: int):
    if finest <= scan * 1.05:
        return ()
    levels = [finest]  # scales halving from the finest while the scan does not cover them
    while levels[-1] / 2 > scan * 1.25:
        levels.append(levels[-1] / 2)
    tiles = []
    for i in reversed(range(len(levels))):  # coarse first: bigger faces, fewer tiles
        scale = levels[i]
        if width * height * scale * scale <= pixels:
            tiles.append((scale, 0, 0, width, height))
            continue
        side = int(math.sqrt(pixels) / scale)  # a tile's side in the frame's pixels
        coarser = levels[i + 1] if i + 1 < len(levels) else scan
        overlap = int(1.15 * WINDOW / coarser)  # the largest face this level must find, whole
        for y0, y1 in _spans(height, side, overlap):
            for x0, x1 in _spans(width, side, overlap):
                tiles.append((scale, x0, y0, x1, y1))
    return tuple(tiles)


def _spans(length: int, side: int, overlap: int) -> list[tuple[int, int]]:
    """Intervals of at most ``side`` covering [0, length), neighbours sharing ``overlap``."""
    if side >= length:
        return [(0, length)]
    n = math.ceil((length - overlap) / max(1, side - overlap))
    step = (length - side) / (n - 1) if n > 1 else 0
    return [(int(i * step), int(i * step) + side) for i in range(n)]
