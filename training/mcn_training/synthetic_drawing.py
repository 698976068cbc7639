"""Drawing for the synthetic dataset (mcn_training.synthetic): textured backgrounds and the objects it paints.

Each object is drawn with OpenCV into the RGB image and, through :class:`Canvas`, into that object's own mask
at the same time. Coordinates are continuous pixels (pixel ``i`` covers ``[i, i+1)``); people return their 17
COCO keypoints. Every function draws from the random stream it is given, so a seed fixes every pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from mcn_ros.model.labels import KEYPOINT_NAMES, NUM_KEYPOINTS

_SHIFT = 2  # cv2 fractional bits: drawing coordinates in quarter pixels
_SCALE = 1 << _SHIFT

_Point = Sequence[float] | np.ndarray


def _pt(x: float, y: float) -> tuple[int, int]:
    """Continuous coordinates -> cv2 fixed-point pixel-centre coordinates (cv2's pixel i is centred at i)."""
    return round((x - 0.5) * _SCALE), round((y - 0.5) * _SCALE)


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    c = rng.integers(lo, hi, size=3)
    return int(c[0]), int(c[1]), int(c[2])


class Canvas:
    """Draws the same shape into the RGB image and into one object's mask."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.mask = np.zeros(image.shape[:2], np.uint8)

    def _both(
        self, fn: Callable[[np.ndarray, Any], object], color: tuple[int, int, int], in_mask: bool
    ) -> None:
        fn(self.image, color)
        if in_mask:
            fn(self.mask, 1)

    def line(self, a: _Point, b: _Point, thickness: int, color: tuple[int, int, int]) -> None:
        pa, pb = _pt(a[0], a[1]), _pt(b[0], b[1])
        self._both(lambda im, c: cv2.line(im, pa, pb, c, thickness, cv2.LINE_8, _SHIFT), color, True)

    def circle(
        self,
        c: _Point,
        r: float,
        color: tuple[int, int, int],
        in_mask: bool = True,
        thickness: int = -1,
    ) -> None:
        pc, pr = _pt(c[0], c[1]), max(1, round(r * _SCALE))
        self._both(lambda im, col: cv2.circle(im, pc, pr, col, thickness, cv2.LINE_8, _SHIFT), color, in_mask)

    def polygon(self, pts: np.ndarray, color: tuple[int, int, int], in_mask: bool = True) -> None:
        p = np.round((np.asarray(pts, np.float64) - 0.5) * _SCALE).astype(np.int32)
        self._both(lambda im, c: cv2.fillPoly(im, [p], c, cv2.LINE_8, _SHIFT), color, in_mask)

    def rect(
        self, x0: float, y0: float, x1: float, y1: float, color: tuple[int, int, int], in_mask: bool = True
    ) -> None:
        self.polygon(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), color, in_mask)


def draw_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured background: smooth noise, a linear gradient, stripes or checkers, plus fine noise."""
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0 = np.array(_color(rng), np.float32)
    c1 = np.array(_color(rng), np.float32)
    if kind == 0:  # smooth coloured noise
        small = rng.random((max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        img = c0 * (1 - t) + c1 * t
    else:
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        if kind == 1:  # gradient
            t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        elif kind == 2:  # stripes (hard or soft)
            period = rng.uniform(6, 24)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
            if rng.random() < 0.5:
                t = (t > 0.5).astype(np.float32)
        else:  # checkers
            cell = int(rng.integers(6, 20))
            t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img = img + rng.normal(0, rng.uniform(2, 12), size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _rot(v: np.ndarray, a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def draw_person(
    rng: np.random.Generator, canvas: Canvas, foot_x: float, foot_y: float, height: float
) -> np.ndarray:
    """Draw an articulated stick figure standing at (foot_x, foot_y); return its 17 keypoints (x, y, v)."""
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float64)
    frontal = rng.random() < 0.7  # facing the camera: the person's left is on the image's right
    d = 1.0 if frontal else -1.0
    H = height
    lean = rng.uniform(-0.15, 0.15)
    hip_c = np.array([foot_x, foot_y - 0.48 * H])
    up = _rot(np.array([0.0, -1.0]), lean)
    neck = hip_c + up * 0.34 * H
    side = _rot(np.array([1.0, 0.0]), lean)
    sh_w, hip_w = rng.uniform(0.2, 0.26) * H, rng.uniform(0.13, 0.17) * H
    joints: dict[str, np.ndarray] = {}
    for name, sgn in (("left", d), ("right", -d)):
        joints[f"{name}_shoulder"] = neck + side * sgn * sh_w / 2
        joints[f"{name}_hip"] = hip_c + side * sgn * hip_w / 2
        a, b = rng.uniform(-0.3, 2.4), rng.uniform(0.0, 1.8)
        upper, fore = 0.17 * H, 0.15 * H
        joints[f"{name}_elbow"] = joints[f"{name}_shoulder"] + upper * np.array([sgn * np.sin(a), np.cos(a)])
        joints[f"{name}_wrist"] = joints[f"{name}_elbow"] + fore * np.array(
            [sgn * np.sin(a + b), np.cos(a + b)]
        )
        a, b = rng.uniform(-0.1, 0.4), rng.uniform(-0.8, 0.3)
        thigh, shin = 0.25 * H, 0.24 * H
        joints[f"{name}_knee"] = joints[f"{name}_hip"] + thigh * np.array([sgn * np.sin(a), np.cos(a)])
        joints[f"{name}_ankle"] = joints[f"{name}_knee"] + shin * np.array(
            [sgn * np.sin(a + b), np.cos(a + b)]
        )
    r_head = rng.uniform(0.06, 0.075) * H
    head = neck + up * (0.05 * H + r_head) + np.array([rng.uniform(-0.02, 0.02) * H, 0.0])
    joints["nose"] = head + np.array([0.0, 0.15 * r_head])
    for name, sgn in (("left", d), ("right", -d)):
        joints[f"{name}_eye"] = head + np.array([sgn * 0.38 * r_head, -0.2 * r_head])
        joints[f"{name}_ear"] = head + np.array([sgn * 0.85 * r_head, 0.05 * r_head])

    cloth, trousers = _color(rng), _color(rng)
    skin, hair = _color(rng, 90, 240), _color(rng, 10, 80)
    limb = max(2, round(0.05 * H))
    leg = max(2, round(0.065 * H))
    for name in ("left", "right"):
        canvas.line(joints[f"{name}_hip"], joints[f"{name}_knee"], leg, trousers)
        canvas.line(joints[f"{name}_knee"], joints[f"{name}_ankle"], leg, trousers)
    torso = np.stack(
        [joints["left_shoulder"], joints["right_shoulder"], joints["right_hip"], joints["left_hip"]]
    )
    canvas.polygon(torso, cloth)
    # The facing decides which side is "left", so it must be visible even on small figures (sub-pixel eyes
    # alone were not): from the front a skin-coloured face under the hair, dark eyes and a shirt front
    # (a contrasting stripe down the torso); from behind only hair and a plain back.
    canvas.line(neck, head, limb, skin)
    canvas.circle(head, r_head, hair)
    if frontal:
        front = (235, 235, 235) if sum(cloth) < 384 else (20, 20, 20)
        canvas.line(neck, hip_c, max(1, round(0.05 * H)), front)
        canvas.circle(head + np.array([0.0, 0.2 * r_head]), 0.8 * r_head, skin)
        for name in ("left_eye", "right_eye"):
            canvas.circle(joints[name], max(0.5, 0.15 * r_head), (20, 20, 20))
    for name in ("left", "right"):
        canvas.line(joints[f"{name}_shoulder"], joints[f"{name}_elbow"], limb, cloth)
        canvas.line(joints[f"{name}_elbow"], joints[f"{name}_wrist"], limb, skin)
    for j, name in enumerate(KEYPOINT_NAMES):
        kp[j, :2] = joints[name]
        kp[j, 2] = 2.0
    if not frontal:  # seen from behind: face keypoints are not annotated (as in COCO)
        for name in ("nose", "left_eye", "right_eye"):
            kp[KEYPOINT_NAMES.index(name)] = 0.0
    return kp


def draw_car(rng: np.random.Generator, canvas: Canvas, x0: float, bottom: float, width: float) -> None:
    h = width * rng.uniform(0.4, 0.5)
    top = bottom - h
    body = _color(rng)
    canvas.rect(x0, top + 0.38 * h, x0 + width, bottom - 0.12 * h, body)
    cab = np.array(
        [
            [x0 + 0.2 * width, top + 0.4 * h],
            [x0 + 0.3 * width, top],
            [x0 + 0.7 * width, top],
            [x0 + 0.82 * width, top + 0.4 * h],
        ]
    )
    canvas.polygon(cab, body)
    glass = _color(rng, 150, 230)
    window = cab + np.array([[0.05, 0.0], [0.03, 0.1], [-0.03, 0.1], [-0.05, 0.0]]) * np.array([width, h])
    canvas.polygon(window, glass)
    for fx in (0.22, 0.78):
        canvas.circle((x0 + fx * width, bottom - 0.16 * h), 0.16 * h, (25, 25, 25))
        canvas.circle((x0 + fx * width, bottom - 0.16 * h), 0.07 * h, (160, 160, 160))


def draw_stop_sign(rng: np.random.Generator, canvas: Canvas, cx: float, cy: float, r: float) -> None:
    canvas.rect(cx - 0.08 * r, cy, cx + 0.08 * r, cy + 3 * r, (120, 120, 120), in_mask=False)  # pole
    ang = np.pi / 8 + np.arange(8) * np.pi / 4
    octagon = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
    canvas.polygon(octagon, (200 + int(rng.integers(40)), 20, 25))
    inner = np.stack([cx + 0.85 * r * np.cos(ang), cy + 0.85 * r * np.sin(ang)], 1)
    p = np.round((inner - 0.5) * _SCALE).astype(np.int32)
    cv2.polylines(canvas.image, [p], True, (240, 240, 240), max(1, int(0.06 * r)), cv2.LINE_8, _SHIFT)
    canvas.rect(cx - 0.55 * r, cy - 0.12 * r, cx + 0.55 * r, cy + 0.12 * r, (240, 240, 240))


def draw_sports_ball(rng: np.random.Generator, canvas: Canvas, cx: float, cy: float, r: float) -> None:
    if rng.random() < 0.5:  # football: white with dark patches
        canvas.circle((cx, cy), r, (235, 235, 235))
        for k in range(5):
            a = 2 * np.pi * k / 5 + rng.uniform(0, 1)
            canvas.circle((cx + 0.55 * r * np.cos(a), cy + 0.55 * r * np.sin(a)), 0.22 * r, (30, 30, 30))
    else:  # basketball: orange with seams
        canvas.circle((cx, cy), r, (230, 110 + int(rng.integers(40)), 20))
        canvas.line((cx - r, cy), (cx + r, cy), 1, (40, 20, 10))
        canvas.line((cx, cy - r), (cx, cy + r), 1, (40, 20, 10))


def draw_traffic_light(rng: np.random.Generator, canvas: Canvas, cx: float, top: float, w: float) -> None:
    h = 2.6 * w
    canvas.rect(cx - 0.1 * w, top + h, cx + 0.1 * w, top + 2.2 * h, (90, 90, 90), in_mask=False)  # pole
    canvas.rect(cx - w / 2, top, cx + w / 2, top + h, (35 + int(rng.integers(30)),) * 3)
    lit = int(rng.integers(3))
    for k, col in enumerate(((230, 30, 30), (240, 200, 30), (40, 220, 80))):
        shade = col if k == lit else tuple(c // 4 for c in col)
        canvas.circle((cx, top + (k + 0.5) * h / 3), 0.32 * w, shade)  # type: ignore[arg-type]
