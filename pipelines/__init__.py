"""The pipeline registry: the one place where pipelines are listed by name."""
from pipelines.base import Pipeline
from pipelines.gender import GenderPipeline
from pipelines.emotion import EmotionPipeline
from pipelines.commentary import CommentaryPipeline
from pipelines.talking_head import TalkingHeadPipeline
from pipelines.translation import TranslationPipeline

PIPELINES: dict[str, type[Pipeline]] = {
    cls.name: cls for cls in (GenderPipeline, EmotionPipeline, CommentaryPipeline, TalkingHeadPipeline, TranslationPipeline)
}
