"""An utterance as the translation pipeline follows it, the jobs it queues for the cascade, and
the local-agreement rule of streaming mode."""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import numpy as np


def _words(text: str) -> list[str]:
    return text.split()


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def agreed_prefix(a: list[str], b: list[str]) -> int:
    """How many leading words two hypotheses share (ignoring case and punctuation)."""
    n = 0
    while n < min(len(a), len(b)) and _norm(a[n]) == _norm(b[n]):
        n += 1
    return n


@dataclass
class Utterance:
    number: int
    start: int  # sample index of its first sample (pre-roll included)
    chunks: list = field(default_factory=list)
    samples: int = 0
    speech_end: int = 0  # sample index just after the last speech chunk
    speech_end_time: float = 0.0  # monotonic time that sample arrived
    # streaming state
    previous: list[str] = field(default_factory=list)  # the previous hypothesis' words
    committed: list[str] = field(default_factory=list)  # words two hypotheses agreed on
    spoken: int = 0  # committed words already translated and spoken
    spoken_source: list[str] = field(default_factory=list)
    spoken_target: list[str] = field(default_factory=list)
    last_output: float = 0.0
    partial_requested: int = 0  # samples in the utterance when the last partial was queued
    # utterance mode: recognition started at the first silent hop, (speech_end it covers, task)
    speculation: tuple[int, asyncio.Task] | None = None

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


@dataclass
class Job:
    utterance: Utterance
    audio: np.ndarray
    final: bool
    options: dict
    epoch: int = 0  # the pipeline's interrupt count when it was queued: older jobs are not spoken


