"""gender: female or male voice, batched across sessions.

    pipeline.py   the per-session loop (VAD-gated speech, a result about once a second)
                  and the backends (pitch, wav2vec2)
"""
from pipelines.gender.pipeline import GenderPipeline

__all__ = ["GenderPipeline"]
