"""Portraits: decode an uploaded image, find the face and its 68 landmarks (dlib), once per image.

The 68-point layout (iBUG 300-W): 0-16 jaw line, 17-26 brows, 27-35 nose, 36-41 right eye,
42-47 left eye (as seen in the image: 36-41 is on the left), 48-59 outer lips, 60-67 inner lips.
The models ship offline: dlib's HOG frontal face detector is built into the library (used through
``pipelines.common.faces``: faces from 40 px wide, the image upscaled only when a plain scan finds
none) and the landmark predictor comes with the ``face_recognition_models`` wheel.
"""
from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

MAX_SIDE = 512  # portraits are rendered at their own size, scaled down to fit 512 x 512
# Formats a portrait may be in: PIL's C decoders only (its pure-Python ones, e.g. QOI, DDS and
# ICNS, crash on damaged files or loop slowly over declared sizes). Phones' multi-picture JPEGs
# open as JPEG too (as format MPO).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Larger images are refused from their header, before they are decoded. JPEG decodes at a reduced
# scale (1/8 at most, draft()), so a 50 MP photo costs a few MB; the others decode in full, at up to
# 4 bytes a pixel, so 16 MP is ~64 MB at the peak (a 4000 x 4000 PNG).
MAX_PIXELS = 50_000_000
MAX_FULL_DECODE_PIXELS = 16_000_000

JAW = slice(0, 17)
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
OUTER_LIPS = slice(48, 60)
INNER_LIPS = slice(60, 68)


class NoFaceError(ValueError):
    """The image holds no face the detector can find."""


class BadImageError(ValueError):
    """The bytes are not an image we can decode."""


class QuotaError(Exception):
    """The portrait folder is full (``--talking-head-portrait-quota-mb`` / ``-files``)."""


