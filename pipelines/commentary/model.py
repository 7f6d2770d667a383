"""The multimodal LSTM: a video encoder (LSTM over flattened resized frames) and an audio encoder
(LSTM over log-mel frames); their final hidden states, concatenated and passed through a fusion
layer, become the initial state of an LSTM decoder that writes the comment word by word between
<sos> and <eos>.

A checkpoint is one file (``torch.save`` of plain data, loaded with ``weights_only=True``): the
model's sizes and weights (input normalisation included), the vocabulary, the ``FeatureConfig``
the features were made with, and the training state for ``--resume``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from pipelines.commentary.data import FeatureConfig, Vocabulary

CHECKPOINT_FORMAT = "commentary-checkpoint-1"


@dataclass
class ModelConfig:
    video_dim: int  # frame_height * frame_width * 3
    audio_dim: int  # n_mels
    vocab_size: int
    hidden_size: int = 256
    embed_size: int = 128
    num_layers: int = 1
    dropout: float = 0.1
    max_tokens: int = 24  # longest comment in words; longer ones are cut when training


class CommentaryModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        h, layers = config.hidden_size, config.num_layers
        between = config.dropout if layers > 1 else 0.0  # LSTM dropout acts between stacked layers
        self.video_encoder = nn.LSTM(config.video_dim, h, layers, batch_first=True, dropout=between)
        self.audio_encoder = nn.LSTM(config.audio_dim, h, layers, batch_first=True, dropout=between)
        # Both encoders' last hidden states -> (h0, c0) of every decoder layer.
        self.fusion = nn.Sequential(nn.Linear(2 * h, 2 * layers * h), nn.Tanh())
        self.embedding = nn.Embedding(config.vocab_size, config.embed_size, padding_idx=0)
        self.decoder = nn.LSTM(config.embed_size, h, layers, batch_first=True, dropout=between)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(h, config.vocab_size)
        # Input normalisation measured on the training set (train.py sets it); a buffer, so it is
        # saved and loaded with the weights and the inputs need no other preparation.
        self.register_buffer("video_mean", torch.zeros(config.video_dim))
        self.register_buffer("video_std", torch.ones(config.video_dim))
        self.register_buffer("audio_mean", torch.zeros(config.audio_dim))
        self.register_buffer("audio_std", torch.ones(config.audio_dim))

    def set_normalization(self, video_mean, video_std, audio_mean, audio_std) -> None:
        for name, value in (("video_mean", video_mean), ("video_std", video_std),
                            ("audio_mean", audio_mean), ("audio_std", audio_std)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))

    def encode(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B, frames, video_dim], audio [B, mel_steps, n_mels] -> the decoder's (h0, c0)."""
        _, (video_h, _) = self.video_encoder((video - self.video_mean) / self.video_std)
        _, (audio_h, _) = self.audio_encoder((audio - self.audio_mean) / self.audio_std)
        fused = self.fusion(torch.cat([video_h[-1], audio_h[-1]], dim=-1))
        batch, layers, h = video.shape[0], self.config.num_layers, self.config.hidden_size
        h0, c0 = fused.view(batch, 2, layers, h).permute(1, 2, 0, 3)
        return h0.contiguous(), c0.contiguous()

    def forward(self, video: torch.Tensor, audio: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits [B, T, vocab] of the word after each of ``tokens`` [B, T]."""
        out, _ = self.decoder(self.dropout(self.embedding(tokens)), self.encode(video, audio))
        return self.output(self.dropout(out))

    @torch.inference_mode()
    def generate(self, video: torch.Tensor, audio: torch.Tensor, vocab: Vocabulary, temperature: float = 0.0,
                 top_k: int = 0, max_tokens: int | None = None,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Word ids of one comment per window (without <sos>/<eos>)."""
        max_tokens = max_tokens or self.config.max_tokens
        state = self.encode(video, audio)
        batch = video.shape[0]
        token = torch.full((batch, 1), vocab.sos_id, dtype=torch.long, device=video.device)
        done = torch.zeros(batch, dtype=torch.bool, device=video.device)
        words: list[torch.Tensor] = []
        for _ in range(max_tokens):
            out, state = self.decoder(self.embedding(token), state)
            logits = self.output(out[:, -1]).float()
            logits[:, [vocab.pad_id, vocab.sos_id, vocab.unk_id]] = float("-inf")  # never written
            step = sample_next(logits, temperature, top_k, generator)
            step = torch.where(done, torch.full_like(step, vocab.eos_id), step)
            words.append(step)
            done |= step == vocab.eos_id
            if bool(done.all()):
                break
            token = step[:, None]
        ids = torch.stack(words, dim=1).tolist()
        return [row[:row.index(vocab.eos_id)] if vocab.eos_id in row else row for row in ids]


def sample_next(logits: torch.Tensor, temperature: float, top_k: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy (the most likely word) when ``temperature`` is 0; otherwise a draw from
    softmax(logits / temperature), restricted to the ``top_k`` most likely words when top_k > 0."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


# --- checkpoints -----------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, model: CommentaryModel, vocab: Vocabulary, features: FeatureConfig,
                    **training: Any) -> None:
    """Write atomically (a crash mid-save leaves the previous checkpoint intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "model_config": dataclasses.asdict(model.config),
             "state_dict": model.state_dict(), "vocab": list(vocab.tokens),
             "features": features.to_dict(), "training": training}
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def read_checkpoint(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no commentary checkpoint at {path}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a commentary checkpoint")
    return state


class Commentator:
    """A trained model with its vocabulary and preprocessing settings: windows in, comments out."""

    def __init__(self, model: CommentaryModel, vocab: Vocabulary, features: FeatureConfig, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.features = features
        self.device = device

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Commentator":
        state = read_checkpoint(path, device)
        model = CommentaryModel(ModelConfig(**state["model_config"]))
        model.load_state_dict(state["state_dict"])
        return cls(model, Vocabulary(state["vocab"]), FeatureConfig.from_dict(state["features"]), device)

    def comment(self, windows: Sequence[tuple[np.ndarray, np.ndarray]], temperature: float = 0.0,
                top_k: int = 0, generator: torch.Generator | None = None) -> list[str]:
        """One comment per window of ``data.window_features`` output (video, log-mel)."""
        video = torch.from_numpy(np.stack([w[0] for w in windows])).to(self.device)
        audio = torch.from_numpy(np.stack([w[1] for w in windows])).to(self.device)
        ids = self.model.generate(video, audio, self.vocab, temperature, top_k, generator=generator)
        return [self.vocab.decode(row) for row in ids]
