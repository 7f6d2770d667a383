"""talking_head: a portrait that speaks, lips in sync, driven by the mic, the translation or the REST API.

    pipeline.py       the pipeline, avatar animation, REST avatar sessions and routes
    face.py           landmarks and portraits; avatar_render.py the warp; visemes.py mouth shapes
"""
from pipelines.talking_head.pipeline import TalkingHeadPipeline

__all__ = ["TalkingHeadPipeline"]