@dataclass(frozen=True)
class Portrait:
    id: str
    image: np.ndarray  # BGR uint8, at most MAX_SIDE on each side
    landmarks: np.ndarray  # (68, 2) float32 pixel coordinates in ``image``

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def decode_image(data: bytes) -> np.ndarray:
    """Image bytes -> BGR uint8, upright (EXIF orientation applied), scaled to fit MAX_SIDE.
    BadImageError for anything that is not a portrait we can decode within our limits."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:  # reads the header only
            limit = MAX_PIXELS if img.format in ("JPEG", "MPO") else MAX_FULL_DECODE_PIXELS
            if img.width * img.height > limit:
                raise BadImageError(f"image too large ({img.width}x{img.height}; at most {limit // 1_000_000} "
                                    f"megapixels for {img.format})")
            img.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale
            img.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)  # in place: the full-size copy is freed
            img = ImageOps.exif_transpose(img)  # the box is square: the same as turning first
            rgb = np.asarray(img.convert("RGB"))
    except BadImageError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many kinds on damaged files
        raise BadImageError(f"not a readable image in a supported format ({', '.join(FORMATS)}): "
                            f"{type(exc).__name__}: {str(exc)[:200]}") from None
    # Even sizes: the video encoder works on 2x2 chroma blocks.
    rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
    if min(rgb.shape[:2]) < 64:
        raise BadImageError(f"image too small ({rgb.shape[1]}x{rgb.shape[0]}); need at least 64x64")
    return np.ascontiguousarray(rgb[:, :, ::-1])


class FaceAnalyzer:
    """dlib detector + 68-point predictor. dlib objects are not documented as thread-safe, and a
    portrait is analysed once, so calls are serialised."""

    def __init__(self):
        import dlib
        import face_recognition_models

        from pipelines.common.faces import FaceDetector

        self._rectangle = dlib.rectangle
        self._detector = FaceDetector(detect_width=MAX_SIDE)
        self._predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
        self._lock = threading.Lock()

    def landmarks(self, bgr: np.ndarray) -> np.ndarray:
        """(68, 2) landmarks of the most confidently detected face; NoFaceError if none."""
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        with self._lock:
            faces = self._detector.faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
            if not faces:
                raise NoFaceError("no face found")
            (x, y, w, h), _ = max(faces, key=lambda face: face[1])
            shape = self._predictor(rgb, self._rectangle(x, y, x + w, y + h))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def analyze(self, image_bytes: bytes) -> Portrait:
        bgr = decode_image(image_bytes)
        return Portrait(portrait_id(image_bytes), bgr, self.landmarks(bgr))

    def analyze_image(self, bgr: np.ndarray, id: str) -> Portrait:
        return Portrait(id, bgr, self.landmarks(bgr))


def portrait_id(image_bytes: bytes) -> str:
    return hashlib.sha1(image_bytes).hexdigest()[:16]


def default_portrait_image() -> np.ndarray:
    """The public-domain NASA portrait of astronaut Eileen Collins that ships with scikit-image."""
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut()[:, :, ::-1])


DEFAULT_ID = "default"


class PortraitStore:
    """Analysed portraits by id: the default one, uploads (kept in memory, newest ``capacity``),
    and, when ``directory`` is set, uploads saved there so they survive a restart, up to
    ``quota_bytes`` and ``quota_files`` there (0: no limit; a new image over them: QuotaError).
    Analysis runs once per image: uploading the same bytes again answers the cached id."""

    def __init__(self, analyzer: FaceAnalyzer, directory: str | Path | None = None, capacity: int = 64,
                 quota_bytes: int = 0, quota_files: int = 0):
        self.analyzer = analyzer
        self.directory = Path(directory) if directory else None
        self.capacity = capacity
        self.quota_bytes, self.quota_files = quota_bytes, quota_files
        self._portraits: OrderedDict[str, Portrait] = OrderedDict()
        self._lock = threading.Lock()
        self._default = analyzer.analyze_image(default_portrait_image(), DEFAULT_ID)

    def add(self, image_bytes: bytes) -> Portrait:
        """Analyse and keep an uploaded image (blocking: call on a worker thread)."""
        id = portrait_id(image_bytes)
        cached = self.get(id)
        if cached is not None:
            return cached
        if self.directory is not None:
            self._check_quota(len(image_bytes))  # before the analysis: a refusal costs nothing
        portrait = self.analyzer.analyze(image_bytes)
        if self.directory is not None:
            with self._lock:  # concurrent uploads: one checks and writes at a time
                self._check_quota(len(image_bytes))
                self.directory.mkdir(parents=True, exist_ok=True)
                (self.directory / f"{id}.img").write_bytes(image_bytes)
        self._keep(portrait)
        return portrait

    def _check_quota(self, size: int) -> None:
        if not (self.quota_bytes or self.quota_files) or not self.directory.is_dir():
            return
        sizes = [p.stat().st_size for p in self.directory.glob("*.img")]
        if self.quota_files and len(sizes) + 1 > self.quota_files:
            raise QuotaError(f"the portrait folder is full ({len(sizes)} portraits, at most {self.quota_files})")
        if self.quota_bytes and sum(sizes) + size > self.quota_bytes:
            raise QuotaError(f"the portrait folder is full ({sum(sizes) / 2**20:.1f} MB used, this image needs "
                             f"{size / 2**20:.1f} MB more, at most {self.quota_bytes / 2**20:.0f} MB)")

    def _keep(self, portrait: Portrait) -> None:
        with self._lock:
            self._portraits[portrait.id] = portrait
            self._portraits.move_to_end(portrait.id)
            while len(self._portraits) > self.capacity:
                self._portraits.popitem(last=False)

    def get(self, id: str) -> Portrait | None:
        """The portrait with this id, or None. May read and analyse a saved file (blocking)."""
        if id == DEFAULT_ID:
            return self._default
        with self._lock:
            if id in self._portraits:
                self._portraits.move_to_end(id)
                return self._portraits[id]
        if self.directory is not None and len(id) == 16 and all(c in "0123456789abcdef" for c in id):
            path = self.directory / f"{id}.img"
            if path.exists():
                portrait = self.analyzer.analyze(path.read_bytes())
                self._keep(portrait)
                return portrait
        return None
