#!/usr/bin/env python3
"""Translation benchmark: English speech -> Spanish speech with the offline models.

Twelve everyday English sentences, each spoken by two offline voices (espeak-ng en-us, flite slt),
are played in real time into the translation pipeline (the same class WebRTC and the WebSocket
endpoints run, here with an in-process context), once per mode. Measured:

* WER of recognition against the sentences (jiwer, lower-cased, punctuation removed);
* BLEU and chrF (sacrebleu) of the translations against Spanish references written by hand;
* latency from the end of speech (the last non-silent input sample entering the server) to the
  first sample of translated audio (the moment it is queued on the outbound track plus any earlier
  speech still queued ahead of it), p50/p95; in streaming mode also from the start of speech;
* each stage's real-time factor (stage seconds / seconds of audio it handled) or ms per call.

In utterance mode this runs at each of ``--sessions`` concurrent sessions (1, 2, 4, 8), sharing one
set of models as a server's sessions do: every session plays every clip, session k starting
k x 0.15 s after the first, and the figures are over all their utterances.

    .venv/bin/python bench/translation_bench.py [--modes utterance,streaming] [--voices espeak,flite]
                                                [--sessions 1,2,4,8]
"""
from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path

import jiwer
import numpy as np
import sacrebleu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench import harness  # noqa: E402
from inference import ModelRegistry  # noqa: E402
from media.audio import SAMPLE_RATE  # noqa: E402
from pipelines.context import PipelineContext  # noqa: E402
from pipelines.translation.pipeline import TranslationPipeline  # noqa: E402
from server.config import Settings  # noqa: E402
from server.metrics import Metrics  # noqa: E402
from testing.media import espeak, flite, load_audio  # noqa: E402

SENTENCES = [
    ("I would like a cup of coffee please.", "Quisiera una taza de café, por favor."),
    ("Where is the train station?", "¿Dónde está la estación de tren?"),
    ("The weather is very nice today.", "Hoy hace muy buen tiempo."),
    ("My brother lives in a small house near the sea.", "Mi hermano vive en una casa pequeña cerca del mar."),
    ("We are going to the market tomorrow morning.", "Mañana por la mañana vamos al mercado."),
    ("How much does this book cost?", "¿Cuánto cuesta este libro?"),
    ("I do not understand what you are saying.", "No entiendo lo que dices."),
    ("The children are playing in the garden.", "Los niños están jugando en el jardín."),
    ("Can you help me find my keys?", "¿Me puedes ayudar a encontrar mis llaves?"),
    ("She reads a newspaper every evening.", "Ella lee un periódico todas las tardes."),
    ("The restaurant opens at eight o'clock.", "El restaurante abre a las ocho."),
    ("Thank you very much for your help.", "Muchas gracias por tu ayuda."),
]
LEAD, TRAIL = 0.5, 2.0  # seconds of silence before and after each sentence
FRAME = SAMPLE_RATE // 50  # fed in 20 ms frames, like a WebRTC track
STAGGER = 0.15  # seconds between the starts of concurrent sessions


class AudioOut:
    """Records when speech is queued; plays it back in real time like SpeechAudioTrack."""

    def __init__(self):
        self.pushes: list[tuple[float, float, float]] = []  # (time, seconds, queued ahead)
        self.unclaimed = None  # the latest push, until its translation event claims it
        self._play_end = 0.0

    @property
    def queued_seconds(self) -> float:
        return max(0.0, self._play_end - time.monotonic())

    def push_audio(self, samples, rate, source=None) -> bool:
        now, seconds = time.monotonic(), len(samples) / rate
        self.pushes.append((now, seconds, self.queued_seconds))
        self.unclaimed = self.pushes[-1]
        self._play_end = max(self._play_end, now) + seconds
        return True

    def clear_buffer(self):
        self._play_end = 0.0
        return {}


class BenchContext(PipelineContext):
    """A session without a transport: the pipeline's events and speech, recorded in process."""

    def __init__(self, settings, models: ModelRegistry):
        super().__init__(settings, Metrics(), models)
        self.audio_out = AudioOut()
        self.events: list[tuple[float, str, dict]] = []

    def emit(self, type, **fields):
        if type == "translation":  # the pipeline emits right after queueing that speech
            fields["push"], self.audio_out.unclaimed = self.audio_out.unclaimed, None
        if type == "error":
            print("error:", fields.get("message"), file=sys.stderr)
        self.events.append((time.monotonic(), type, fields))


