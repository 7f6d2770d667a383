#!/usr/bin/env python
"""Accuracy of the embedded ``pitch`` gender backend on offline voices.

    .venv/bin/python bench/gender_accuracy.py [--per-voice] [--split eval|tune|all]

Voices (nothing is downloaded):
* espeak-ng English voice variants (``espeak-ng --voices=variant``; the label is the variant's
  declared gender, M or F), the whispering variants kept apart (no F0 to measure);
* espeak-ng in other languages, each with its default (male) voice and two female variants;
* flite's voices (``flite -lv``): slt is a US female speaker, awb (Scottish), rms (US) and kal
  (US) are male speakers;
* the real recordings shipped with pocketsphinx: 5 LibriVox clips (Sense and Sensibility ch. 1,
  one reader) and the test utterances in /usr/share/pocketsphinx/test/data. Their speakers'
  genders are not documented, so they are labelled from their pitch only when the whole
  recording's F0 interquartile range lies inside one sex's typical range (male 70-150 Hz,
  female 165-300 Hz). That label comes from pitch, so checking a pitch classifier against it is
  partly circular: those rows are marked ``*`` and kept out of the totals.

Each recording goes through the pipeline's own gating (``GenderPipeline.run``): silero VAD on
128 ms hops, speech kept in a 3 s circular buffer, a result about once a second of speech; every
result is one window here. The table gives, per source, the voices and windows per sex, the
accuracy on female and on male windows, and the mean confidence of correct and incorrect
results; windows without any voiced frame (score 0.5, no information) are counted as
"abstained" and left out of the accuracies.

Tuning and evaluation voices: no parameter of the backend was fitted to these voices (its
160 Hz boundary, between typical adult male and female F0, and its slope were set beforehand
and left alone; the YIN fixes that came out of this benchmark
are bug fixes checked on synthetic signals, see tests/test_gender.py). Should anything be tuned
later, a fixed split is kept ready: the odd-numbered espeak-ng variants and languages are the
tuning voices, everything else (all of flite and the real recordings included) the evaluation
voices; ``--split eval`` or ``--split tune`` reports one of them alone (default ``all``).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench import harness  # noqa: E402
from bench.harness import markdown_table  # noqa: E402
from media.buffers import SAMPLE_RATE  # noqa: E402
from pipelines.gender.pipeline import HOP, GenderPipeline, PitchGender  # noqa: E402
from pipelines.common.pitch import yin  # noqa: E402
from pipelines.common.vad import SileroVAD  # noqa: E402
from testing.media import LIBRIVOX, espeak, flite, load_audio  # noqa: E402

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")

ENGLISH = ("The quick brown fox jumps over the lazy dog. Every morning I walk to the station "
           "and read the news while the train rolls through the quiet countryside. "
           "Would you like a cup of tea before we leave?")
OTHER = {  # language: text (a few sentences in the language itself)
    "de": "Der schnelle braune Fuchs springt über den faulen Hund. Jeden Morgen gehe ich zum "
          "Bahnhof und lese die Zeitung, während der Zug durch die Landschaft fährt.",
    "fr": "Le renard brun rapide saute par-dessus le chien paresseux. Chaque matin je marche "
          "jusqu'à la gare et je lis le journal pendant que le train traverse la campagne.",
    "es": "El rápido zorro marrón salta sobre el perro perezoso. Cada mañana camino hasta la "
          "estación y leo las noticias mientras el tren cruza el campo tranquilo.",
    "it": "La veloce volpe marrone salta sopra il cane pigro. Ogni mattina vado a piedi alla "
          "stazione e leggo il giornale mentre il treno attraversa la campagna.",
    "pt": "A rápida raposa castanha salta por cima do cão preguiçoso. Todas as manhãs vou a pé "
          "até à estação e leio as notícias enquanto o comboio atravessa o campo.",
    "nl": "De snelle bruine vos springt over de luie hond. Elke ochtend loop ik naar het station "
          "en lees ik de krant terwijl de trein door het stille platteland rijdt.",
    "pl": "Szybki brązowy lis przeskakuje nad leniwym psem. Każdego ranka idę na dworzec i czytam "
          "wiadomości, gdy pociąg jedzie przez spokojną wieś.",
    "ru": "Быстрая коричневая лиса прыгает через ленивую собаку. Каждое утро я иду на вокзал и "
          "читаю новости, пока поезд едет через тихую деревню.",
    "sv": "Den snabba bruna räven hoppar över den lata hunden. Varje morgon går jag till "
          "stationen och läser nyheterna medan tåget rullar genom landskapet.",
    "tr": "Hızlı kahverengi tilki tembel köpeğin üzerinden atlar. Her sabah istasyona yürür ve "
          "tren sessiz kırsaldan geçerken haberleri okurum.",
    "hi": "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है। हर सुबह मैं स्टेशन तक पैदल जाता हूँ और "
          "अख़बार पढ़ता हूँ।",
    "cmn": "敏捷的棕色狐狸跳过了懒狗。每天早上我走到车站，在火车穿过安静的乡村时看新闻。",
    "vi": "Con cáo nâu nhanh nhẹn nhảy qua con chó lười. Mỗi sáng tôi đi bộ đến nhà ga và đọc "
          "báo trong khi tàu chạy qua vùng quê yên tĩnh.",
}
OTHER_VARIANTS = [("", "male"), ("+f2", "female"), ("+f4", "female")]
FLITE = {"slt": "female", "awb": "male", "rms": "male", "kal": "male", "kal16": "male",
         "awb_time": "male"}
FLITE_TIME_TEXT = "The time is now, a quarter past eleven in the morning. It is nearly ten to four."

# Typical adult speaking-F0 ranges (e.g. Baken & Orlikoff, Clinical Measurement of Speech and
# Voice): only a recording whose whole interquartile range lies inside one of them is labelled.
MALE_RANGE = (70.0, 150.0)
FEMALE_RANGE = (165.0, 300.0)


@dataclass
class Voice:
    source: str
    name: str
    label: str | None  # "female" | "male" | None (unknown)
    audio: np.ndarray
    tuning: bool = False  # used when revising the backend: kept out of --split eval
    f0_labelled: bool = False  # label inferred from pitch (circular): kept out of totals
    note: str = ""


@dataclass
class Window:
    voice: Voice
    label: str
    score: float
    f0: float | None
    voiced: int


# ------------------------------------------------------------------------------------------------
# Voices

def espeak_variants() -> list[tuple[str, str]]:
    """(variant file name, "female"|"male") for every variant espeak-ng lists."""
    out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True,
                         check=True).stdout
    variants = []
    for line in out.splitlines()[1:]:
        m = re.match(r"\s*\d+\s+variant\s+\S+/([MF-])\s+\S+\s+!v/(.+?)\s*(\(.*\))?\s*$", line)
        if m and m.group(1) in "MF":
            variants.append((m.group(2), "female" if m.group(1) == "F" else "male"))
    return variants


def collect_espeak_english() -> list[Voice]:
    voices = [Voice("espeak-ng en", "en", "male", load_audio(espeak("en", ENGLISH))),
              Voice("espeak-ng en", "en-us", "male", load_audio(espeak("en-us", ENGLISH))),
              Voice("espeak-ng en", "en-gb-scotland", "male", load_audio(espeak("en-gb-scotland", ENGLISH)))]
    for i, (variant, label) in enumerate(sorted(espeak_variants(), key=lambda v: v[0].lower())):
        source = "espeak-ng en whisper" if "whisper" in variant.lower() else "espeak-ng en"
        try:
            audio = load_audio(espeak(f"en+{variant}", ENGLISH))
        except Exception as exc:  # a broken variant file
            print(f"skipping espeak-ng variant {variant!r}: {exc}", file=sys.stderr)
            continue
        voices.append(Voice(source, f"en+{variant}", label, audio, tuning=i % 2 == 1))
    return voices


def collect_espeak_other() -> list[Voice]:
    voices = []
    for i, (lang, text) in enumerate(OTHER.items()):
        for suffix, label in OTHER_VARIANTS:
            audio = load_audio(espeak(lang + suffix, text))
            voices.append(Voice("espeak-ng other languages", lang + suffix, label, audio,
                                tuning=i % 2 == 1))
    return voices


def collect_flite() -> list[Voice]:
    listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split(":")[-1].split()
    voices = []
    for name in listed:
        if name not in FLITE:
            print(f"flite voice {name!r} has no known gender; skipped", file=sys.stderr)
            continue
        text = FLITE_TIME_TEXT if name == "awb_time" else ENGLISH
        voices.append(Voice("flite", name, FLITE[name], load_audio(flite(name, text))))
    return voices


def f0_label(audio: np.ndarray) -> tuple[str | None, str]:
    """A label from the recording's whole F0 distribution, only when it is unambiguous."""
    f0, aperiodicity = yin(audio, SAMPLE_RATE)
    voiced = f0[(f0 > 0) & (aperiodicity < 0.2)]
    if len(voiced) < 50:
        return None, f"only {len(voiced)} voiced frames"
    q1, q2, q3 = np.percentile(voiced, [25, 50, 75])
    note = f"F0 quartiles {q1:.0f}/{q2:.0f}/{q3:.0f} Hz"
    if MALE_RANGE[0] <= q1 and q3 <= MALE_RANGE[1]:
        return "male", note
    if FEMALE_RANGE[0] <= q1 and q3 <= FEMALE_RANGE[1]:
        return "female", note
    return None, note + " (ambiguous)"


