"""Silero VAD (its ONNX model ships inside the ``silero-vad`` wheel) on onnxruntime.

One model per process; each audio stream keeps its own recurrent state in a ``VadStream``, so
the model is shared by every session without locks (onnxruntime's ``run`` is thread-safe).
"""
from __future__ import annotations

import asyncio
import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from media.audio import SAMPLE_RATE
import onnxruntime

CHUNK = 512  # samples per decision at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous chunk the model sees (as silero's own wrapper does)


class SileroVAD:
    def __init__(self, threads: int = 1):
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = threads
        # Find the wheel's file without importing silero_vad, whose __init__ imports torch
        # (seconds of start-up holding the GIL, and ~650 MB) though only onnxruntime is used.
        package = importlib.util.find_spec("silero_vad").submodule_search_locations[0]
        path = Path(package) / "data" / "silero_vad.onnx"
        self.session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                                    providers=["CPUExecutionProvider"])
        # Its own thread: in the shared default executor, VAD would queue behind video encoding
        # and composing, and under load every pipeline's speech detection would fall behind.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer-vad")

    def stream(self) -> "VadStream":
        return VadStream(self)


class VadStream:
    """Speech probabilities for consecutive 32 ms chunks of one 16 kHz stream."""

    def __init__(self, vad: SileroVAD):
        self.vad = vad
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    async def feed(self, samples: np.ndarray) -> np.ndarray:
        """``self(samples)`` on the VAD's own worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.vad.executor, self, samples)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Feed samples (any length); returns one probability per completed 512-sample chunk."""
        samples = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        n = len(samples) // CHUNK
        self._pending = samples[n * CHUNK:]
        probs = np.empty(n, dtype=np.float32)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        for i in range(n):
            chunk = samples[i * CHUNK:(i + 1) * CHUNK]
            x = np.concatenate([self.context, chunk])[None, :]
            out, self.state = self.vad.session.run(None, {"input": x, "state": self.state, "sr": sr})
            self.context = chunk[-CONTEXT:]
            probs[i] = out.reshape(-1)[0]
        return probs
