"""Server settings: one dataclass, filled from CLI flags with environment-variable equivalents."""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    pipelines: list[str] = field(default_factory=lambda: ["gender"])  # used when an offer names none
    max_sessions: int = 16
    stun: list[str] = field(default_factory=list)
    turn: list[str] = field(default_factory=list)  # turn:user:password@host:port
    device: str = "cpu"
    log_level: str = "INFO"
    ice_hosts: list[str] = field(default_factory=list)
    video_fps: float = 25.0
    heartbeat_timeout: float = 10.0
    gender_backend: str = "pitch"
    gender_model: str = "7wolf/wav2vec2-base-gender-classification"
    max_body_bytes: int = 256 * 1024
    preload: list[str] = field(default_factory=list)  # pipelines whose models load at start-up
    portrait_dir: str = ""  # talking_head: where uploaded portraits are kept ("": memory only)
    max_avatar_sessions: int = 32  # talking_head REST avatar sessions at once
    avatar_idle_timeout: float = 120.0  # seconds before an unused REST avatar session is removed
    emotion_face_model: str = ""  # emotion: transformers image-classification id/folder ("": packaged FER2013 tflite)
    emotion_voice_model: str = ""  # emotion: transformers audio-classification id/folder ("": prosody heuristic)
    emotion_text_model: str = ""  # emotion: transformers text-classification id/folder ("": MiniLM + VADER)
    emotion_response_model: str = ""  # emotion: transformers text-generation id/folder ("": CBT templates)
    emotion_fusion_weights: str = ""  # emotion: trained fusion network weights ("": confidence-weighted fusion)
    commentary_checkpoint: str = ""  # commentary: model from `python -m pipelines.commentary train` ("": none)
    asr_model: str = "auto"  # translation: Whisper name/folder ("auto": tiny.en for English, base otherwise)
    mt_backend: str = "auto"  # translation: auto (Apertium, else Whisper translate), apertium, whisper, transformers
    mt_model: str = "Helsinki-NLP/opus-mt-{src}-{tgt}"  # translation: transformers model id/folder
    tts_backend: str = "espeak"  # translation: espeak or transformers
    tts_model: str = "facebook/mms-tts-{lang3}"  # translation: transformers VITS model id/folder
    seamless_model: str = "facebook/seamless-m4t-v2-large"  # translation: SeamlessM4T v2 id/folder


# flag name -> (environment variable, help). Lists are comma-separated in the environment.
_ENV = {
    "host": ("MMS_HOST", "address to listen on"),
    "port": ("MMS_PORT", "HTTP port"),
    "pipelines": ("MMS_PIPELINES", "default pipelines when an offer names none (comma-separated)"),
    "max_sessions": ("MMS_MAX_SESSIONS", "sessions at once; more answer 503"),
    "stun": ("MMS_STUN", "STUN server URL, e.g. stun:stun.example.org:3478 (repeatable)"),
    "turn": ("MMS_TURN", "TURN server as turn:USER:PASSWORD@HOST:PORT (repeatable)"),
    "device": ("MMS_DEVICE", "where models run: cpu or cuda"),
    "log_level": ("MMS_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
    "ice_hosts": ("MMS_ICE_HOSTS", "offer only these host addresses as ICE candidates (repeatable)"),
    "video_fps": ("MMS_VIDEO_FPS", "frame rate of the outbound video track"),
    "heartbeat_timeout": ("MMS_HEARTBEAT_TIMEOUT", "seconds without media or messages before a session is closed"),
    "preload": ("MMS_PRELOAD", "pipelines whose models load at start-up, or 'all' (default: the default pipelines)"),
    "gender_backend": ("MMS_GENDER_BACKEND", "voice-gender backend: pitch (embedded) or wav2vec2"),
    "gender_model": ("MMS_GENDER_MODEL", "transformers model id or local path for the wav2vec2 backend"),
    "portrait_dir": ("MMS_PORTRAIT_DIR", "talking_head: folder that keeps uploaded portraits (empty: memory only)"),
    "max_avatar_sessions": ("MMS_MAX_AVATAR_SESSIONS", "talking_head: REST avatar sessions at once"),
    "avatar_idle_timeout": ("MMS_AVATAR_IDLE_TIMEOUT", "talking_head: seconds before an unused REST avatar session is removed"),
    "emotion_face_model": ("MMS_EMOTION_FACE_MODEL", "emotion: transformers image-classification model for faces (empty: packaged FER2013)"),
    "emotion_voice_model": ("MMS_EMOTION_VOICE_MODEL", "emotion: transformers audio-classification model (empty: prosody heuristic)"),
    "emotion_text_model": ("MMS_EMOTION_TEXT_MODEL", "emotion: transformers text-classification model (empty: MiniLM + VADER)"),
    "emotion_response_model": ("MMS_EMOTION_RESPONSE_MODEL", "emotion: transformers text-generation model for responses (empty: CBT templates)"),
    "emotion_fusion_weights": ("MMS_EMOTION_FUSION_WEIGHTS", "emotion: fusion network weights from pipelines.emotion.train (empty: confidence-weighted fusion)"),
    "commentary_checkpoint": ("MMS_COMMENTARY_CHECKPOINT", "commentary: checkpoint written by `python -m pipelines.commentary train` (empty: none)"),
    "asr_model": ("MMS_ASR_MODEL", "translation: Whisper model name or folder (auto: tiny.en for English, multilingual base otherwise)"),
    "mt_backend": ("MMS_MT_BACKEND", "translation: text translation backend: auto, apertium, whisper or transformers"),
    "mt_model": ("MMS_MT_MODEL", "translation: transformers seq2seq model id/folder; {src} {tgt} are filled in"),
    "tts_backend": ("MMS_TTS_BACKEND", "translation: speech synthesis backend: espeak or transformers"),
    "tts_model": ("MMS_TTS_MODEL", "translation: transformers VITS model id/folder; {lang3} is filled in"),
    "seamless_model": ("MMS_SEAMLESS_MODEL", "translation: SeamlessM4T v2 model id/folder (option backend=seamless)"),
}


def parse_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    defaults = Settings()
    parser = argparse.ArgumentParser(description="Real-time multimodal AI media server (WebRTC).")
    fallback = {}  # list settings: the environment's value, or the default, when no flag is given
    for f in dataclasses.fields(Settings):
        if f.name not in _ENV:
            continue
        env_name, help_text = _ENV[f.name]
        default, raw = getattr(defaults, f.name), environ.get(env_name)
        flag = "--ice-host" if f.name == "ice_hosts" else "--" + f.name.replace("_", "-")
        if isinstance(default, list):  # repeatable flag, or comma-separated
            fallback[f.name] = [v.strip() for v in raw.split(",") if v.strip()] if raw else default
            parser.add_argument(flag, dest=f.name, action="append", help=f"{help_text} [env {env_name}]")
        else:
            parser.add_argument(flag, dest=f.name, type=type(default),
                                default=type(default)(raw) if raw is not None else default,
                                help=f"{help_text} [env {env_name}, default {default}]")
    values = vars(parser.parse_args(argv))
    for name, value in fallback.items():
        given = values[name]
        values[name] = [v.strip() for item in given for v in item.split(",") if v.strip()] if given else value
    settings = Settings(**values)
    if settings.device not in ("cpu", "cuda") and not settings.device.startswith("cuda:"):
        parser.error(f"--device must be cpu or cuda, not {settings.device!r}")
    if settings.gender_backend not in ("pitch", "wav2vec2"):
        parser.error(f"--gender-backend must be pitch or wav2vec2, not {settings.gender_backend!r}")
    settings.log_level = settings.log_level.upper()
    return settings
