"""Speech the server plays back, as a WebRTC client receives it: when it falls silent after an
interrupt (tests/test_interrupt.py, bench/interrupt_bench.py)."""
from __future__ import annotations

from testing.media import frame_level

SILENT = 0.003  # RMS level of a received 20 ms frame below which it counts as silence (-50 dBFS)


def silence_after(received: list, since: float, level: float = SILENT) -> float | None:
    """Arrival time of the first received audio frame after ``since`` from which every later
    one is silent, or None when sound was still arriving at the last frame. ``received``:
    (arrival time, frame) pairs, oldest first (``StreamClient.received["audio"]``)."""
    frames = [(t, frame_level(f)) for t, f in received if t > since]
    if not frames or frames[-1][1] >= level:
        return None
    start = len(frames)
    while start > 0 and frames[start - 1][1] < level:
        start -= 1
    return frames[start][0]


def loud_frames(received: list, since: float, until: float = float("inf"), level: float = 0.05) -> int:
    """How many received audio frames between ``since`` and ``until`` are loud."""
    return sum(1 for t, f in received if since < t < until and frame_level(f) > level)
