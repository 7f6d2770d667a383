"""The emotion pipeline's server-wide settings and the models its sessions share."""
from __future__ import annotations

from dataclasses import dataclass, field

from inference import Model, ModelSpec
from pipelines.common.vad import SileroVAD
from pipelines.emotion.cbt import ResponseGenerator
from pipelines.emotion.face_expression import FerExpression, TransformersExpression
from pipelines.emotion.prosody import MfccExtractor
from pipelines.emotion.text_emotion import SentenceEncoder


@dataclass
class EmotionSettings:
    face_model: str = field(default="", metadata={
        "help": "transformers image-classification model for faces (empty: packaged FER2013)"})
    voice_model: str = field(default="", metadata={
        "help": "transformers audio-classification model (empty: prosody heuristic)"})
    text_model: str = field(default="", metadata={
        "help": "transformers text-classification model (empty: MiniLM + VADER)"})
    response_model: str = field(default="", metadata={
        "help": "transformers text-generation model for responses (empty: CBT templates)"})
    fusion_weights: str = field(default="", metadata={
        "help": "fusion network weights from `python -m pipelines.emotion.train` (empty: confidence-weighted fusion)"})


@dataclass
class EmotionModels:
    face_backend: str  # its name
    face_model: Model
    vad: SileroVAD
    mfcc: MfccExtractor
    voice_model: Model | None  # None: the prosody heuristic (per session)
    text_model: Model
    encoder: SentenceEncoder | None  # sentence embeddings for the fusion network
    fusion_net: object | None
    generator: ResponseGenerator | None


def _frame_to_image(item):
    """(camera, frame, last face box, frames without a face) -> (image, box, misses): the colour
    conversion runs on a worker thread through the camera's shared, thread-safe converter, before
    the batch."""
    camera, frame, *rest = item
    return (camera.to_array(frame), *rest)


def load_models(s: EmotionSettings, device: str, registry) -> EmotionModels:
    """Every model the emotion sessions of a server share; the three that sessions call per
    frame, clip or sentence are batched ``Model``s, each built from a ``ModelSpec`` (here, or in
    a Ray Serve replica with ``--inference ray``)."""
    face = ModelSpec.of("pipelines.emotion.face_expression:make_face_backend", model=s.face_model, device=device)
    voice = ModelSpec.of("pipelines.emotion.prosody:TransformersVoiceEmotion", model=s.voice_model, device=device)
    text = (ModelSpec.of("pipelines.emotion.text_emotion:TransformersTextEmotion", model=s.text_model, device=device)
            if s.text_model else ModelSpec.of("pipelines.emotion.text_emotion:PrototypeTextEmotion", device=device))
    fusion_net = encoder = None
    if s.fusion_weights:
        from pipelines.emotion import fusion_net as fn
        fusion_net = fn.load(s.fusion_weights)
        if s.text_model:  # the MiniLM + VADER estimates carry their sentence embedding already
            encoder = SentenceEncoder(device)
    return EmotionModels(
        face_backend=(TransformersExpression if s.face_model else FerExpression).name,
        face_model=registry.model("emotion-face", spec=face, prepare=_frame_to_image, max_batch=16),
        vad=SileroVAD(), mfcc=MfccExtractor(),
        voice_model=registry.model("emotion-voice", spec=voice, max_batch=8) if s.voice_model else None,
        text_model=registry.model("emotion-text", spec=text, max_batch=32),
        encoder=encoder, fusion_net=fusion_net,
        generator=ResponseGenerator(s.response_model, device) if s.response_model else None)
