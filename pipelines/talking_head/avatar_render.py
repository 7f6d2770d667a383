"""Rendering a speaking portrait: one backward warp per frame, plus a painted mouth interior.

A ``Rig`` is built once per portrait from its 68 landmarks. Each frame is described by a ``Pose``
(jaw opening, lip rounding, blink, idle head motion) and rendered as:

1. a backward map ``dst pixel -> portrait pixel`` over a region of interest (ROI) around the head:
   the inverse of a small head rotation and translation about the neck, easing out towards the
   ROI's edges (shoulders and background stay still), then analytic displacement fields on the
   face: the jaw and lower lip slide down, the upper lip lifts a little, the lips narrow (rounded
   vowels) or widen (spread ones), the upper eyelids slide down to blink;
2. outside the ROI the frame is a copy of the portrait; inside it, ``cv2.remap`` with the map.
   Displacements vanish at the ROI edge, so the two meet without a seam;
3. the gap between the lips is painted as a mouth interior (upper teeth, dark cavity, tongue).

The same maps feed ``TorchWarper``, which warps many avatars in one ``grid_sample`` call
(``--device cuda``); it is tested on CPU tensors against the cv2 path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.talking_head.face import INNER_LIPS, LEFT_EYE, OUTER_LIPS, RIGHT_EYE, Portrait

CAVITY_BGR = (32, 22, 58)  # dark red-brown: the inside of a mouth
TEETH_BGR = (200, 212, 222)
TONGUE_BGR = (52, 48, 118)


@dataclass(frozen=True)
class Pose:
    open: float = 0.0  # jaw opening 0..1
    round: float = 0.0  # -1 spread .. 1 rounded lips
    blink: float = 0.0  # 0 open eyes .. 1 closed
    angle: float = 0.0  # head roll, degrees
    dx: float = 0.0  # head translation, pixels
    dy: float = 0.0


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _ramp(x: np.ndarray, start: float, stop: float) -> np.ndarray:
    """0 at ``start``, 1 at ``stop`` (either order), linear between, clipped."""
    if stop == start:
        return (x >= stop).astype(np.float32)
    return np.clip((x - start) / (stop - start), 0.0, 1.0)


class Rig:
    """Everything about one portrait that does not change from frame to frame."""

    def __init__(self, portrait: Portrait):
        self.portrait = portrait
        self.image = portrait.image
        self.height, self.width = self.image.shape[:2]
        lm = portrait.landmarks.astype(np.float64)
        self.landmarks = lm
        inner = lm[INNER_LIPS]
        self.mouth_center = inner.mean(axis=0)
        self.mouth_width = float(np.linalg.norm(lm[54] - lm[48]))
        self.lip_y = float(inner[:, 1].mean())  # where the lips part
        self.nose_y = float(lm[33, 1])
        self.chin_y = float(max(lm[8, 1], lm[OUTER_LIPS][:, 1].max() + 2))
        self.jaw_half_width = float(np.linalg.norm(lm[12] - lm[4])) / 2
        self.max_drop = 0.36 * self.mouth_width  # jaw travel at open = 1
        self.max_lift = 0.12 * self.max_drop  # upper lip travel at open = 1
        self.neck_fade = 0.6 * max(self.chin_y - self.lip_y, 4.0)  # the jaw's pull dies out below the chin
        face_height = self.chin_y - float(lm[17:27, 1].min())
        self.pivot = np.array([self.mouth_center[0], self.chin_y + 0.6 * face_height])  # the neck
        self.eyes = []
        for eye in (lm[RIGHT_EYE], lm[LEFT_EYE]):
            x0, y0 = eye.min(axis=0)
            x1, y1 = eye.max(axis=0)
            self.eyes.append((float(x0), float(x1), float(y0), float(y1)))
        # The face region holds every non-zero face displacement, plus room for the head motion.
        margin = 12 + 0.05 * face_height
        eye_top = min(e[2] for e in self.eyes) - 3.5 * max(e[3] - e[2] + 2 for e in self.eyes)
        x0 = min(self.mouth_center[0] - 1.1 * self.jaw_half_width, *(e[0] - 0.5 * (e[1] - e[0]) for e in self.eyes))
        x1 = max(self.mouth_center[0] + 1.1 * self.jaw_half_width, *(e[1] + 0.5 * (e[1] - e[0]) for e in self.eyes))
        y1 = self.chin_y + self.max_drop + self.neck_fade
        face = (x0 - margin, eye_top - margin, x1 + margin, y1 + margin)
        # The ROI (what the map covers) is the head: the face region with hair and neck around it,
        # wide enough for the head motion to fade out to nothing at its edges, so the shoulders
        # and background stay still and the rest of the frame is a plain copy of the portrait.
        face_width = float(lm[:, 0].max() - lm[:, 0].min())
        fade_x, fade_y = 0.35 * face_width, 0.35 * face_height
        head = (min(face[0], lm[:, 0].min() - 0.6 * face_width) - fade_x,
                min(face[1], lm[17:27, 1].min() - 0.9 * face_height) - fade_y,
                max(face[2], lm[:, 0].max() + 0.6 * face_width) + fade_x,
                max(face[3], self.chin_y + self.max_drop + 0.4 * face_height) + fade_y)
        self.roi = (max(0, int(head[0])), max(0, int(head[1])),
                    min(self.width, int(math.ceil(head[2]))), min(self.height, int(math.ceil(head[3]))))
        rx0, ry0, rx1, ry1 = self.roi
        fx0, fy0 = max(rx0, int(face[0])), max(ry0, int(face[1]))
        fx1, fy1 = min(rx1, int(math.ceil(face[2]))), min(ry1, int(math.ceil(face[3])))
        self._face = (slice(fy0 - ry0, fy1 - ry0), slice(fx0 - rx0, fx1 - rx0))  # within the ROI
        self._roi_x, self._roi_y = np.meshgrid(np.arange(rx0, rx1, dtype=np.float32),
                                               np.arange(ry0, ry1, dtype=np.float32))
        # How much of the head motion each ROI pixel takes: 1 over the head, easing to 0 at the edges.
        across = np.minimum(self._roi_x - rx0, rx1 - 1 - self._roi_x) / fade_x
        down = np.minimum(self._roi_y - ry0, ry1 - 1 - self._roi_y) / fade_y
        self._head_weight = (_smoothstep(across) * _smoothstep(down)).astype(np.float32)

    # --- geometry ------------------------------------------------------------------------------
    def head_matrix(self, pose: Pose) -> np.ndarray:
        """2x3 affine taking an output pixel to where it was before the head moved."""
        a = math.radians(pose.angle)
        c, s = math.cos(a), math.sin(a)
        px, py = self.pivot
        # forward: p' = R (p - pivot) + pivot + t ; inverse: p = R^T (p' - pivot - t) + pivot
        rt = np.array([[c, s], [-s, c]])
        offset = -rt @ np.array([px + pose.dx, py + pose.dy]) + np.array([px, py])
        return np.hstack([rt, offset[:, None]]).astype(np.float32)

    def head_forward(self, points: np.ndarray, pose: Pose) -> np.ndarray:
        a = math.radians(pose.angle)
        c, s = math.cos(a), math.sin(a)
        r = np.array([[c, -s], [s, c]])
        return (points - self.pivot) @ r.T + self.pivot + np.array([pose.dx, pose.dy])

    def _round_gain(self, pose: Pose) -> float:
        return 0.16 * pose.round * min(1.0, 0.3 + pose.open)

    def roi_map(self, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
        """Backward map (portrait x, portrait y) for every output pixel of the ROI."""
        m = self.head_matrix(pose)
        x, y, w = self._roi_x, self._roi_y, self._head_weight
        map_u = x + w * ((m[0, 0] - 1) * x + m[0, 1] * y + m[0, 2])
        map_v = y + w * (m[1, 0] * x + (m[1, 1] - 1) * y + m[1, 2])
        # The face moves as a whole with the head (weight 1 there); then it deforms. The
        # displacements are added into views of the maps; the fields are evaluated at (u, v),
        # where each face pixel is before deforming.
        src_u, src_v = map_u[self._face], map_v[self._face]
        u, v = src_u.copy(), src_v.copy()
        cx = self.mouth_center[0]
        du = np.abs(u - cx)

        drop = pose.open * self.max_drop
        if drop > 0.05:
            across = _ramp(du, 1.05 * self.jaw_half_width, 0.55 * self.jaw_half_width)
            down = _ramp(v, self.lip_y, self.lip_y + max(drop, 1.0))
            below_chin = _ramp(v, self.chin_y + drop + self.neck_fade, self.chin_y + drop)
            src_v -= drop * down * below_chin * across
            lift = pose.open * self.max_lift
            half_mouth = self.mouth_width / 2
            lip_across = _ramp(du, 1.4 * half_mouth, 0.8 * half_mouth)
            up = _ramp(v, self.nose_y, self.lip_y - lift) * (v <= self.lip_y)
            src_v += lift * up * lip_across
        gain = self._round_gain(pose)
        if abs(gain) > 1e-3:
            w = self.mouth_width
            near_lips = np.exp(-np.square((v - self.lip_y) / (0.45 * w))) * _ramp(du, 1.3 * w, 0.6 * w)
            src_u += gain * (u - cx) * near_lips
        if pose.blink > 0.01:
            for ex0, ex1, top, bottom in self.eyes:
                shift = pose.blink * (bottom - top + 2)
                ew = ex1 - ex0
                across = _ramp(u, ex0 - 0.35 * ew, ex0) * _ramp(u, ex1 + 0.35 * ew, ex1)
                above = _ramp(v, top - 1 - 3 * shift, top - 1)
                below = _ramp(v, bottom + 1 + 0.5 * (bottom - top + 2), bottom + 1)
                src_v -= shift * across * np.minimum(above, below)
        np.clip(map_u, 0, self.width - 1, out=map_u)
        np.clip(map_v, 0, self.height - 1, out=map_v)
        return map_u.astype(np.float32, copy=False), map_v.astype(np.float32, copy=False)

    def mouth_polygon(self, pose: Pose) -> np.ndarray:
        """The inner-lip contour in output pixels (where the lips part), after the pose."""
        inner = self.landmarks[INNER_LIPS].copy()  # 60 corner, 61-63 upper, 64 corner, 65-67 lower
        inner[1:4, 1] -= pose.open * self.max_lift
        inner[5:8, 1] += pose.open * self.max_drop
        cx = self.mouth_center[0]
        inner[:, 0] = cx + (inner[:, 0] - cx) / (1 + self._round_gain(pose))
        return self.head_forward(inner, pose)

    # --- pixels --------------------------------------------------------------------------------
    def warp(self, pose: Pose) -> np.ndarray:
        frame = self.image.copy()
        x0, y0, x1, y1 = self.roi
        mx, my = self.roi_map(pose)
        frame[y0:y1, x0:x1] = cv2.remap(self.image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return frame

    def paint_mouth(self, frame: np.ndarray, pose: Pose) -> np.ndarray:
        """Paint the mouth interior into the gap the warp opened (in place)."""
        gap = pose.open * (self.max_drop + self.max_lift)
        if gap < 0.5:
            return frame
        poly = self.mouth_polygon(pose)
        x0, y0 = np.floor(poly.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + 3
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, frame.shape[1]), min(y1, frame.shape[0])
        if x1 - x0 < 2 or y1 - y0 < 2:
            return frame
        shift = 4  # sub-pixel polygon coordinates (1/16 px): smooth motion between frames
        local = np.round((poly - [x0, y0]) * (1 << shift)).astype(np.int32)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [local], 255, cv2.LINE_AA, shift)
        paint = np.empty((y1 - y0, x1 - x0, 3), np.float32)
        paint[:] = CAVITY_BGR
        # Upper teeth: a band under the upper lip, as deep as a fraction of the mouth width.
        teeth_depth = min(0.35 * gap, 0.11 * self.mouth_width)
        upper = local[0:5]
        teeth = np.vstack([upper, upper[::-1] + [0, int(teeth_depth * (1 << shift))]])
        teeth_mask = np.zeros_like(mask)
        cv2.fillPoly(teeth_mask, [teeth], 255, cv2.LINE_AA, shift)
        # Tongue: low in the mouth, visible once it is well open.
        tongue_mask = np.zeros_like(mask)
        lower_mid = poly[6] - [x0, y0]
        axes = (max(1, int(0.22 * self.mouth_width)), max(1, int(0.22 * gap)))
        cv2.ellipse(tongue_mask, (int(lower_mid[0]), int(lower_mid[1])), axes, 0, 180, 360, 255, -1, cv2.LINE_AA)
        t = (teeth_mask.astype(np.float32) / 255)[..., None]
        g = (tongue_mask.astype(np.float32) / 255)[..., None] * (1 - t)
        paint = paint * (1 - t - g) + np.array(TEETH_BGR, np.float32) * t + np.array(TONGUE_BGR, np.float32) * g
        # Fade the interior in over the first pixels of opening: no pop from closed to open.
        alpha = (mask.astype(np.float32) / 255 * min(1.0, gap / 3.0))[..., None]
        region = frame[y0:y1, x0:x1]
        region[:] = np.clip(region * (1 - alpha) + paint * alpha + 0.5, 0, 255).astype(np.uint8)
        return frame

    def render(self, pose: Pose) -> np.ndarray:
        return self.paint_mouth(self.warp(pose), pose)


class TorchWarper:
    """Warps a batch of avatars (any portrait sizes) with one ``grid_sample`` call.

    The grid is the same backward map as ``Rig.warp`` (identity, and the ROI map in the ROI),
    clamped to each portrait's own bounds, so portraits of any sizes share one padded batch."""

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self._images: dict[int, object] = {}  # id(rig) -> (3, H, W) float tensor on the device
        self._grids: dict[tuple[int, int], tuple] = {}  # (H, W) -> pixel coordinates (ys, xs)

    def _image(self, rig: Rig):
        tensor = self._images.get(id(rig))
        if tensor is None:
            tensor = self.torch.from_numpy(np.ascontiguousarray(rig.image.transpose(2, 0, 1))).to(
                self.device, self.torch.float32)
            self._images[id(rig)] = tensor
        return tensor

    def forget(self, rig: Rig) -> None:
        self._images.pop(id(rig), None)

    def warp(self, rigs: list[Rig], poses: list[Pose]) -> list[np.ndarray]:
        torch = self.torch
        if not rigs:
            return []
        n = len(rigs)
        height = max(r.height for r in rigs)
        width = max(r.width for r in rigs)
        batch = torch.zeros((n, 3, height, width), dtype=torch.float32, device=self.device)
        for i, rig in enumerate(rigs):
            batch[i, :, :rig.height, :rig.width] = self._image(rig)
        if (height, width) not in self._grids:
            self._grids[height, width] = torch.meshgrid(
                torch.arange(height, device=self.device, dtype=torch.float32),
                torch.arange(width, device=self.device, dtype=torch.float32), indexing="ij")
        ys, xs = self._grids[height, width]
        map_x = xs.expand(n, height, width).clone()  # outside the ROIs every pixel stays put
        map_y = ys.expand(n, height, width).clone()
        for i, (rig, pose) in enumerate(zip(rigs, poses)):
            x0, y0, x1, y1 = rig.roi
            mx, my = rig.roi_map(pose)
            map_x[i, y0:y1, x0:x1] = torch.from_numpy(mx).to(self.device)
            map_y[i, y0:y1, x0:x1] = torch.from_numpy(my).to(self.device)
        limits = torch.tensor([[r.width - 1, r.height - 1] for r in rigs], dtype=torch.float32, device=self.device)
        map_x = torch.minimum(map_x.clamp_min(0), limits[:, 0, None, None])
        map_y = torch.minimum(map_y.clamp_min(0), limits[:, 1, None, None])
        # align_corners=False: pixel centre i sits at (2i + 1) / size - 1.
        grid = torch.stack(((2 * map_x + 1) / width - 1, (2 * map_y + 1) / height - 1), dim=-1)
        out = torch.nn.functional.grid_sample(batch, grid, mode="bilinear", padding_mode="border",
                                              align_corners=False)
        pixels = out.add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return [np.ascontiguousarray(pixels[i, :r.height, :r.width]) for i, r in enumerate(rigs)]

    def render(self, rigs: list[Rig], poses: list[Pose]) -> list[np.ndarray]:
        return [rig.paint_mouth(frame, pose) for rig, frame, pose in zip(rigs, self.warp(rigs, poses), poses)]
