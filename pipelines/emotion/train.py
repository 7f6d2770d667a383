"""Train the emotion fusion network on a labelled folder (IEMOCAP-style utterances).

    .venv/bin/python -m pipelines.emotion.train DATA --out emotion_fusion.pt [--epochs 40]
    .venv/bin/python webrtc_server.py --pipelines emotion --emotion-fusion-weights emotion_fusion.pt

DATA holds one folder per label; files of one utterance share a name, and any of them may be
missing (at least one must be there):

    DATA/happy/ses01_f_001.wav     the utterance's audio (wav, flac, ogg, mp3: anything PyAV reads)
    DATA/happy/ses01_f_001.txt     its transcript
    DATA/happy/ses01_f_001.png     a frame of the speaker's face (png, jpg)

Label folders may use IEMOCAP's abbreviations (neu, hap, exc, sad, ang, fru, sur, fea, dis) or our
names (neutral, happy, sad, angry, surprise, fear, disgust); "exc" and "hap" both become happy as
is usual for IEMOCAP's 4-class setup. Features are the ones the live pipeline computes: MiniLM
sentence embeddings, 40 torchaudio MFCCs (last 10 s), the face stage's expression probabilities.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from media import audio as media_audio

from pipelines.emotion.fusion import LABELS, canonical_label

AUDIO = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"}
IMAGES = {".png", ".jpg", ".jpeg", ".bmp"}


def scan(root: str | Path) -> list[dict]:
    """The labelled folder -> [{"id", "label", "audio", "text", "image"}] (paths or None)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = canonical_label(folder.name)
        if label is None:
            raise ValueError(f"folder {folder.name!r} is not an emotion label; use one of {', '.join(LABELS)} "
                             "or IEMOCAP abbreviations")
        by_stem: dict[str, dict] = {}
        for path in sorted(folder.iterdir()):
            suffix = path.suffix.lower()
            kind = "audio" if suffix in AUDIO else "text" if suffix == ".txt" else "image" if suffix in IMAGES else None
            if kind:
                by_stem.setdefault(path.stem, {"id": f"{folder.name}/{path.stem}", "label": label,
                                               "audio": None, "text": None, "image": None})[kind] = path
        items.extend(by_stem.values())
    if not items:
        raise ValueError(f"{root} has no labelled utterances (expected {root}/<label>/<name>.wav|.txt|.png)")
    return items


def load_audio(path: Path, rate: int = 16000) -> np.ndarray:
    return media_audio.load(path, rate)


def featurize(items: list[dict], face_model: str = "", device: str = "cpu") -> list[dict]:
    """Items -> samples {"text": (384,), "mfcc": (T, 40), "face": (7,), "label"} with None for
    what an utterance lacks (or where no face was found)."""
    import cv2

    from pipelines.emotion.face_expression import make_face_backend
    from pipelines.emotion.prosody import MfccExtractor
    from pipelines.emotion.text_emotion import SentenceEncoder

    texts = {i: it["text"].read_text(encoding="utf-8", errors="replace").strip()
             for i, it in enumerate(items) if it["text"] is not None}
    texts = {i: t for i, t in texts.items() if t}
    embeddings = dict(zip(texts, SentenceEncoder(device)(list(texts.values())))) if texts else {}
    mfcc = MfccExtractor()
    face = make_face_backend(face_model, device) if any(it["image"] for it in items) else None
    samples, faceless = [], 0
    for i, it in enumerate(items):
        sample = {"id": it["id"], "label": it["label"], "text": embeddings.get(i), "mfcc": None, "face": None}
        if it["audio"] is not None:
            frames = mfcc(load_audio(it["audio"]))
            sample["mfcc"] = frames if len(frames) else None
        if it["image"] is not None:
            image = cv2.imread(str(it["image"]))
            result = face.predict([image])[0] if image is not None else None
            if result is None:
                faceless += 1
            else:
                sample["face"] = result.probs.astype(np.float32)
        if sample["text"] is None and sample["mfcc"] is None and sample["face"] is None:
            continue
        samples.append(sample)
    if faceless:
        print(f"{faceless} image(s) without a detectable face: their samples go without face", file=sys.stderr)
    return samples


