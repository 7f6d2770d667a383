"""translation: speak one language, hear and read another, live.

    pipeline.py   VAD segmentation, the recognition -> translation -> synthesis cascade or
                  SeamlessM4T, utterance and streaming modes
    asr.py mt.py tts.py seamless.py   the stages and their backends
    languages.py  which pairs work; GET /languages; the /ws/translate and /ws/stream start messages
    models.py     the models a server shares between sessions
"""
from pipelines.translation.pipeline import TranslationPipeline

__all__ = ["TranslationPipeline"]
