"""Comments for a recorded clip, from the window of stream before chosen moments."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from pipelines.commentary.data import decode_media
from pipelines.commentary.model import Commentator


def generate(checkpoint: str | Path, media: str | Path, times: Sequence[float] | None = None,
             every: float | None = None, temperature: float = 0.0, top_k: int = 0, samples: int = 1,
             seed: int | None = None, device: str = "cpu") -> list[tuple[float, list[str]]]:
    """(time, ``samples`` comments) for each moment: ``times`` (seconds), or every ``every``
    seconds, or by default the end of the clip. Greedy when ``temperature`` is 0."""
    commentator = Commentator.load(checkpoint, device)
    decoded = decode_media(media, commentator.features)
    if times:
        moments = list(times)
    elif every:
        moments = [every * k for k in range(1, int(decoded.duration / every + 1e-6) + 1)]
    else:
        moments = [decoded.duration]
    if any(not 0 <= t <= decoded.duration + 1e-6 for t in moments):
        raise ValueError(f"times must be within the clip's {decoded.duration:.2f} s")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    results = []
    for t in moments:
        window = decoded.window(t)
        results.append((t, commentator.comment([window] * samples, temperature, top_k, generator)))
    return results