def norm(text: str) -> str:
    return " ".join(re.findall(r"[\w']+", text.lower()))


async def play(context: BenchContext, clips, delay: float) -> list[tuple]:
    """Plays the clips into one session in real time, after ``delay`` s; per clip (first sample,
    speech start wall time, speech end wall time)."""
    await asyncio.sleep(delay)
    marks = []
    start = time.monotonic()
    written = 0
    for english, spanish, speech in clips:
        voiced = np.nonzero(np.abs(speech) > 0.01)[0]
        clip = np.concatenate([np.zeros(int(LEAD * SAMPLE_RATE), np.float32), speech,
                               np.zeros(int(TRAIL * SAMPLE_RATE), np.float32)])
        onset, offset = int(LEAD * SAMPLE_RATE) + voiced[0], int(LEAD * SAMPLE_RATE) + voiced[-1] + 1
        first_sample = context.audio.end
        speech_start = speech_end = None
        for i in range(0, len(clip), FRAME):
            # Real time: each frame is written when its last sample would have arrived.
            due = start + (written + FRAME) / SAMPLE_RATE
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            context.audio.write(clip[i:i + FRAME])
            written += FRAME
            if speech_start is None and i + FRAME > onset:
                speech_start = time.monotonic() - (i + FRAME - onset) / SAMPLE_RATE
            if speech_end is None and i + FRAME >= offset:
                speech_end = time.monotonic() - (i + FRAME - offset) / SAMPLE_RATE
        marks.append((first_sample, speech_start, speech_end))
    return marks


def collect(context: BenchContext, marks) -> dict:
    """Each utterance belongs to the clip its speech ended in (events carry audio_end_s)."""
    hyps, translations, latencies, first_audio = [], [], [], []
    bounds = [m[0] for m in marks[1:]] + [float("inf")]
    for (first_sample, speech_start, speech_end), bound in zip(marks, bounds):
        mine = [(k, f) for _, k, f in context.events if k in ("transcript", "translation")
                and first_sample <= f["audio_end_s"] * SAMPLE_RATE < bound]
        hyps.append(" ".join(f["text"] for k, f in mine if k == "transcript" and f["final"]))
        translations.append(" ".join(f["text"] for k, f in mine if k == "translation" and f["final"]))
        plays = sorted(f["push"][0] + f["push"][2] for k, f in mine if k == "translation" and f.get("push"))
        after = [t for t in plays if t >= speech_end]
        if after:
            latencies.append(after[0] - speech_end)
        if plays:
            first_audio.append(plays[0] - speech_start)
    return {"hyps": hyps, "translations": translations, "latencies": latencies,
            "first_audio": first_audio, "events": context.events}


