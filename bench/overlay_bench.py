"""What each pipeline draws on the returned video (tracks/overlay.py): screenshots and cost.

    .venv/bin/python bench/overlay_bench.py                       # the table: ms per frame
    .venv/bin/python bench/overlay_bench.py --screenshots DIR     # also PNGs of every pipeline
                                                                  # at 320x240, 640x480, 1280x720
    .venv/bin/python bench/overlay_bench.py --docs docs/screenshots   # one small PNG per pipeline

Frames are scikit-image's astronaut photo (the camera) or the talking_head avatar rendered from it,
with the items each pipeline shows, built the way the pipelines build them. Costs: the first
frame of new items (text rendered into sprites), then every further frame (sprites blended over
a fresh camera frame), and a frame while everything fades; CPU time of the drawing thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.emotion.pipeline import overlay as emotion_overlay  # noqa: E402
from testing.images import astronaut  # noqa: E402
from tracks.overlay import FADE, Badge, Chat, Overlay, Subtitle  # noqa: E402

SIZES = ((320, 240), (640, 480), (1280, 720))


def scenes(at: float) -> dict[str, list]:
    """Per pipeline, what it shows in a typical moment (``at``: when it was shown)."""
    modalities = {"face": {"label": "happy", "score": 0.91}, "voice": None,
                  "text": {"label": "neutral", "score": 0.55}}
    return {
        "gender": [Badge("female", 0.97, title="voice", at=at)],
        "translation": [Subtitle("Buenos días, ¿cómo estás? Hoy vamos a hablar de la traducción en tiempo "
                                 "real, palabra por palabra.", at=at,
                                 secondary="Good morning, how are you? Today we are going to talk about "
                                           "real-time translation, word by word.")],
        "emotion": list(emotion_overlay("happy", 0.84, modalities, None)),
        "commentary": [Chat("LUL the lighting in here is amazing", user="AI", at=at - 8),
                       Chat("what is that on the table?", user="AI", at=at - 4),
                       Chat("PogChamp astronaut stream let's gooo", user="AI", at=at)],
        "talking_head": [Subtitle("Hola, soy tu avatar. Hablo lo que dices en español.", at=at,
                                  secondary="Hi, I am your avatar. I say what you say in Spanish.")],
    }


def camera(width: int, height: int) -> np.ndarray:
    """The astronaut photo cropped to the frame's aspect ratio and scaled to it, BGR."""
    photo = astronaut()
    h, w = photo.shape[:2]
    if width / height > w / h:
        crop = int(w * height / width)
        photo = photo[(h - crop) // 4:(h - crop) // 4 + crop]
    else:
        crop = int(h * width / height)
        photo = photo[:, (w - crop) // 2:(w - crop) // 2 + crop]
    return cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)


def avatar_frame() -> np.ndarray:
    """One frame of the talking_head avatar (the default portrait), mouth open."""
    from pipelines.talking_head.avatar import Avatar
    from testing.images import portrait_rig
    from testing.media import vowel

    return Avatar(portrait_rig(), lambda: (vowel(0.04), 16000), seed=1).render()


def background(pipeline: str, width: int, height: int, avatar: np.ndarray | None) -> np.ndarray:
    if pipeline == "talking_head" and avatar is not None:
        side = min(width, height)  # the avatar's square frame at the size's height
        return cv2.resize(avatar, (side, side), interpolation=cv2.INTER_AREA)
    return camera(width, height)


def timed(fn, repeat: int) -> float:
    """Median CPU milliseconds of ``fn()`` on this thread (other processes on a shared machine do
    not count; OpenCV runs these small blends on the calling thread)."""
    cv2.setNumThreads(1)
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return float(np.median(times)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshots", type=Path, help="write <pipeline>_<W>x<H>.png here")
    parser.add_argument("--docs", type=Path, help="write <pipeline>.png here (640x480, the avatar 512x512; 256 colours)")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    now = time.monotonic()
    avatar = avatar_frame() if args.screenshots or args.docs else None
    if args.docs:
        from PIL import Image

        args.docs.mkdir(parents=True, exist_ok=True)
        for pipeline, items in scenes(now).items():
            size = (512, 512) if pipeline == "talking_head" else (640, 480)  # the avatar's own size
            image = Overlay().draw(background(pipeline, *size, avatar), items, now)
            rgb = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
            rgb.quantize(256, method=Image.Quantize.MEDIANCUT).save(args.docs / f"{pipeline}.png", optimize=True)
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
        for width, height in SIZES + ((512, 512),):
            for pipeline, items in scenes(now).items():
                image = Overlay().draw(background(pipeline, width, height, avatar), items, now)
                cv2.imwrite(str(args.screenshots / f"{pipeline}_{width}x{height}.png"), image)
            together = [item for items in scenes(now).values() for item in items][:-1]
            image = Overlay().draw(camera(width, height), together, now)
            cv2.imwrite(str(args.screenshots / f"all_{width}x{height}.png"), image)

    print("| frame | overlays | first frame of new items ms | each further frame ms | fading frame ms | copy of the frame alone ms |")
    print("|---|---|---|---|---|---|")
    for width, height in SIZES:
        frame = camera(width, height)
        for name, items in (("gender badge", scenes(now)["gender"]),
                            ("subtitles", scenes(now)["translation"]),
                            ("all four", [i for k, v in scenes(now).items() if k != "talking_head" for i in v])):
            first = timed(lambda: Overlay().draw(frame.copy(), items, now), max(5, args.repeat // 20))
            overlay = Overlay()
            steady = timed(lambda: overlay.draw(frame.copy(), items, now), args.repeat)
            held = [Subtitle(i.text, i.secondary, hold=0, at=now) if isinstance(i, Subtitle) else i for i in items]
            fading = timed(lambda: overlay.draw(frame.copy(), held, now + FADE / 2), args.repeat)
            copy = timed(lambda: frame.copy(), args.repeat)
            print(f"| {width}x{height} | {name} | {first:.2f} | {steady:.3f} | {fading:.3f} | {copy:.3f} |")
    returned_frame(args.repeat, now)


def returned_frame(repeat: int, now: float) -> None:
    """A returned frame from the camera's decoded picture to the encoder's input (yuv420p), the
    gender badge shown: drawn in BGR (two colour conversions) against drawn on the I420 picture."""
    import av

    print()
    print("| frame | via BGR ms | on the I420 picture ms | ratio |")
    print("|---|---|---|---|")
    items = scenes(now)["gender"]
    for width, height in SIZES:
        decoded = av.VideoFrame.from_ndarray(camera(width, height), format="bgr24").reformat(format="yuv420p")
        overlay = Overlay()

        def via_bgr():
            image = overlay.draw(decoded.to_ndarray(format="bgr24").copy(), items, now)
            av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")

        def on_i420():
            image = overlay.draw(decoded.to_ndarray(format="yuv420p").copy(), items, now, i420=True)
            av.VideoFrame.from_ndarray(image, format="yuv420p")

        bgr, i420 = timed(via_bgr, repeat), timed(on_i420, repeat)
        print(f"| {width}x{height} | {bgr:.3f} | {i420:.3f} | {i420 / bgr:.2f} |")


if __name__ == "__main__":
    main()
