"""Data: chat logs, the vocabulary, media decoding, and the features of a window of video + audio.

``window_features`` is the one definition of what the model sees. Preprocessing, ``generate`` and
the live pipeline all call it, with the ``FeatureConfig`` stored in the checkpoint, so a live
window is prepared exactly as the training windows were.

Feature files (``preprocess`` writes them, ``CommentDataset`` reads them), in one folder:
    manifest.json          {"format", "features": FeatureConfig, "streams": [{"name", "video", "chat", "count"}]}
    NAME.video.npy         float16 [comments, frames_per_window, frame_height*frame_width*3], RGB in 0..1
    NAME.audio.npy         float16 [comments, mel_steps, n_mels], log-mel
    NAME.comments.json     [{"time", "user", "text"}], one per row of the arrays
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

FEATURES_FORMAT = "commentary-features-1"


# --- preprocessing settings ------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureConfig:
    """How a window of stream becomes model input; saved in the feature folder and the checkpoint."""

    window: float = 5.0  # seconds of video and audio before each comment
    fps: float = 2.0  # video frames sampled per second of the window
    frame_width: int = 32
    frame_height: int = 32
    sample_rate: int = 16000  # the server's audio rate (media.audio.SAMPLE_RATE)
    n_fft: int = 1024
    hop_length: int = 320  # 20 ms mel frames
    n_mels: int = 64

    def __post_init__(self):
        if not (0.1 <= self.window <= 60 and 0.1 <= self.fps <= 30):
            raise ValueError("window must be 0.1-60 s and fps 0.1-30")
        if min(self.frame_width, self.frame_height, self.n_mels, self.hop_length) < 1:
            raise ValueError("frame size, n_mels and hop_length must be positive")
        if not 16 <= self.n_fft <= self.samples_per_window:
            raise ValueError(f"n_fft must be between 16 and the window's {self.samples_per_window} samples")

    @property
    def frames_per_window(self) -> int:
        return max(1, round(self.window * self.fps))

    @property
    def samples_per_window(self) -> int:
        return round(self.window * self.sample_rate)

    @property
    def video_dim(self) -> int:
        return self.frame_width * self.frame_height * 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FeatureConfig":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


# --- chat logs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatMessage:
    time: float  # seconds from the start of the chat log's clock
    user: str
    text: str


PLAIN_LINE = re.compile(r"^\[(?P<time>[\d:.]+)\]\s*(?P<user>[^:\s][^:]*?)\s*:\s?(?P<text>.*)$")
JSON_TIME_KEYS = ("time", "timestamp", "offset", "t")
JSON_USER_KEYS = ("user", "author", "username", "name")
JSON_TEXT_KEYS = ("message", "text", "comment", "body")


def parse_timestamp(value: Any) -> float:
    """Seconds from ``HH:MM:SS(.fff)``, ``MM:SS`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"(\d+:){1,2}\d+(\.\d+)?", value.strip()):
        seconds = 0.0
        for part in value.strip().split(":"):
            seconds = seconds * 60 + float(part)
        if any(float(p) >= 60 for p in value.strip().split(":")[1:]):
            raise ValueError(f"bad timestamp {value!r}: minutes and seconds must be below 60")
    else:
        raise ValueError(f"bad timestamp {value!r}: expected HH:MM:SS or seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"bad timestamp {value!r}")
    return seconds


def _first(record: dict, keys: tuple[str, ...], what: str) -> Any:
    for key in keys:
        if key in record:
            return record[key]
    raise ValueError(f"no {what} field (one of {', '.join(keys)})")


def parse_chat_line(line: str) -> ChatMessage:
    """One chat line: ``[HH:MM:SS] user: message`` or a JSON object
    (``{"time": 12.5 or "00:00:12", "user": "...", "message": "..."}``). Raises ValueError."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError("invalid JSON") from None
        if not isinstance(record, dict):
            raise ValueError("JSON line is not an object")
        time = parse_timestamp(_first(record, JSON_TIME_KEYS, "time"))
        text = _first(record, JSON_TEXT_KEYS, "message")
        user = next((record[k] for k in JSON_USER_KEYS if k in record), "")
        if not isinstance(text, str):
            raise ValueError("message is not a string")
        message = ChatMessage(time, str(user), text.strip())
    else:
        match = PLAIN_LINE.match(line)
        if not match:
            raise ValueError("not '[HH:MM:SS] user: message' nor a JSON object")
        message = ChatMessage(parse_timestamp(match["time"]), match["user"], match["text"].strip())
    if not message.text:
        raise ValueError("empty message")
    return message


def parse_chat(lines: Iterable[str]) -> tuple[list[ChatMessage], list[tuple[int, str]]]:
    """Messages sorted by time, and (line number, reason) for every malformed line (skipped)."""
    messages, problems = [], []
    for number, raw in enumerate(lines, 1):
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        try:
            messages.append(parse_chat_line(line))
        except ValueError as exc:
            problems.append((number, f"{exc}: {line[:80]!r}"))
    messages.sort(key=lambda m: m.time)
    return messages, problems


def read_chat(path: str | Path) -> tuple[list[ChatMessage], list[tuple[int, str]]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_chat(f)


# --- words ---------------------------------------------------------------------------------------
TOKEN = re.compile(r"[\w']+|[^\w\s]")
NO_SPACE_BEFORE = set(".,!?;:%)")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks ("LUL!!" -> ["lul", "!", "!"])."""
    return TOKEN.findall(text.lower())


def detokenize(tokens: Sequence[str]) -> str:
    out = ""
    for token in tokens:
        out += token if (not out or token in NO_SPACE_BEFORE) else " " + token
    return out


class Vocabulary:
    PAD, SOS, EOS, UNK = "<pad>", "<sos>", "<eos>", "<unk>"
    SPECIALS = (PAD, SOS, EOS, UNK)

    def __init__(self, tokens: Sequence[str]):
        if tuple(tokens[:len(self.SPECIALS)]) != self.SPECIALS:
            raise ValueError(f"a vocabulary starts with {self.SPECIALS}")
        self.tokens = list(tokens)
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.sos_id, self.eos_id, self.unk_id = range(len(self.SPECIALS))

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int = 10000) -> "Vocabulary":
        """The most frequent words (seen at least ``min_count`` times), ties in alphabetical order."""
        counts = Counter(token for text in texts for token in tokenize(text))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([*cls.SPECIALS, *words[:max(0, max_size - len(cls.SPECIALS))]])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, max_tokens: int) -> list[int]:
        """Word ids of ``text`` (without <sos>/<eos>), at most ``max_tokens``."""
        return [self.ids.get(t, self.unk_id) for t in tokenize(text)][:max_tokens]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids up to the first <eos>; padding and <sos> are left out."""
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.sos_id):
                words.append(self.tokens[i])
        return detokenize(words)


# --- features ------------------------------------------------------------------------------------
def resize_frame(rgb: np.ndarray, features: FeatureConfig) -> np.ndarray:
    """An RGB image at the model's frame size (area averaging, so small details blur, not alias)."""
    import cv2

    if rgb.shape[:2] == (features.frame_height, features.frame_width):
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    return cv2.resize(rgb, (features.frame_width, features.frame_height), interpolation=cv2.INTER_AREA)


@functools.lru_cache(maxsize=8)
def _mel_transform(features: FeatureConfig):
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=features.sample_rate, n_fft=features.n_fft, hop_length=features.hop_length,
        n_mels=features.n_mels)


def log_mel(audio: np.ndarray, features: FeatureConfig) -> np.ndarray:
    """[mel_steps, n_mels] log-mel spectrogram of mono float audio at ``features.sample_rate``."""
    import torch

    with torch.inference_mode():
        mel = _mel_transform(features)(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
        return torch.log(mel + 1e-6).T.numpy()


def window_features(frames: Sequence[np.ndarray | None], audio: np.ndarray,
                    features: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Model input for one window: ``frames`` are RGB images sampled ``features.fps`` times a
    second, oldest first (any size; None where there was no picture), ``audio`` the window's mono
    samples at ``features.sample_rate``. Returns (video [frames_per_window, video_dim] in 0..1,
    log-mel [mel_steps, n_mels]), both float32.

    A short window (the first seconds of a stream) is completed at its start: with its oldest
    frame repeated (the picture was already there) and with silence.
    """
    count = features.frames_per_window
    black = np.zeros((features.frame_height, features.frame_width, 3), np.uint8)
    small = [black if f is None else resize_frame(f, features) for f in list(frames)[-count:]] or [black]
    small = [small[0]] * (count - len(small)) + small
    video = np.stack(small).reshape(count, -1).astype(np.float32) / 255.0
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)[-features.samples_per_window:]
    audio = np.pad(audio, (features.samples_per_window - len(audio), 0))
    return video, log_mel(audio, features)


# --- media files -----------------------------------------------------------------------------------
@dataclass
class DecodedMedia:
    frames: np.ndarray  # [K, frame_height, frame_width, 3] uint8: the picture shown at time k / fps
    audio: np.ndarray  # mono float32 at features.sample_rate, from time 0
    duration: float  # seconds: the audio's length, or the last picture's time without audio
    features: FeatureConfig

    def window(self, end: float) -> tuple[np.ndarray, np.ndarray]:
        """``window_features`` of the window of stream that ends at ``end`` seconds: the frames
        sampled at or before it and the audio just before it, as the live pipeline sees them."""
        f = self.features
        last = min(int(math.floor(end * f.fps + 1e-6)), len(self.frames) - 1)
        frames = self.frames[max(0, last - f.frames_per_window + 1): last + 1] if last >= 0 else []
        stop = round(end * f.sample_rate)
        audio = self.audio[max(0, stop - f.samples_per_window): stop]
        return window_features(frames, np.pad(audio, (0, max(0, stop - len(self.audio)))), f)


def decode_media(path: str | Path, features: FeatureConfig) -> DecodedMedia:
    """Decode a media file with PyAV: the video sampled at ``features.fps`` (the latest frame at or
    before each sample time, resized), the audio as mono at ``features.sample_rate``. Either may be
    missing (black frames / silence)."""
    import av

    fps = features.fps
    grid: list[np.ndarray] = []  # grid[k]: the picture shown at k / fps
    chunks: list[np.ndarray] = []
    audio_start: float | None = None
    shown, shown_time, picture = None, 0.0, None  # the newest decoded frame, its time, its resized picture
    with av.open(str(path)) as container:
        streams = [*container.streams.video[:1], *container.streams.audio[:1]]
        if not streams:
            raise ValueError(f"{path}: no audio or video stream")
        for stream in streams:
            stream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=features.sample_rate)
        origin = (container.start_time or 0) / av.time_base  # times count from the file's start
        for packet in container.demux(*streams):
            for frame in packet.decode():
                if isinstance(frame, av.AudioFrame):
                    if audio_start is None:
                        audio_start = (frame.time or 0.0) - origin
                    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
                    continue
                time = (frame.time or 0.0) - origin
                while len(grid) / fps < time - 1e-6:  # sample times before this frame show the last one
                    if picture is None:  # only frames that are sampled are converted (a 60 fps source
                        # at fps 2 converts 1 frame in 30)
                        picture = resize_frame((frame if shown is None else shown).to_ndarray(format="rgb24"), features)
                    grid.append(picture)
                shown, shown_time, picture = frame, time, None
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if audio_start:  # the audio track starts later (pad) or earlier (trim) than time 0
        shift = round(audio_start * features.sample_rate)
        audio = np.pad(audio, (shift, 0)) if shift > 0 else audio[-shift:]
    duration = len(audio) / features.sample_rate if len(audio) else shown_time
    if shown is None:
        picture = np.zeros((features.frame_height, features.frame_width, 3), np.uint8)
    elif picture is None:
        picture = resize_frame(shown.to_ndarray(format="rgb24"), features)
    while len(grid) / fps <= duration + 1e-6:  # the last picture stays up to the end
        grid.append(picture)
    return DecodedMedia(np.stack(grid), audio, duration, features)


# --- preprocessing -----------------------------------------------------------------------------
def preprocess(streams: Sequence[tuple[str | Path, str | Path]], out_dir: str | Path,
               features: FeatureConfig, offset: float = 0.0,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Feature files for (video, chat log) pairs: one training example per chat message, the
    window of stream before it. ``offset``: the chat clock's time at the start of the video.
    Returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FEATURES_FORMAT, "features": features.to_dict(), "streams": []}
    for index, (video_path, chat_path) in enumerate(streams):
        messages, problems = read_chat(chat_path)
        for number, reason in problems[:10]:
            log(f"{chat_path}:{number}: skipped, {reason}")
        if len(problems) > 10:
            log(f"{chat_path}: {len(problems) - 10} more malformed lines skipped")
        media = decode_media(video_path, features)
        kept = [m for m in messages if 0 <= m.time - offset <= media.duration]
        if len(kept) < len(messages):
            log(f"{chat_path}: {len(messages) - len(kept)} messages outside the video's "
                f"{media.duration:.1f} s skipped")
        name = f"{index:03d}-{Path(video_path).stem}"
        video_rows = np.lib.format.open_memmap(
            out / f"{name}.video.npy", mode="w+", dtype=np.float16,
            shape=(len(kept), features.frames_per_window, features.video_dim))
        audio_rows = None
        for row, message in enumerate(kept):
            video, mel = media.window(message.time - offset)
            if audio_rows is None:
                audio_rows = np.lib.format.open_memmap(out / f"{name}.audio.npy", mode="w+", dtype=np.float16,
                                                       shape=(len(kept), *mel.shape))
            video_rows[row], audio_rows[row] = video, mel
        if audio_rows is None:  # no messages: an empty array of the right shape
            mel_shape = window_features([], np.zeros(0, np.float32), features)[1].shape
            np.save(out / f"{name}.audio.npy", np.zeros((0, *mel_shape), np.float16))
        else:
            audio_rows.flush()
        video_rows.flush()
        del video_rows, audio_rows
        (out / f"{name}.comments.json").write_text(json.dumps(
            [{"time": m.time - offset, "user": m.user, "text": m.text} for m in kept], ensure_ascii=False))
        manifest["streams"].append({"name": name, "video": str(video_path), "chat": str(chat_path),
                                    "count": len(kept), "malformed_lines": len(problems)})
        log(f"{video_path}: {len(kept)} comments, {media.duration:.1f} s")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


class CommentDataset:
    """The examples of a feature folder: (video, log-mel, comment text) per item, read from
    memory-mapped arrays (a torch ``Dataset`` by protocol: ``__len__`` and ``__getitem__``)."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{directory}: no manifest.json; run `python -m pipelines.commentary preprocess` first") from None
        if manifest.get("format") != FEATURES_FORMAT:
            raise ValueError(f"{directory}: not a commentary feature folder ({manifest.get('format')!r})")
        self.features = FeatureConfig.from_dict(manifest["features"])
        self.videos, self.audios, self.texts, self.rows = [], [], [], []
        for stream in manifest["streams"]:
            name = stream["name"]
            self.videos.append(np.load(directory / f"{name}.video.npy", mmap_mode="r"))
            self.audios.append(np.load(directory / f"{name}.audio.npy", mmap_mode="r"))
            comments = json.loads((directory / f"{name}.comments.json").read_text())
            self.texts.append([c["text"] for c in comments])
            self.rows += [(len(self.videos) - 1, row) for row in range(len(comments))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        stream, row = self.rows[index]
        return (np.asarray(self.videos[stream][row], dtype=np.float32),
                np.asarray(self.audios[stream][row], dtype=np.float32), self.texts[stream][row])

    def text(self, index: int) -> str:
        stream, row = self.rows[index]
        return self.texts[stream][row]
