"""Text translation backends, each ``translate(text) -> text`` for one language pair.

* ``ApertiumTranslator``: Apertium rule-based MT from Debian's packages (GPL: run as a separate
  process, never imported). One long-lived process per pair answers sentence by sentence in
  null-flush mode, so a sentence costs milliseconds instead of a 0.7 s pipeline start.
* ``TransformersTranslator``: any transformers seq2seq model (Marian ``Helsinki-NLP/opus-mt-en-es``,
  NLLB ``facebook/nllb-200-distilled-600M``) by hub id or local folder.

Whisper's own ``translate`` task (any language into English) lives in ``asr.WhisperASR``.

``ApertiumMT`` and ``TransformersMT`` serve every pair of their backend as one model of the server
(``predict(requests) -> texts``, over ``MTRequest``s; see models.py).
"""
from __future__ import annotations

import functools
import os
import re
import select
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

APERTIUM_MODES = Path("/usr/share/apertium/modes")
# Apertium names languages with ISO 639-3 (eng-spa) or 639-1 (fr-es) codes; clients use 639-1.
ISO3_TO_1 = {"eng": "en", "spa": "es", "cat": "ca", "fra": "fr", "por": "pt", "ita": "it",
             "deu": "de", "glg": "gl", "eus": "eu", "oci": "oc", "arg": "an", "ron": "ro"}
STREAM_SPECIAL = re.compile(r"([\\\[\]^$/@<>{}*#~|+])")  # characters with a meaning in Apertium's stream format
TIMEOUT = 10.0
REQUEST_END = b"\0\0\0"  # ends each request to an Apertium pipeline (ApertiumTranslator)


@functools.lru_cache(maxsize=4)
def apertium_pairs(modes_dir: Path = APERTIUM_MODES) -> dict[tuple[str, str], Path]:
    """(source, target) in ISO 639-1 -> mode file, for the installed pairs (variants skipped).
    Looked up once per process: Debian packages do not come and go under a running server."""
    pairs = {}
    if not shutil.which("apertium-wblank-mode") or not modes_dir.is_dir():
        return pairs
    for mode in sorted(modes_dir.glob("*.mode")):
        parts = mode.stem.split("-")
        if len(parts) != 2 or "_" in mode.stem:  # eng-cat_valencia, eco-fr-es: variants and helpers
            continue
        src, tgt = (ISO3_TO_1.get(p, p) for p in parts)
        if len(src) == 2 and len(tgt) == 2:
            pairs[(src, tgt)] = mode
    return pairs


