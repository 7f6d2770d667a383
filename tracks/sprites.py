"""A rendered overlay item (``tracks.overlay``) and its blending onto video pictures.

Two picture layouts: BGR (``uint8`` H x W x 3, as OpenCV and the avatar renderer make them) and
I420 (``uint8`` (H * 3 / 2) x W: the Y plane, then the U and V planes of (H / 2) x (W / 2) each,
as PyAV's ``to_ndarray(format="yuv420p")`` gives a decoded VP8 frame). Blending in I420 spares the
returned video two colour conversions per frame (camera YUV -> BGR to draw, BGR -> YUV to encode),
most of the cost of a frame that shows an overlay.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

# BT.601, limited range: what VP8 decoders produce and what swscale assumes for yuv420p <-> bgr24
_Y = np.array([65.481, 128.553, 24.966], np.float32) / 255.0
_U = np.array([-37.797, -74.203, 112.0], np.float32) / 255.0
_V = np.array([112.0, -93.786, -18.214], np.float32) / 255.0


def i420_planes(image: np.ndarray | tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writable views of the Y, U and V planes of an I420 picture (even width and height); a
    picture given as its three planes already (a frame's own, ``tracks.outbound.i420_views``)
    is returned as it is."""
    if isinstance(image, tuple):
        return image
    height, width = image.shape[0] * 2 // 3, image.shape[1]
    chroma = image[height:].reshape(2, height // 2, width // 2)
    return image[:height], chroma[0], chroma[1]


def _blend(plane: np.ndarray, pixels: np.ndarray, weight: np.ndarray, inverse: np.ndarray,
           x: int, y: int) -> None:
    """``pixels`` (weights ``weight``; the plane's ``inverse``) over ``plane`` at (x, y), clipped."""
    h, w = plane.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + pixels.shape[1], w), min(y + pixels.shape[0], h)
    if x0 >= x1 or y0 >= y1:
        return
    crop = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    region = (slice(y0, y1), slice(x0, x1))
    plane[region] = cv2.blendLinear(np.ascontiguousarray(pixels[crop]), np.ascontiguousarray(plane[region]),
                                    np.ascontiguousarray(weight[crop]), np.ascontiguousarray(inverse[crop]))


class Sprite:
    """A rendered item: BGR pixels and their opacity (float32 0–1); its I420 form made on first use."""

    __slots__ = ("bgr", "alpha", "inverse", "_i420")

    def __init__(self, rgba: Image.Image):
        pixels = np.asarray(rgba)
        self.bgr = np.ascontiguousarray(pixels[:, :, 2::-1])
        self.alpha = pixels[:, :, 3].astype(np.float32) / 255.0
        self.inverse = 1.0 - self.alpha
        self._i420 = None

    @property
    def height(self) -> int:
        return self.bgr.shape[0]

    @property
    def width(self) -> int:
        return self.bgr.shape[1]

    @staticmethod
    def _weights(alpha: np.ndarray, inverse: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The sprite's and the picture's weights at opacity ``level`` (fading: made per frame)."""
        if level == 1.0:
            return alpha, inverse
        alpha = alpha * np.float32(level)
        return alpha, 1.0 - alpha

    def weights(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        return self._weights(self.alpha, self.inverse, level)

    def blend(self, image: np.ndarray, x: int, y: int, level: float = 1.0) -> None:
        """Over ``image`` (BGR, in place) with its top-left at (x, y), clipped to the image."""
        _blend(image, self.bgr, *self.weights(level), x, y)

    @property
    def has_i420(self) -> bool:
        return self._i420 is not None

    def i420(self) -> tuple[np.ndarray, ...]:
        """(Y, U, V, alpha, 1 - alpha, chroma alpha, 1 - chroma alpha): the sprite padded to even sides, in BT.601 limited range;
        chroma (and its alpha) at half size, each the alpha-weighted mean of its 2 x 2 pixels."""
        if self._i420 is None:
            h, w = self.height + self.height % 2, self.width + self.width % 2
            rgb = np.zeros((h, w, 3), np.float32)
            rgb[:self.height, :self.width] = self.bgr[:, :, ::-1]
            alpha = np.zeros((h, w), np.float32)
            alpha[:self.height, :self.width] = self.alpha
            luma = np.clip(16 + rgb @ _Y, 0, 255).astype(np.uint8)
            quad = alpha.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
            weighted = (rgb * alpha[..., None]).reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))
            mean = weighted / np.maximum(quad, 1e-6)[..., None]
            u = np.clip(128 + mean @ _U, 0, 255).astype(np.uint8)
            v = np.clip(128 + mean @ _V, 0, 255).astype(np.uint8)
            chroma_alpha = (quad / 4).astype(np.float32)
            self._i420 = (luma, u, v, alpha, 1.0 - alpha, chroma_alpha, 1.0 - chroma_alpha)
        return self._i420

    def blend_i420(self, image: np.ndarray | tuple, x: int, y: int, level: float = 1.0) -> None:
        """Over ``image`` (I420, in place) with its top-left at (x, y): the luma exactly there,
        the chroma (2 x 2 pixels each) from (x // 2, y // 2)."""
        luma, u, v, alpha, inverse, chroma_alpha, chroma_inverse = self.i420()
        plane_y, plane_u, plane_v = i420_planes(image)
        _blend(plane_y, luma, *self._weights(alpha, inverse, level), x, y)
        weight, inverse = self._weights(chroma_alpha, chroma_inverse, level)
        _blend(plane_u, u, weight, inverse, x // 2, y // 2)
        _blend(plane_v, v, weight, inverse, x // 2, y // 2)
