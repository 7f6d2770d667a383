"""Pictures: the astronaut photo (scikit-image's test image, a smiling face), and where to look for
the mouth of the talking_head avatar made from it (the default portrait is the same photo)."""
from __future__ import annotations

import cv2
import numpy as np
from skimage import data as skdata

DARK = 70  # grey level under which a pixel of the mouth region counts as open mouth


def astronaut() -> np.ndarray:
    """The 512 x 512 astronaut photo, BGR."""
    return np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])  # RGB -> BGR


ASTRONAUT_FACE = (179, 83, 87, 87)  # dlib's box (x, y, w, h) of her face in the 512 px photo


def face_scene(width: int, height: int, face: int, centre: tuple[float, float] = (0.5, 0.45),
               background: np.ndarray | None = None, source: tuple[np.ndarray, tuple] | None = None,
               mirror: bool = False) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A ``width`` x ``height`` BGR frame with a face ``face`` px wide (the detector's box) pasted
    with its head and shoulders around it, centred at ``centre`` (fractions of the frame), over
    ``background`` (resized to the frame; default plain grey). ``source``: (image, face box in
    it), default the astronaut. Returns the frame and where the face's box is in it."""
    image, (bx, by, bw, bh) = source if source is not None else (astronaut(), ASTRONAUT_FACE)
    if mirror:
        image, bx = image[:, ::-1], image.shape[1] - bx - bw
    frame = np.full((height, width, 3), 90, np.uint8) if background is None else \
        cv2.resize(background, (width, height), interpolation=cv2.INTER_AREA)
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    # the head and shoulders: half a face on each side and above, one and a half below
    x0, y0 = max(0, bx - bw // 2), max(0, by - bh // 2)
    x1, y1 = min(image.shape[1], bx + bw + bw // 2), min(image.shape[0], by + bh + 3 * bh // 2)
    part = np.ascontiguousarray(image[y0:y1, x0:x1])
    if part.ndim == 2:
        part = cv2.cvtColor(part, cv2.COLOR_GRAY2BGR)
    scale = face / bw
    part = cv2.resize(part, (max(1, round(part.shape[1] * scale)), max(1, round(part.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    fx, fy = round(centre[0] * width - face / 2), round(centre[1] * height - bh * scale / 2)  # the box
    px, py = fx - round((bx - x0) * scale), fy - round((by - y0) * scale)  # the part's corner
    sx0, sy0 = max(0, -px), max(0, -py)
    dx0, dy0 = max(0, px), max(0, py)
    w = min(part.shape[1] - sx0, width - dx0)
    h = min(part.shape[0] - sy0, height - dy0)
    if w > 0 and h > 0:
        frame[dy0:dy0 + h, dx0:dx0 + w] = part[sy0:sy0 + h, sx0:sx0 + w]
    return frame, (fx, fy, face, round(bh * scale))


def mouth_region(rig) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of an avatar's mouth (``rig``: a talking_head ``Rig``): between the inner lip
    corners, from just above the parting line to the fully dropped jaw (with a margin for the idle
    head motion)."""
    lm = rig.landmarks
    return (int(lm[60, 0]) + 2, int(rig.lip_y - 4), int(lm[64, 0]) - 2, int(rig.lip_y + rig.max_drop + 4))


def mouth_area(rig) -> int:
    """Pixels in ``mouth_region``."""
    x0, y0, x1, y1 = mouth_region(rig)
    return (x1 - x0) * (y1 - y0)


def dark_pixels(frame: np.ndarray, rig) -> int:
    """Dark (open-mouth) pixels of a BGR frame of the avatar in its mouth region."""
    x0, y0, x1, y1 = mouth_region(rig)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[y0:y1, x0:x1]
    return int((grey < DARK).sum())


def portrait_rig():
    """The talking_head ``Rig`` of the default portrait (the astronaut), analysed afresh."""
    from pipelines.talking_head.avatar_render import Rig
    from pipelines.talking_head.face import FaceAnalyzer, default_portrait_image

    return Rig(FaceAnalyzer().analyze_image(default_portrait_image(), "default"))