class ApertiumTranslator:
    """One long-lived Apertium pipeline for one pair, shared by every session (thread-safe).

    The mode file's programs are run directly in null-flush mode (``-z``): each request is the
    text in Apertium's stream format followed by NUL bytes, and each program flushes its output
    at a NUL. ``lt-proc -b`` (bilingual lookup) only releases a sentence when it reads the byte
    after its NUL, and some pairs' taggers swallow one NUL (eng-cat's: 3 in, 2 out, where eng-spa
    gives 3 out), so every request ends with three NULs, and how many end an answer is counted
    once per pipeline start, on a probe word.
    """

    name = "apertium"

    def __init__(self, source: str, target: str, mode: Path):
        self.source, self.target = source, target
        script = subprocess.run(["apertium-wblank-mode", "-z", str(mode)], check=True,
                                capture_output=True, text=True).stdout.strip()
        # $1: generator option (-n: no unknown-word marks), $2: tagger option (none).
        self.command = ["bash", "-c", script, "apertium", "-n", ""]
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._answer_nuls = 2  # NULs that end an answer (counted at each start)

    def _start(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
            self._process = process
            process.stdin.write(b"a" + REQUEST_END)
            process.stdin.flush()
            answer = self._read_answer(process, 2)
            fd = process.stdout.fileno()
            while select.select([fd], [], [], 0.3)[0]:  # the rest of the probe's NULs, if any
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise OSError("apertium exited")
                answer += chunk
            self._answer_nuls = answer.count(b"\0")
        return self._process

    def translate(self, text: str) -> str:
        text = " ".join(text.replace("\0", " ").split())
        if not text:
            return ""
        with self._lock:
            try:
                process = self._start()
                process.stdin.write(STREAM_SPECIAL.sub(r"\\\1", text).encode() + REQUEST_END)
                process.stdin.flush()
                answer = self._read_answer(process, self._answer_nuls).replace(b"\0", b"")
            except (OSError, TimeoutError):
                self.close()  # a wedged or dead pipeline is restarted on the next request
                raise
        # Unescape; words Apertium drops leave double spaces behind.
        answer = " ".join(re.sub(r"\\(.)", r"\1", answer.decode("utf-8", "replace")).split())
        # The txt deformatter normally keeps sentence-final punctuation that the bare pipeline drops.
        if text[-1] in ".!?" and answer and answer[-1] not in ".!?":
            answer += text[-1]
        return answer

    @staticmethod
    def _read_answer(process: subprocess.Popen, nuls: int) -> bytes:
        out = b""
        fd = process.stdout.fileno()
        while out.count(b"\0") < nuls:
            ready, _, _ = select.select([fd], [], [], TIMEOUT)
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                raise TimeoutError("apertium did not answer") if not ready else OSError("apertium exited")
            out += chunk
        return out

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


NLLB_CODES = {"en": "eng_Latn", "es": "spa_Latn", "fr": "fra_Latn", "de": "deu_Latn", "ca": "cat_Latn",
              "it": "ita_Latn", "pt": "por_Latn", "nl": "nld_Latn", "ru": "rus_Cyrl", "zh": "zho_Hans",
              "ja": "jpn_Jpan", "ar": "arb_Arab", "hi": "hin_Deva", "pl": "pol_Latn", "uk": "ukr_Cyrl"}


class TransformersTranslator:
    """A transformers seq2seq translation model (Marian, NLLB, M2M100) on cpu or cuda.

    ``model`` may contain ``{src}`` and ``{tgt}`` (``Helsinki-NLP/opus-mt-{src}-{tgt}``) to pick a
    model per pair. Multilingual tokenizers (NLLB, M2M100) get the source and target language.
    """

    name = "transformers"

    def __init__(self, model: str, source: str, target: str, device: str = "cpu"):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.torch, self.device = torch, device
        self.source, self.target = source, target
        model = model.format(src=source, tgt=target)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model).to(device).eval()
        self.generate_kwargs: dict = {}
        codes = getattr(self.tokenizer, "lang_code_to_id", None) or {}
        vocab = self.tokenizer.get_vocab()
        for src_code, tgt_code in ((NLLB_CODES.get(source), NLLB_CODES.get(target)),
                                   (f"__{source}__", f"__{target}__")):
            if tgt_code and (tgt_code in codes or tgt_code in vocab):
                self.tokenizer.src_lang = src_code if src_code in vocab else getattr(self.tokenizer, "src_lang", None)
                self.generate_kwargs["forced_bos_token_id"] = self.tokenizer.convert_tokens_to_ids(tgt_code)
                break
        # Never generate past the model's position table (Marian: 512, NLLB: 1024).
        self.max_tokens = min(256, getattr(self.model.config, "max_position_embeddings", 256) - 2)
        self._lock = threading.Lock()

    def translate(self, text: str) -> str:
        return self.translate_batch([text])[0]

    def translate_batch(self, texts: Sequence[str]) -> list[str]:
        """Several texts in one padded ``generate`` (greedy: each as it would be alone)."""
        stripped = [t.strip() for t in texts]
        todo = [t for t in stripped if t]
        if not todo:
            return [""] * len(texts)
        inputs = self.tokenizer(todo, return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_tokens).to(self.device)
        inputs.pop("token_type_ids", None)
        with self._lock, self.torch.inference_mode():
            tokens = self.model.generate(**inputs, num_beams=1, max_new_tokens=self.max_tokens,
                                         **self.generate_kwargs)
        done = iter(t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True))
        return [next(done) if t else "" for t in stripped]

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class MTRequest:
    """One text to translate (what crosses to a model that may run in another process)."""
    text: str
    source: str
    target: str


class PairTranslation:
    """Every pair of one backend: a translator per pair, made on first use (thread-safe)."""

    def __init__(self):
        self._pairs: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def make(self, source: str, target: str):
        raise NotImplementedError

    def translator(self, source: str, target: str):
        with self._lock:  # loading twice in parallel would double the memory
            if (source, target) not in self._pairs:
                self._pairs[(source, target)] = self.make(source, target)
            return self._pairs[(source, target)]

    def predict(self, requests: Sequence[MTRequest]) -> list[str]:
        return [self.translator(r.source, r.target).translate(r.text) for r in requests]

    def close(self) -> None:
        with self._lock:
            translators, self._pairs = list(self._pairs.values()), {}
        for translator in translators:
            translator.close()


class ApertiumMT(PairTranslation):
    name = "apertium"

    def make(self, source: str, target: str) -> ApertiumTranslator:
        return ApertiumTranslator(source, target, apertium_pairs()[(source, target)])


class TransformersMT(PairTranslation):
    name = "transformers"

    def __init__(self, model: str, device: str = "cpu"):
        super().__init__()
        self.model, self.device = model, device

    def make(self, source: str, target: str) -> TransformersTranslator:
        return TransformersTranslator(self.model, source, target, self.device)

    def predict(self, requests: Sequence[MTRequest]) -> list[str]:
        """One ``generate`` per language pair in the batch, not one per request."""
        out: list[str] = [""] * len(requests)
        pairs: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(requests):
            pairs.setdefault((r.source, r.target), []).append(i)
        for (source, target), indices in pairs.items():
            texts = self.translator(source, target).translate_batch([requests[i].text for i in indices])
            for i, text in zip(indices, texts):
                out[i] = text
        return out
