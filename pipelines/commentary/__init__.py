"""Live chat commentary: a multimodal LSTM that writes Twitch-style comments about a stream.

    data.py      chat logs, vocabulary, media decoding and the one feature function
                 (``window_features``) that training, ``generate`` and the live pipeline share
    model.py     the video/audio encoders, fusion and comment decoder; checkpoints
    train.py     training with validation loss/perplexity, a checkpoint every epoch, resume
    generate.py  comments for a clip (greedy or top-k + temperature sampling)
    pipeline.py  the live pipeline
    __main__.py  ``python -m pipelines.commentary preprocess|train|generate``
"""
from pipelines.commentary.pipeline import CommentaryPipeline

__all__ = ["CommentaryPipeline"]
