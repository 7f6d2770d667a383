"""Which language pairs work with what is installed, and the endpoints that say so.

``GET /languages`` lists the pairs; ``stream_options`` reads a WebSocket ``start_stream`` message
(``src_lang``, ``tgt_lang``) into the pipeline's options for ``/ws/translate`` and ``/ws/stream``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import SimpleNamespace

from aiohttp import web

from pipelines.base import OptionError
from pipelines.translation import asr as asr_stage
from pipelines.translation.mt import apertium_pairs
from pipelines.translation.seamless import CODES as SEAMLESS_CODES
from pipelines.translation.tts import espeak_languages


def _old(flag: str) -> dict:
    return {"aliases": (f"--{flag}",), "env_aliases": ("MMS_" + flag.upper().replace("-", "_"),)}


@dataclass
class TranslationSettings:
    """The server-wide choices of models (``settings.translation``); the functions below take it."""
    asr_model: str = field(default="auto", metadata={
        "help": "Whisper model name or folder (auto: tiny.en for English, multilingual base otherwise)",
        **_old("asr-model")})
    mt_backend: str = field(default="auto", metadata={
        "help": "text translation backend", "choices": ("auto", "apertium", "whisper", "transformers"),
        **_old("mt-backend")})
    mt_model: str = field(default="Helsinki-NLP/opus-mt-{src}-{tgt}", metadata={
        "help": "transformers seq2seq model id/folder; {src} {tgt} are filled in", **_old("mt-model")})
    tts_backend: str = field(default="espeak", metadata={
        "help": "speech synthesis backend", "choices": ("espeak", "transformers"), **_old("tts-backend")})
    tts_model: str = field(default="facebook/mms-tts-{lang3}", metadata={
        "help": "transformers VITS model id/folder; {lang3} is filled in", **_old("tts-model")})
    seamless_model: str = field(default="facebook/seamless-m4t-v2-large", metadata={
        "help": "SeamlessM4T v2 model id/folder (option backend=seamless)", **_old("seamless-model")})


def asr_languages(settings) -> set[str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    name = settings.asr_model
    if name == "auto":
        langs = {"en"} if asr_stage.tiny_en_path() else set()
        return langs | (set(_LANGUAGE_CODES) if asr_stage.base_available() else set())
    return {"en"} if name.endswith(".en") else set(_LANGUAGE_CODES)


def asr_model_for(settings, language: str) -> str:
    if settings.asr_model != "auto":
        return settings.asr_model
    return "tiny.en" if language == "en" and asr_stage.tiny_en_path() else "base"


def tts_languages(settings) -> set[str]:
    return espeak_languages() if settings.tts_backend == "espeak" else set(asr_languages(settings))


def mt_backend_for(settings, source: str, target: str) -> str | None:
    """Which text translation serves a pair, or None."""
    backend = settings.mt_backend
    multilingual = settings.asr_model != "auto" or asr_stage.base_available()
    if backend in ("auto", "apertium") and (source, target) in apertium_pairs():
        return "apertium"
    if backend in ("auto", "whisper") and target == "en" and source != "en" and multilingual \
            and not settings.asr_model.endswith(".en"):
        return "whisper"
    if backend == "transformers" and source != target:
        return "transformers"
    return None


def available_pairs(settings, backend: str = "cascade") -> list[tuple[str, str]]:
    """The (source, target) pairs that work with what is installed (cached: looking costs ~0.1 s,
    and offers and config messages ask on the event loop)."""
    return _available_pairs(settings.asr_model, settings.mt_backend, settings.tts_backend, backend)


@functools.lru_cache(maxsize=16)
def _available_pairs(asr_model: str, mt_backend: str, tts_backend: str, backend: str) -> list[tuple[str, str]]:
    settings = SimpleNamespace(asr_model=asr_model, mt_backend=mt_backend, tts_backend=tts_backend)
    if backend == "seamless":
        langs = sorted(SEAMLESS_CODES)  # languages it both hears and speaks
        return [(s, t) for s in langs for t in langs if s != t]
    sources, targets = asr_languages(settings), tts_languages(settings)
    if settings.mt_backend == "transformers":
        return [(s, t) for s in sorted(sources) for t in sorted(targets) if s != t]
    candidates = set(apertium_pairs()) | {(s, "en") for s in sources}
    return sorted((s, t) for s, t in candidates
                  if s in sources and t in targets and mt_backend_for(settings, s, t))


def describe_pairs(pairs: list[tuple[str, str]], limit: int = 40) -> str:
    """The pairs, readable: the handful into other languages first, then "N languages -> en"."""
    into_english = [s for s, t in pairs if t == "en"]
    listed = [f"{s}->{t}" for s, t in pairs if t != "en" or len(into_english) <= 8]
    text = ", ".join(listed[:limit]) + (f" and {len(listed) - limit} more" if len(listed) > limit else "")
    if len(into_english) > 8:
        text += f"; and into en from {len(into_english)} languages ({', '.join(into_english[:8])}, ...)"
    return text + " (GET /languages lists them all)"



async def languages(settings, request: web.Request) -> web.Response:
    pairs = available_pairs(settings)
    return web.json_response({
        "pairs": [{"source": s, "target": t, "mt": mt_backend_for(settings, s, t)} for s, t in pairs],
        "sources": sorted({s for s, _ in pairs}), "targets": sorted({t for _, t in pairs}),
        "seamless_pairs": len(available_pairs(settings, "seamless")),
        "asr_model": settings.asr_model, "mt_backend": settings.mt_backend,
        "tts_backend": settings.tts_backend,
    })


def stream_options(mode: str, message: dict) -> tuple[dict, dict]:
    """``{"src_lang", "tgt_lang", "options"?}`` -> (translation options, fields of ``started``)."""
    source, target = message.get("src_lang"), message.get("tgt_lang")
    if not isinstance(source, str) or not isinstance(target, str):
        raise OptionError('start_stream needs "src_lang" and "tgt_lang" strings, e.g. "en" and "es"')
    extra = message.get("options", {})
    if not isinstance(extra, dict):
        raise OptionError('start_stream "options" must be an object')
    return {**extra, "source": source, "target": target, "mode": mode}, \
        {"mode": mode, "src_lang": source, "tgt_lang": target}
