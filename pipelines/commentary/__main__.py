"""python -m pipelines.commentary preprocess|train|generate  (see docs/commentary.md)

    python -m pipelines.commentary preprocess --stream stream.mp4 chat.log --out features/
    python -m pipelines.commentary train features/ --checkpoint commentary.pt --epochs 30
    python -m pipelines.commentary generate --checkpoint commentary.pt clip.mp4 --temperature 0.8 --top-k 10
"""
from __future__ import annotations

import argparse
import sys

# torch is imported inside the commands, so --help answers at once.


def _time(value: str) -> float:
    from pipelines.commentary.data import parse_timestamp

    try:
        return parse_timestamp(float(value) if value.replace(".", "", 1).isdigit() else value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _format_time(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}.{int(seconds * 10) % 10}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.commentary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    pre = commands.add_parser("preprocess", help="chat logs + recordings -> feature files",
                              description="One training example per chat message: the window of video "
                                          "and audio before it, as resized frames and a log-mel spectrogram.")
    pre.add_argument("--stream", nargs=2, action="append", required=True, metavar=("VIDEO", "CHAT"),
                     help="a recording (any format PyAV reads) and its chat log: '[HH:MM:SS] user: message' "
                          "lines or JSON lines {\"time\", \"user\", \"message\"} (repeatable)")
    pre.add_argument("--out", required=True, help="folder for the feature files")
    pre.add_argument("--offset", type=float, default=0.0,
                     help="the chat log's time at the start of the video, in seconds (default 0)")
    pre.add_argument("--window", type=float, default=5.0, help="seconds of stream before each comment (5)")
    pre.add_argument("--fps", type=float, default=2.0, help="video frames per second of window (2)")
    pre.add_argument("--frame-size", type=int, nargs=2, default=(32, 32), metavar=("W", "H"),
                     help="frames are resized to W x H (32 32)")
    pre.add_argument("--n-mels", type=int, default=64, help="mel bands (64)")
    pre.add_argument("--n-fft", type=int, default=1024, help="FFT size at 16 kHz (1024)")
    pre.add_argument("--hop", type=int, default=320, help="mel hop in samples at 16 kHz (320 = 20 ms)")

    tr = commands.add_parser("train", help="train (or resume) a model on feature files")
    tr.add_argument("features", help="folder written by preprocess")
    tr.add_argument("--checkpoint", required=True,
                    help="written after every epoch; the best by validation loss goes to NAME.best.pt")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint up to --epochs in all")
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--hidden", type=int, default=256, help="LSTM hidden size (256)")
    tr.add_argument("--embed", type=int, default=128, help="word embedding size (128)")
    tr.add_argument("--layers", type=int, default=1, help="LSTM layers (1)")
    tr.add_argument("--dropout", type=float, default=0.1)
    tr.add_argument("--max-words", type=int, default=24, help="longer comments are cut (24)")
    tr.add_argument("--min-count", type=int, default=1, help="rarer words become <unk> (1)")
    tr.add_argument("--max-vocab", type=int, default=10000)
    tr.add_argument("--val-fraction", type=float, default=0.1, help="held out for validation (0.1)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu", help="cpu or cuda")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    gen = commands.add_parser("generate", help="comments for a clip")
    gen.add_argument("clip", help="a recording (any format PyAV reads)")
    gen.add_argument("--checkpoint", required=True)
    gen.add_argument("--at", type=_time, action="append", metavar="TIME",
                     help="comment on the window ending at TIME (seconds or HH:MM:SS; repeatable; "
                          "default: the end of the clip)")
    gen.add_argument("--every", type=float, help="comment every this many seconds through the clip")
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="sampling temperature; 0 (default) writes the most likely words (greedy)")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the K most likely words (0: all)")
    gen.add_argument("--samples", type=int, default=1, help="comments per moment (with sampling)")
    gen.add_argument("--seed", type=int, help="random seed for sampling")
    gen.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "preprocess":
        from pipelines.commentary.data import FeatureConfig, preprocess

        features = FeatureConfig(window=args.window, fps=args.fps, frame_width=args.frame_size[0],
                                 frame_height=args.frame_size[1], n_mels=args.n_mels, n_fft=args.n_fft,
                                 hop_length=args.hop)
        manifest = preprocess(args.stream, args.out, features, offset=args.offset)
        total = sum(s["count"] for s in manifest["streams"])
        print(f"{total} examples from {len(manifest['streams'])} stream(s) in {args.out}")
        return 0 if total else 1
    if args.command == "train":
        from pipelines.commentary.train import TrainOptions, best_path, train

        options = TrainOptions(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, hidden_size=args.hidden,
            embed_size=args.embed, num_layers=args.layers, dropout=args.dropout, max_tokens=args.max_words,
            min_count=args.min_count, max_vocab=args.max_vocab, val_fraction=args.val_fraction,
            seed=args.seed, device=args.device)
        train(args.features, args.checkpoint, options, resume=args.resume,
              progress=False if args.no_progress else None)
        print(f"checkpoint: {args.checkpoint} (best by validation loss: {best_path(args.checkpoint)})")
        return 0
    from pipelines.commentary.generate import generate

    if args.temperature < 0 or args.top_k < 0 or args.samples < 1:
        raise SystemExit("--temperature and --top-k must be >= 0 and --samples >= 1")
    for t, comments in generate(args.checkpoint, args.clip, args.at, args.every, args.temperature,
                                args.top_k, args.samples, args.seed, args.device):
        for comment in comments:
            print(f"[{_format_time(t)}] {comment}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
