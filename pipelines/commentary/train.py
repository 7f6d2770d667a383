"""Training: teacher-forced cross-entropy on the comment words, validation loss and perplexity
after every epoch, a checkpoint after every epoch (the latest, for ``--resume``, and the best by
validation loss next to it as ``NAME.best.pt``)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from pipelines.commentary.data import CommentDataset, Vocabulary
from pipelines.commentary.model import CommentaryModel, ModelConfig, read_checkpoint, save_checkpoint


@dataclass
class TrainOptions:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    hidden_size: int = 256
    embed_size: int = 128
    num_layers: int = 1
    dropout: float = 0.1
    max_tokens: int = 24
    min_count: int = 1  # words seen fewer times become <unk>
    max_vocab: int = 10000
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"


def best_path(checkpoint: str | Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.best{checkpoint.suffix or '.pt'}")


def split(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) example indices, a seeded shuffle (the same again on resume)."""
    order = np.random.default_rng(seed).permutation(count).tolist()
    n_val = min(count - 1, max(1, round(val_fraction * count))) if val_fraction > 0 and count > 1 else 0
    return order[n_val:], order[:n_val]


def batch_tensors(dataset: CommentDataset, indices: Sequence[int], vocab: Vocabulary, max_tokens: int,
                  device: str) -> tuple[torch.Tensor, ...]:
    """(video, audio, decoder input <sos> w1..wn, target w1..wn <eos>), padded with <pad>."""
    items = [dataset[i] for i in indices]
    encoded = [vocab.encode(text, max_tokens) for _, _, text in items]
    length = max(len(ids) for ids in encoded) + 1
    inputs = torch.full((len(items), length), vocab.pad_id, dtype=torch.long)
    targets = torch.full((len(items), length), vocab.pad_id, dtype=torch.long)
    for row, ids in enumerate(encoded):
        inputs[row, :len(ids) + 1] = torch.tensor([vocab.sos_id, *ids])
        targets[row, :len(ids) + 1] = torch.tensor([*ids, vocab.eos_id])
    video = torch.from_numpy(np.stack([v for v, _, _ in items]))
    audio = torch.from_numpy(np.stack([a for _, a, _ in items]))
    return video.to(device), audio.to(device), inputs.to(device), targets.to(device)


