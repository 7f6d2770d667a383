"""Speech-to-speech translation: speak one language, hear and read another, live.

Per session: silero VAD segments the inbound audio into utterances; each goes through a cascade
of replaceable, timed stages, every one on a worker thread:

    speech ─▶ recognition (faster-whisper) ─▶ text translation (Apertium │ Whisper translate │
              transformers) ─▶ speech synthesis (espeak-ng │ transformers VITS) ─▶ audio_out

or, with option ``backend="seamless"``, through SeamlessM4T v2 (speech to speech in one model).

Modes:
* ``utterance``: an utterance is recognised, translated and spoken once its speaker pauses
  (``min_silence``).
* ``streaming``: while the person speaks, the utterance so far is re-recognised every
  ``stream_interval``; only words on which two consecutive hypotheses agree are committed (the
  local-agreement policy), so captions don't flicker. Committed words are translated and spoken
  as soon as they end a clause, each word spoken once.

The same class drives WebRTC sessions and the WebSocket endpoints ``/ws/translate`` and
``/ws/stream`` (see ``pipelines/stages/ws_session.py``): all it touches is a Session-like context.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections import deque

import numpy as np

from pipelines.base import OptionError, Pipeline
from aiohttp import web

from media.audio import SAMPLE_RATE
from pipelines.common.vad import CHUNK
from pipelines.translation.languages import (TranslationSettings, available_pairs, describe_pairs, languages,
                                             stream_options)
from pipelines.translation.models import TranslationModels
from pipelines.translation.utterance import Job, Utterance, _words, agreed_prefix
from tracks.overlay import Subtitle

log = logging.getLogger(__name__)

HOP = 2 * CHUNK  # samples read per step (64 ms): the end-of-speech decision granularity
PREROLL = 0.25  # seconds of audio kept before the VAD fires (word onsets are quiet)
MAX_UTTERANCE = {"utterance": 15.0, "streaming": 10.0}  # seconds; longer speech is cut there
MIN_PARTIAL = 1.0  # streaming: seconds of an utterance before its first hypothesis (shorter ones guess)
MAX_PENDING = 4  # utterances waiting for the cascade before new ones are refused
MODES = ("utterance", "streaming")
BACKENDS = ("cascade", "seamless")
CLAUSE_END = re.compile(r"[.,;:!?]$")


class TranslationPipeline(Pipeline):
    name = "translation"
    Settings = TranslationSettings
    uses_camera = False
    description = "Speak one language, hear and read another, live (utterance or streaming mode)"
    defaults = {
        "source": "en",
        "target": "es",
        "mode": "utterance",  # or "streaming"
        "voice": None,  # TTS voice (espeak-ng name like "es-419", or a variant like "+f3"); None: default
        "backend": "cascade",  # or "seamless" (SeamlessM4T v2, for GPU machines with the weights)
        "min_silence": 0.3,  # seconds of silence that end an utterance
        "vad_threshold": 0.5,
        "stream_interval": 0.5,  # streaming: seconds between hypotheses (and at most one output each)
        "barge_in": False,  # speaking again while a translation plays interrupts it (off: interpreters overlap)
        "overlay": True,  # subtitles on the returned video
    }

    def __init__(self, context, options=None):
        super().__init__(context, options)
        self._jobs: asyncio.Queue[Job] = asyncio.Queue(MAX_PENDING)
        self._utterance: Utterance | None = None
        self._count = 0
        self._busy = False  # the cascade is working on a job
        self._epoch = 0  # interrupts so far: a job queued before the latest one is not spoken
        self.cursor: int | None = None  # next sample the segmenter reads (None until it starts)

    @classmethod
    def shared_key(cls, settings):
        return (settings.device, *dataclasses.astuple(settings.translation))

    @classmethod
    def load_shared(cls, settings, registry) -> TranslationModels:
        models = TranslationModels(settings.translation, settings.device, registry)
        models.warm(cls.defaults["source"], cls.defaults["target"])
        return models

    @classmethod
    def routes(cls, server) -> list:
        return [web.get("/languages", functools.partial(languages, server.settings.translation))]

    @classmethod
    def socket_endpoints(cls) -> dict:
        return {"/ws/translate": functools.partial(stream_options, "utterance"),
                "/ws/stream": functools.partial(stream_options, "streaming")}

    @property
    def end_of_input_silence(self) -> float:
        return self.options["min_silence"] + 0.2  # enough for the VAD to end the last utterance

    def validate(self, options):
        if options["mode"] not in MODES:
            raise OptionError(f"translation: mode must be one of {list(MODES)}, not {options['mode']!r}")
        if options["backend"] not in BACKENDS:
            raise OptionError(f"translation: backend must be one of {list(BACKENDS)}, not {options['backend']!r}")
        self.check_ranges(options, {"min_silence": (0.1, 3, " seconds"), "vad_threshold": (0.05, 0.95, ""),
                                    "stream_interval": (0.25, 5, " seconds")})
        if not isinstance(options["barge_in"], bool):
            raise OptionError("translation: barge_in must be true or false")
        if options["voice"] is not None and (not isinstance(options["voice"], str)
                                             or not re.fullmatch(r"[+\w-]{1,40}", options["voice"])):
            raise OptionError("translation: voice must be an espeak-ng voice name like es-419 or +f3")
        source, target = options["source"], options["target"]
        pairs = available_pairs(self.context.settings.translation, options["backend"])
        if (source, target) not in pairs:
            raise OptionError(f"translation: {source!r} -> {target!r} is not available; "
                              f"available pairs: {describe_pairs(pairs)}")

    # --- segmentation ------------------------------------------------------------------------------
    async def run(self) -> None:
        models: TranslationModels = await self.context.models.shared(type(self))
        worker = asyncio.get_running_loop().create_task(self._work(models))
        try:
            await self._segment(models)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def drained(self) -> None:
        """Wait until every sample written so far is segmented and every utterance is spoken."""
        audio = self.context.audio
        while (self.cursor is None or self.cursor + HOP <= audio.end or self._utterance is not None
               or self._busy or not self._jobs.empty()):
            await asyncio.sleep(0.02)

    async def _segment(self, models: TranslationModels) -> None:
        audio = self.context.audio
        vad = models.vad.stream()
        preroll: deque[np.ndarray] = deque(maxlen=max(1, int(PREROLL * SAMPLE_RATE / HOP)))
        silence = 0
        self.cursor = audio.start  # audio that came while the models loaded is not lost
        async for start, chunk in audio.chunks(HOP, self.cursor):
            if start != self.cursor:  # fell a ring behind (CPU starved) and skipped to the present
                silence = 0
            arrived = time.monotonic()  # ~ when the hop's last sample came in
            probs = await vad.feed(chunk)
            cursor = self.cursor = start + HOP
            speech = bool(len(probs)) and float(probs.max()) >= self.options["vad_threshold"]
            utterance = self._utterance
            if utterance is None:
                if not speech:
                    preroll.append(chunk)
                    continue
                self._barge_in()
                self._count += 1
                head = list(preroll)
                preroll.clear()
                utterance = self._utterance = Utterance(self._count, cursor - HOP - HOP * len(head), head,
                                                        HOP * len(head))
            utterance.chunks.append(chunk)
            utterance.samples += HOP
            mode = self.options["mode"]
            if speech:
                silence = 0
                last = int(np.nonzero(probs >= self.options["vad_threshold"])[0][-1])
                utterance.speech_end = cursor - HOP + (last + 1) * CHUNK
                utterance.speech_end_time = arrived - (cursor - utterance.speech_end) / SAMPLE_RATE
                if utterance.speculation is not None:  # the speaker went on: that guess is moot
                    utterance.speculation[1].cancel()  # (dropped from the batch if not started)
                    utterance.speculation = None
            else:
                silence += HOP
                if silence == HOP and mode == "utterance" and self.options["backend"] == "cascade":
                    self._speculate(models, utterance)
            if silence >= self.options["min_silence"] * SAMPLE_RATE or \
                    utterance.samples >= MAX_UTTERANCE[mode] * SAMPLE_RATE:
                self._finish()
                silence = 0
            elif mode == "streaming" and self._jobs.empty() and utterance.samples >= MIN_PARTIAL * SAMPLE_RATE and \
                    utterance.samples - utterance.partial_requested >= self.options["stream_interval"] * SAMPLE_RATE:
                utterance.partial_requested = utterance.samples
                self._queue(Job(utterance, utterance.audio(), False, dict(self.options)))

    def _barge_in(self) -> None:
        """Speech starts: with ``barge_in``, a translation still playing stops (the whole
        session's speech is interrupted, as by the client's ``interrupt``)."""
        out = self.context.audio_out
        if self.options["barge_in"] and out is not None and out.queued_seconds > 0:
            self.context.interrupt("barge_in")

    def interrupt(self) -> dict | None:
        """Speech was interrupted: utterances waiting for the cascade are dropped, and the one
        being translated is not spoken (its captions still come)."""
        self._epoch += 1
        dropped = 0
        while not self._jobs.empty():
            dropped += self._jobs.get_nowait().final
        if self._busy:
            dropped += 1
        return {"dropped_utterances": dropped} if dropped else None

    def _speculate(self, models: TranslationModels, utterance: Utterance) -> None:
        """Start recognising at the first silent hop instead of after ``min_silence``: if the pause
        turns out to end the utterance, its text is ready ~0.25 s sooner; if the speaker goes on,
        the guess is dropped. The cost is one recognition per pause that does not end an utterance."""
        audio, source = utterance.audio(), self.options["source"]

        async def recognise():
            t0 = time.perf_counter()
            text = (await models.recognize(source, audio)).text
            return source, text, time.perf_counter() - t0

        task = asyncio.get_running_loop().create_task(recognise())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a dropped guess's error is not lost
        utterance.speculation = (utterance.speech_end, task)

    def _finish(self) -> None:
        utterance, self._utterance = self._utterance, None
        if utterance is not None and utterance.speech_end:
            self._queue(Job(utterance, utterance.audio(), True, dict(self.options)))

    def _queue(self, job: Job) -> None:
        job.epoch = self._epoch
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            self.context.emit_error(self.name, "translation is falling behind; an utterance was dropped")

    # --- the cascade -------------------------------------------------------------------------------
    async def _work(self, models: TranslationModels) -> None:
        while True:
            job = await self._jobs.get()
            if not job.final and not self._jobs.empty():
                continue  # a newer hypothesis or the final one is already waiting: this one is stale
            self._busy = True
            try:
                if job.options["backend"] == "seamless":
                    await self._seamless(models, job)
                elif job.final:
                    await self._final(models, job)
                else:
                    await self._partial(models, job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad utterance must not end the session
                log.exception("translation failed")
                self.context.emit_error(self.name, f"{type(exc).__name__}: {exc}")
            finally:
                self._busy = False

    async def _timed(self, stage: str, timings: dict, fn, *args):
        t0 = time.perf_counter()
        result = await (fn(*args) if asyncio.iscoroutinefunction(fn) else asyncio.to_thread(fn, *args))
        seconds = time.perf_counter() - t0
        timings[stage] = round(seconds * 1000, 1)
        self.context.observe_inference(self.name, stage, seconds)
        return result

    async def _recognise(self, models, job: Job, timings: dict, prefix: str | None = None) -> str:
        recognition = await self._timed("asr", timings, models.recognize, job.options["source"], job.audio,
                                        "transcribe", prefix)
        return recognition.text

    async def _translate(self, models, job: Job, text: str, timings: dict) -> str:
        source, target = job.options["source"], job.options["target"]
        if not await asyncio.to_thread(models.translates_text, source, target):
            # Whisper's translate task, from the audio itself
            return (await self._timed("mt", timings, models.recognize, source, job.audio, "translate")).text
        return await self._timed("mt", timings, models.translate, text, source, target)

    async def _speak(self, models, job: Job, text: str, timings: dict) -> float:
        """Synthesise and queue ``text``; returns seconds of audio queued."""
        samples, rate = await self._timed("tts", timings, models.synthesize, text, job.options["target"],
                                          job.options["voice"])
        return self._play(job, samples, rate, text)

    def _play(self, job: Job, samples: np.ndarray, rate: int, text: str) -> float:
        if not len(samples) or job.epoch != self._epoch:  # nothing, or interrupted meanwhile
            return 0.0
        # Queued after what is already playing: a new utterance never cuts the previous one.
        if not self.context.audio_out.push_audio(samples, rate, self.name):
            self.context.emit_error(self.name, "outbound audio queue is full; translated speech dropped")
            return 0.0
        self.context.publish("speech", {"samples": samples, "sample_rate": rate, "text": text})
        return len(samples) / rate

    def _latency(self, utterance: Utterance, seconds_just_queued: float) -> dict:
        """End of speech to the moment its translated audio was queued (``latency_ms``), and how
        much earlier speech was still queued ahead of it (``queued_ahead_s``): the first sample
        plays that much later."""
        ahead = max(0.0, self.context.audio_out.queued_seconds - seconds_just_queued)
        return {"latency_ms": round((time.monotonic() - utterance.speech_end_time) * 1000, 1),
                "queued_ahead_s": round(ahead, 3)}

    @staticmethod
    def _audio_end(job: Job) -> float:
        """Where the speech heard so far ends, in seconds of the session's input audio clock."""
        end = job.utterance.speech_end if job.final else job.utterance.start + len(job.audio)
        return round(end / SAMPLE_RATE, 3)

    def _emit_transcript(self, job: Job, text: str, final: bool, timings: dict, **extra) -> None:
        language = job.options["source"]
        self.context.emit("transcript", text=text, final=final, language=language,
                          utterance=job.utterance.number,
                          audio_start_s=round(max(0, job.utterance.start) / SAMPLE_RATE, 3),
                          audio_end_s=self._audio_end(job),
                          timings_ms=timings, **extra)
        if final:
            # (the utterance's audio and end of speech: server/rooms.py translates it for listeners of other languages)
            self.context.publish("transcript", {"text": text, "language": language, "final": True,
                                                "utterance": job.utterance.number, "audio": job.audio,
                                                "speech_end_time": job.utterance.speech_end_time})

    def _emit_translation(self, job: Job, source_text: str, text: str, final: bool, timings: dict,
                          **extra) -> None:
        self.context.emit("translation", source_text=source_text, text=text,
                          source_lang=job.options["source"], target_lang=job.options["target"],
                          final=final, utterance=job.utterance.number, audio_end_s=self._audio_end(job),
                          timings_ms=timings, **extra)
        self.context.show(self.name, Subtitle(text, secondary=source_text))

    async def _final(self, models, job: Job) -> None:
        timings: dict = {}
        utterance = job.utterance
        if job.options["mode"] == "streaming":
            # Decoded after the committed words: what was already shown and spoken stays.
            text = await self._recognise(models, job, timings, " ".join(utterance.committed))
            return await self._final_streaming(models, job, text, timings)
        speculation = utterance.speculation
        if speculation and speculation[0] == utterance.speech_end:  # recognised during the pause
            source, text, seconds = await speculation[1]
            if source != job.options["source"]:  # languages swapped during the pause
                text = await self._recognise(models, job, timings)
            else:
                timings["asr"] = round(seconds * 1000, 1)
                self.context.observe_inference(self.name, "asr", seconds)
        else:
            text = await self._recognise(models, job, timings)
        if not text:
            return
        self._emit_transcript(job, text, True, dict(timings))
        translated = await self._translate(models, job, text, timings)
        if not translated:
            return
        seconds = await self._speak(models, job, translated, timings)
        self._emit_translation(job, text, translated, True, timings, audio_seconds=round(seconds, 3),
                               **self._latency(utterance, seconds))

    # --- streaming: local agreement --------------------------------------------------------------
    async def _partial(self, models, job: Job) -> None:
        timings: dict = {}
        utterance = job.utterance
        committed = utterance.committed
        # Decoding continues after the committed words, so every hypothesis starts with them.
        hypothesis = _words(await self._recognise(models, job, timings, " ".join(committed)))
        # The last word may be cut off mid-word by the end of the audio so far: never commit it.
        agreed = min(agreed_prefix(utterance.previous, hypothesis), len(hypothesis) - 1)
        utterance.previous = hypothesis
        if agreed > len(committed) and agreed_prefix(committed, hypothesis) == len(committed):
            utterance.committed = committed + hypothesis[len(committed):agreed]
        committed = " ".join(utterance.committed)
        self._emit_transcript(job, " ".join(utterance.committed + hypothesis[len(utterance.committed):]),
                              False, dict(timings), committed=committed)
        pending = utterance.committed[utterance.spoken:]
        # Speak committed words once they end a clause (or are many), at most once per interval.
        if pending and (CLAUSE_END.search(pending[-1]) or len(pending) >= 6) and \
                time.monotonic() - utterance.last_output >= job.options["stream_interval"]:
            await self._speak_committed(models, job, pending, False, timings)

    async def _speak_committed(self, models, job: Job, words: list[str], final: bool, timings: dict) -> None:
        utterance = job.utterance
        source_text = " ".join(words)
        translated = await self._translate(models, job, source_text, timings) if source_text else ""
        utterance.spoken += len(words)
        utterance.spoken_source += words
        seconds = 0.0
        if translated:
            utterance.spoken_target.append(translated)
            seconds = await self._speak(models, job, translated, timings)
            utterance.last_output = time.monotonic()
        extra = self._latency(utterance, seconds) if final else {}
        self._emit_translation(job, " ".join(utterance.spoken_source), " ".join(utterance.spoken_target),
                               final, timings, chunk=translated, audio_seconds=round(seconds, 3), **extra)

    async def _final_streaming(self, models, job: Job, text: str, timings: dict) -> None:
        utterance = job.utterance
        words = _words(text)
        if not words and not utterance.spoken:
            return
        # The final hypothesis (decoded after the committed words) decides the rest; words
        # already spoken are not spoken again.
        spoken = min(utterance.spoken, len(words))
        utterance.committed = words
        self._emit_transcript(job, text, True, dict(timings))
        await self._speak_committed(models, job, words[spoken:], True, timings)

    # --- SeamlessM4T v2 ------------------------------------------------------------------------------
    async def _seamless(self, models, job: Job) -> None:
        if not job.final:
            return  # SeamlessM4T v2 translates whole utterances here
        timings: dict = {}
        source, target = job.options["source"], job.options["target"]
        result = await self._timed("s2st", timings, models.translate_speech, job.audio, source, target)
        self._emit_transcript(job, result.source_text, True, dict(timings))
        seconds = self._play(job, result.samples, result.sample_rate, result.text)
        self._emit_translation(job, result.source_text, result.text, True, timings,
                               audio_seconds=round(seconds, 3), **self._latency(job.utterance, seconds))