def train(samples: list[dict], epochs: int = 40, lr: float = 3e-3, batch_size: int = 32,
          val_fraction: float = 0.2, modality_dropout: float = 0.3, seed: int = 0, log=print):
    """Train a FusionNet; returns (the net with the best validation accuracy, history)."""
    import torch

    from pipelines.emotion.fusion_net import FusionNet, collate

    torch.manual_seed(seed)
    rng = random.Random(seed)
    labels = tuple(l for l in LABELS if any(s["label"] == l for s in samples))
    if len(labels) < 2:
        raise ValueError(f"need at least two labels to train, got {labels}")
    index = {l: i for i, l in enumerate(labels)}
    order = list(range(len(samples)))
    rng.shuffle(order)
    n_val = int(round(len(samples) * val_fraction)) if len(samples) >= 10 else 0
    val = [samples[i] for i in order[:n_val]]
    train_set = [samples[i] for i in order[n_val:]]

    net = FusionNet(labels=labels)
    frames = [s["mfcc"] for s in train_set if s["mfcc"] is not None]
    if frames:
        stacked = np.concatenate(frames)
        net.mfcc_mean.copy_(torch.from_numpy(stacked.mean(axis=0)))
        net.mfcc_std.copy_(torch.from_numpy(stacked.std(axis=0) + 1e-3))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def accuracy(data: list[dict]) -> float:
        if not data:
            return float("nan")
        net.eval()
        with torch.no_grad():
            predicted = net(**collate(data)).argmax(-1).numpy()
        return float(np.mean(predicted == np.array([index[s["label"]] for s in data])))

    best, best_state, history = -1.0, None, []
    for epoch in range(1, epochs + 1):
        net.train()
        rng.shuffle(train_set)
        total = 0.0
        for start in range(0, len(train_set), batch_size):
            chunk = train_set[start:start + batch_size]
            batch = collate(chunk)
            # Modality dropout: hide present modalities at random (never all of them), so the
            # network works with whatever a live session has.
            mask = batch["mask"]
            drop = (torch.rand(mask.shape) < modality_dropout) & (mask > 0)
            kept = mask * (~drop)
            none_left = kept.sum(1) == 0
            kept[none_left] = mask[none_left]
            batch["mask"] = kept
            target = torch.tensor([index[s["label"]] for s in chunk])
            loss = loss_fn(net(**batch), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(chunk)
        train_acc, val_acc = accuracy(train_set), accuracy(val)
        score = val_acc if val else train_acc
        history.append({"epoch": epoch, "loss": round(total / len(train_set), 4),
                        "train_acc": round(train_acc, 3), "val_acc": None if not val else round(val_acc, 3)})
        log(json.dumps(history[-1]))
        if score > best:
            best = score
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net.eval(), history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="labelled folder: DATA/<label>/<utterance>.wav|.txt|.png")
    parser.add_argument("--out", required=True, help="where to save the weights (.pt)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val", type=float, default=0.2, help="fraction held out for validation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--face-model", default="", help="as --emotion-face-model (empty: packaged FER2013)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from pipelines.emotion import fusion_net

    t0 = time.perf_counter()
    try:
        items = scan(args.data)
    except ValueError as exc:
        parser.error(str(exc))
    samples = featurize(items, args.face_model, args.device)
    counts = {l: sum(s["label"] == l for s in samples) for l in LABELS if any(s["label"] == l for s in samples)}
    print(json.dumps({"samples": len(samples), "labels": counts,
                      "with_text": sum(s["text"] is not None for s in samples),
                      "with_audio": sum(s["mfcc"] is not None for s in samples),
                      "with_face": sum(s["face"] is not None for s in samples)}))
    net, history = train(samples, args.epochs, args.lr, args.batch_size, args.val, seed=args.seed)
    fusion_net.save(net, args.out)
    best = max(history, key=lambda h: h["val_acc"] if h["val_acc"] is not None else h["train_acc"])
    print(json.dumps({"saved": args.out, "labels": list(net.labels), "best": best,
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