def input_statistics(dataset: CommentDataset, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Video and audio normalisation over ``indices``: a mean per feature, and one standard
    deviation per modality (pooled over its features). A deviation per feature would blow up
    features that hardly vary in training (a colour channel, a silent mel band), so that codec
    noise in them would swamp the picture and the sound at inference."""
    sums = None
    for i in indices:
        video, audio, _ = dataset[i]
        parts = [video.astype(np.float64), audio.astype(np.float64)]
        values = [(p.sum(0), (p * p).sum(0), len(p)) for p in parts]
        sums = values if sums is None else [(a + s, b + q, n + m) for (a, b, n), (s, q, m) in zip(sums, values)]
    stats = []
    for total, squares, n in sums:
        mean = total / n
        pooled_std = max(float(np.sqrt(np.maximum(squares / n - mean * mean, 0.0).mean())), 1e-3)
        stats += [torch.tensor(mean, dtype=torch.float32), torch.full(mean.shape, pooled_std, dtype=torch.float32)]
    return tuple(stats)


def evaluate(model: CommentaryModel, dataset: CommentDataset, indices: Sequence[int], vocab: Vocabulary,
             options: TrainOptions) -> float:
    """Mean cross-entropy per target word (<eos> included) over ``indices``."""
    model.eval()
    total, words = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(indices), options.batch_size):
            video, audio, inputs, targets = batch_tensors(
                dataset, indices[start:start + options.batch_size], vocab, model.config.max_tokens, options.device)
            logits = model(video, audio, inputs)
            total += nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                 ignore_index=vocab.pad_id, reduction="sum").item()
            words += int((targets != vocab.pad_id).sum())
    return total / max(words, 1)


def train(features_dir: str | Path, checkpoint: str | Path, options: TrainOptions, resume: bool = False,
          progress: bool | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Train (or with ``resume``, continue training the checkpoint) up to ``options.epochs``
    epochs in all. Returns the history: one dict per epoch with train/val loss and perplexity."""
    from tqdm import tqdm

    dataset = CommentDataset(features_dir)
    if len(dataset) < 2:
        raise ValueError(f"{features_dir}: {len(dataset)} examples; training needs at least 2")
    checkpoint = Path(checkpoint)
    torch.manual_seed(options.seed)
    if resume and checkpoint.exists():
        state = read_checkpoint(checkpoint, options.device)
        if state["features"] != dataset.features.to_dict():
            raise ValueError(f"{checkpoint} was trained on features made with other settings "
                             f"({state['features']}) than {features_dir} ({dataset.features.to_dict()})")
        training = state["training"]
        vocab = Vocabulary(state["vocab"])
        model = CommentaryModel(ModelConfig(**state["model_config"])).to(options.device)
        model.load_state_dict(state["state_dict"])
        seed, val_fraction = training["seed"], training["val_fraction"]
        train_ids, val_ids = split(len(dataset), val_fraction, seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
        optimizer.load_state_dict(training["optimizer"])
        history, first_epoch = list(training["history"]), training["epoch"]
        log(f"resuming {checkpoint} after epoch {first_epoch}")
    else:
        if resume:
            log(f"{checkpoint} does not exist yet; starting from scratch")
        seed, val_fraction = options.seed, options.val_fraction
        train_ids, val_ids = split(len(dataset), val_fraction, seed)
        vocab = Vocabulary.build((dataset.text(i) for i in train_ids), options.min_count, options.max_vocab)
        model = CommentaryModel(ModelConfig(
            video_dim=dataset.features.video_dim, audio_dim=dataset.features.n_mels, vocab_size=len(vocab),
            hidden_size=options.hidden_size, embed_size=options.embed_size, num_layers=options.num_layers,
            dropout=options.dropout, max_tokens=options.max_tokens)).to(options.device)
        model.set_normalization(*input_statistics(dataset, train_ids))
        optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
        history, first_epoch = [], 0
    log(f"{len(train_ids)} training / {len(val_ids)} validation comments, vocabulary {len(vocab)} words, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters")
    best = min((h["val_loss"] for h in history if h.get("val_loss") is not None), default=math.inf)

    for epoch in range(first_epoch, options.epochs):
        model.train()
        started = time.monotonic()
        order = np.random.default_rng([seed, epoch]).permutation(train_ids).tolist()  # reproducible on resume
        batches = [order[i:i + options.batch_size] for i in range(0, len(order), options.batch_size)]
        total, words = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{options.epochs}", unit="batch", leave=False,
                   disable=None if progress is None else not progress)
        for indices in bar:
            video, audio, inputs, targets = batch_tensors(dataset, indices, vocab, model.config.max_tokens,
                                                          options.device)
            logits = model(video, audio, inputs)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=vocab.pad_id)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # LSTMs: keep one bad batch from blowing up
            optimizer.step()
            count = int((targets != vocab.pad_id).sum())
            total, words = total + loss.item() * count, words + count
            bar.set_postfix(loss=f"{total / words:.3f}")
        bar.close()
        record = {"epoch": epoch + 1, "train_loss": total / words, "train_perplexity": math.exp(total / words),
                  "val_loss": None, "val_perplexity": None, "seconds": round(time.monotonic() - started, 2)}
        if val_ids:
            val_loss = evaluate(model, dataset, val_ids, vocab, options)
            record.update(val_loss=val_loss, val_perplexity=math.exp(min(val_loss, 50)))
        history.append(record)
        training = {"epoch": epoch + 1, "optimizer": optimizer.state_dict(), "history": history,
                    "seed": seed, "val_fraction": val_fraction}
        save_checkpoint(checkpoint, model, vocab, dataset.features, **training)
        line = f"epoch {epoch + 1}/{options.epochs}: train loss {record['train_loss']:.3f}"
        if record["val_loss"] is not None:
            line += f", val loss {record['val_loss']:.3f}, perplexity {record['val_perplexity']:.2f}"
            if record["val_loss"] < best:
                best = record["val_loss"]
                save_checkpoint(best_path(checkpoint), model, vocab, dataset.features, **training)
                line += " (best)"
        log(line + f" [{record['seconds']:.1f} s]")
    return history
