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
