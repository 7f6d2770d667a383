"""talking_head: a portrait that speaks, lips in sync, driven by the mic, the translation or the REST API.

    pipeline.py       the pipeline: which portrait, which driving audio, the video source
    avatar.py         one speaking portrait; the cuda BatchTicker thread
    rest.py           POST /api/portraits, the /api/avatar/sessions REST API
    face.py           landmarks and portraits; avatar_render.py the warp; visemes.py mouth shapes
"""
from pipelines.talking_head.pipeline import TalkingHeadPipeline

__all__ = ["TalkingHeadPipeline"]