async def run_mode(mode: str, clips: list[tuple[str, str, np.ndarray]], settings, registry,
                   sessions: int = 1) -> dict:
    """``sessions`` sessions at once, each playing every clip, session k starting k * STAGGER s
    after the first (so utterances end close together, not at the same instant); the results
    of all sessions together."""
    contexts = [BenchContext(settings, registry) for _ in range(sessions)]
    pipelines = [TranslationPipeline(c, {"source": "en", "target": "es", "mode": mode}) for c in contexts]
    tasks = [asyncio.get_running_loop().create_task(p.run()) for p in pipelines]
    models = await registry.shared(TranslationPipeline)
    await asyncio.to_thread(models.asr, "en")  # warm: load time is not latency
    await asyncio.to_thread(models.translator, "en", "es")
    await asyncio.to_thread(models.translator("en", "es").translate, "Warm up.")
    await asyncio.sleep(0.5)
    marks = await asyncio.gather(*(play(c, clips, k * STAGGER) for k, c in enumerate(contexts)))
    await asyncio.sleep(3.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    results = [collect(c, m) for c, m in zip(contexts, marks)]
    return {key: [x for r in results for x in r[key]] for key in results[0]}


def stage_figures(result, clips, sessions: int = 1) -> dict:
    """Recognition compute per second of input speech (partial hypotheses included), ms per
    text translation, synthesis seconds per second of speech produced."""
    asr_s = asr_audio = mt_ms = tts_s = tts_audio = 0.0
    mt_calls = 0
    for _, kind, f in result["events"]:
        timings = f.get("timings_ms", {})
        if kind == "transcript":  # every recognition, partial hypotheses included
            asr_s += timings.get("asr", 0) / 1000
        if kind == "translation":
            mt_ms += timings.get("mt", 0)
            mt_calls += "mt" in timings
            tts_s += timings.get("tts", 0) / 1000
            tts_audio += f.get("audio_seconds", 0)
    asr_audio = sessions * sum(len(c[2]) / SAMPLE_RATE + 0.3 for c in clips)
    return {"asr_rtf": asr_s / asr_audio, "mt_ms": mt_ms / max(1, mt_calls),
            "tts_rtf": tts_s / max(tts_audio, 1e-6)}


def ms(values, q) -> str:
    """The ``q``-th percentile of seconds, in whole milliseconds."""
    return f"{harness.pct(values, q) * 1000:.0f}" if values else "–"


async def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--modes", default="utterance,streaming", help="translation modes, comma-separated")
    parser.add_argument("--voices", default="espeak,flite", help="English voices, comma-separated")
    parser.add_argument("--sessions", type=harness.int_list, default=harness.int_list("1,2,4,8"),
                        help="concurrent sessions, utterance mode (default 1,2,4,8; other modes: 1)")
    args = parser.parse_args()
    settings = Settings()
    clips = []
    for voice in args.voices.split(","):
        for english, spanish in SENTENCES:
            path = espeak("en-us", english) if voice == "espeak" else flite("slt", english)
            clips.append((english, spanish, load_audio(path)))
    registry = ModelRegistry(settings)
    models = registry.load(TranslationPipeline)
    mt_alone = [models.translator("en", "es").translate(c[0]) for c in clips]
    bleu_mt = sacrebleu.corpus_bleu(mt_alone, [[c[1] for c in clips]]).score
    rows = []
    load = os.getloadavg()
    for mode in args.modes.split(","):
        for sessions in args.sessions if mode == "utterance" else [1]:
            result = await run_mode(mode, clips, settings, registry, sessions)
            refs_en = [norm(c[0]) for c in clips] * sessions
            refs_es = [c[1] for c in clips] * sessions
            wer = jiwer.wer(refs_en, [norm(h) or "-" for h in result["hyps"]])
            bleu = sacrebleu.corpus_bleu(result["translations"], [refs_es]).score
            chrf = sacrebleu.corpus_chrf(result["translations"], [refs_es]).score
            stages = stage_figures(result, clips, sessions)
            rows.append((mode, sessions, len(refs_en), wer, bleu, chrf, result["latencies"], result["first_audio"],
                         stages))
            print(f"{mode} x{sessions}: p50 {ms(result['latencies'], 50)} ms, p95 {ms(result['latencies'], 95)} ms, "
                  f"chrF {chrf:.1f}, load {' '.join(f'{v:.1f}' for v in os.getloadavg())}", file=sys.stderr, flush=True)
            for (english, spanish, _), hyp, out in zip(clips, result["hyps"], result["translations"]):
                print(f"[{mode} x{sessions}] {english!r} -> {hyp!r} -> {out!r}", file=sys.stderr)
    print(f"Apertium alone on the reference English text: BLEU {bleu_mt:.1f}, "
          f"chrF {sacrebleu.corpus_chrf(mt_alone, [[c[1] for c in clips]]).score:.1f}\n")
    print(harness.markdown_table(
        ["mode", "sessions", "utterances", "WER (ASR)", "BLEU", "chrF",
         "end of speech → first translated audio p50 / p95 (ms)", "start of speech → first audio p50 (ms)",
         "ASR RTF", "MT ms/call", "TTS RTF"],
        [[mode, str(sessions), str(n), f"{wer:.1%}", f"{bleu:.1f}", f"{chrf:.1f}", f"{ms(lat, 50)} / {ms(lat, 95)}",
          ms(first, 50), f"{st['asr_rtf']:.3f}", f"{st['mt_ms']:.1f}", f"{st['tts_rtf']:.3f}"]
         for mode, sessions, n, wer, bleu, chrf, lat, first, st in rows]))
    print(f"\nload average: {' '.join(f'{v:.2f}' for v in load)} at the start, "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end (2 cores)")


if __name__ == "__main__":
    asyncio.run(main())