def raw_pcm(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0


def collect_recordings() -> list[Voice]:
    voices = []
    # One reader for the 5 LibriVox clips: label them together.
    clips = [(p.stem.rsplit("-", 1)[-1], load_audio(p)) for p in sorted(LIBRIVOX.glob("*.wav"))]
    if clips:
        label, note = f0_label(np.concatenate([a for _, a in clips]))
        for name, audio in clips:
            voices.append(Voice("LibriVox (S&S ch.1)", name, label, audio, f0_labelled=True, note=note))
    # The other pocketsphinx test utterances: speakers unknown, each file on its own.
    files = sorted((POCKETSPHINX / "cards").glob("*.wav")) + sorted(POCKETSPHINX.glob("*.raw")) \
        + sorted((POCKETSPHINX / "tidigits").glob("*.raw"))
    for path in files:
        audio = raw_pcm(path) if path.suffix == ".raw" else load_audio(path)
        label, note = f0_label(audio)
        voices.append(Voice("pocketsphinx test data", f"{path.parent.name}/{path.name}", label, audio,
                            f0_labelled=True, note=note))
    return voices


# ------------------------------------------------------------------------------------------------
# The pipeline's gating, offline

def speech_windows(audio: np.ndarray, vad: SileroVAD, opts: dict) -> list[np.ndarray]:
    """The clips GenderPipeline.run would classify for this audio (its loop on a simulated clock)."""
    stream = vad.stream()
    hop = int(HOP * SAMPLE_RATE)
    window = int(opts["window"] * SAMPLE_RATE)
    speech: list[np.ndarray] = []
    speech_samples = fresh = 0
    last = -np.inf
    clips = []
    for start in range(0, len(audio) - hop + 1, hop):
        chunk = audio[start:start + hop]
        probs = stream(chunk)
        if len(probs) and probs.max() >= opts["vad_threshold"]:
            speech.append(chunk)
            speech_samples += len(chunk)
            fresh += len(chunk)
            while speech_samples - len(speech[0]) >= window:
                speech_samples -= len(speech.pop(0))
        now = (start + hop) / SAMPLE_RATE
        if (speech_samples >= opts["min_speech"] * SAMPLE_RATE and fresh >= 0.25 * SAMPLE_RATE
                and now - last >= opts["interval"]):
            last, fresh = now, 0
            clips.append(np.concatenate(speech))
    return clips


def classify(voices: list[Voice], backend: PitchGender, opts: dict) -> list[Window]:
    vad = SileroVAD()
    windows = []
    for voice in voices:
        clips = speech_windows(voice.audio, vad, opts)
        for result in backend.predict(clips):
            windows.append(Window(voice, result.label, result.score, result.detail.get("f0_hz"),
                                  result.detail.get("voiced_frames", 0)))
    return windows


# ------------------------------------------------------------------------------------------------
# Report

def abstained(w: Window) -> bool:
    return w.voiced == 0 or w.score == 0.5


def fmt_acc(ws: list[Window]) -> str:
    ws = [w for w in ws if not abstained(w)]
    if not ws:
        return "-"
    ok = sum(w.label == w.voice.label for w in ws)
    return f"{ok / len(ws):6.1%} ({ok}/{len(ws)})"


def fmt_mean(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "-"


def row(name: str, ws: list[Window]) -> list[str]:
    voices = {(w.voice.source, w.voice.name): w.voice.label for w in ws}
    fem = [w for w in ws if w.voice.label == "female"]
    mal = [w for w in ws if w.voice.label == "male"]
    counted = [w for w in ws if not abstained(w) and w.voice.label]
    correct = [w.score for w in counted if w.label == w.voice.label]
    wrong = [w.score for w in counted if w.label != w.voice.label]
    nf = sum(1 for v in voices.values() if v == "female")
    nm = sum(1 for v in voices.values() if v == "male")
    return [name, f"{nf}F/{nm}M", f"{len(fem)}F/{len(mal)}M", fmt_acc(fem), fmt_acc(mal),
            fmt_mean(correct), fmt_mean(wrong), str(sum(abstained(w) for w in ws))]


def calibration(ws: list[Window]) -> str:
    counted = [w for w in ws if not abstained(w)]
    bins = [("score > 0.9", lambda s: s > 0.9), ("0.7 < score <= 0.9", lambda s: 0.7 < s <= 0.9),
            ("0.5 < score <= 0.7", lambda s: 0.5 < s <= 0.7)]
    rows = []
    for name, test in bins:
        sel = [w for w in counted if test(w.score)]
        ok = sum(w.label == w.voice.label for w in sel)
        rows.append([name, str(len(sel)), f"{ok / len(sel):.1%}" if sel else "-",
                     fmt_mean([w.score for w in sel])])
    rows.append(["abstained (0.5)", str(len(ws) - len(counted)), "-", "-"])
    return markdown_table(["confidence", "windows", "accuracy", "mean score"], rows, pad=True)


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--split", choices=["all", "eval", "tune"], default="all")
    ap.add_argument("--per-voice", action="store_true", help="also list every voice's windows")
    args = ap.parse_args()

    t0 = time.perf_counter()
    groups = [collect_espeak_english(), collect_espeak_other(), collect_flite(), collect_recordings()]
    voices = [v for g in groups for v in g]
    if args.split == "eval":
        voices = [v for v in voices if not v.tuning]
    elif args.split == "tune":
        voices = [v for v in voices if v.tuning]
    opts = dict(GenderPipeline.defaults)
    windows = classify(voices, PitchGender(), opts)
    elapsed = time.perf_counter() - t0

    by_source: dict[str, list[Window]] = defaultdict(list)
    for w in windows:
        by_source[w.voice.source].append(w)
    header = ["source", "voices", "windows", "acc female", "acc male", "conf correct",
              "conf incorrect", "abstained"]
    rows = []
    for source, ws in by_source.items():
        star = "*" if any(w.voice.f0_labelled for w in ws) else ""
        rows.append(row(source + star, [w for w in ws if w.voice.label]))
        unlabelled = [w for w in ws if not w.voice.label]
        if unlabelled:
            rows.append([f"  {source} unlabelled", str(len({w.voice.name for w in unlabelled})),
                         str(len(unlabelled)), "-", "-", "-", "-", str(sum(map(abstained, unlabelled)))])
    truth = [w for w in windows if w.voice.label and not w.voice.f0_labelled]
    voiced_truth = [w for w in truth if w.voice.source != "espeak-ng en whisper"]
    rows.append(row("ALL (declared labels)", truth))
    rows.append(row("ALL voiced (no whisper)", voiced_truth))

    print(f"PitchGender on {len(voices)} voices, {len(windows)} windows "
          f"(window {opts['window']} s, a result every {opts['interval']} s of speech, "
          f"split={args.split}; {elapsed:.0f} s)\n")
    print(markdown_table(header, rows, pad=True))
    print("\n* labelled from the recording's own F0 distribution (circular; not in the ALL rows):")
    for v in voices:
        if v.f0_labelled:
            print(f"    {v.source} {v.name}: {v.label or 'unlabelled'} ({v.note})")
    print("\nCalibration, windows of voices with declared labels:\n")
    print(calibration(truth))

    mistakes = defaultdict(list)
    for w in truth:
        if not abstained(w) and w.label != w.voice.label:
            mistakes[(w.voice.source, w.voice.name)].append(w)
    if mistakes:
        print("\nVoices with wrong windows (wrong/total, median F0 of those windows):")
        for (source, name), ws in sorted(mistakes.items()):
            total = sum(1 for w in truth if w.voice.name == name and w.voice.source == source)
            f0s = [w.f0 for w in ws if w.f0]
            print(f"    {source} {name} ({ws[0].voice.label}): {len(ws)}/{total}, "
                  f"F0 {np.median(f0s) if f0s else float('nan'):.0f} Hz")
    if args.per_voice:
        print("\nPer voice: label, windows, predictions (label score F0)")
        per = defaultdict(list)
        for w in windows:
            per[(w.voice.source, w.voice.name)].append(w)
        for (source, name), ws in per.items():
            preds = " ".join(f"{w.label[0]}{w.score:.2f}@{w.f0 or 0:.0f}" for w in ws)
            print(f"    {source:26s} {name:22s} {ws[0].voice.label or '?':6s} {len(ws):2d}  {preds}")


if __name__ == "__main__":
    main()
