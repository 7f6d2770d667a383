"""emotion: face + voice + words fused live, with a CBT-style response.

    pipeline.py         the per-session loops and fusion
    face_expression.py prosody.py text_emotion.py   the three modalities
    fusion.py fusion_net.py   confidence-weighted fusion, the trainable fusion network
    cbt.py              responses (with the crisis path)
    train.py            ``python -m pipelines.emotion.train``: train the fusion network
"""
from pipelines.emotion.pipeline import EmotionPipeline

__all__ = ["EmotionPipeline"]
