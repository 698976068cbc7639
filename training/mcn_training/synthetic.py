"""Deterministic synthetic dataset in the exact COCO 2017 file layout.

No COCO is available on the project's machines, so tests, the oracle benchmark and the demo train on scenes
made here: articulated stick-figure people facing the camera or away from it (face and shirt front, or hair
and a plain back) with all 17 COCO keypoints (COCO order, visibility 0/1/2), cars,
stop signs, sports balls and traffic lights, drawn with OpenCV on textured backgrounds (noise, gradients,
stripes, checkers). Objects are painted back to front; each instance keeps only its visible pixels, and a
keypoint hidden by an object in front gets visibility 1 ("labelled, not visible") as in COCO.

Files written (``split`` = "train", "val", ...)::

    out_dir/images/<split>/<image_id:012d>.jpg
    out_dir/annotations/instances_<split>.json        boxes + masks of all classes (80 COCO categories)
    out_dir/annotations/person_keypoints_<split>.json person annotations with keypoints (same ids)

Non-crowd masks are written as polygons when a polygon reproduces the mask exactly (no holes), otherwise as
uncompressed RLE; groups of tiny people and remnants of mostly hidden objects become ``iscrowd=1`` RLE
regions, as COCO marks crowds. ``bbox`` and ``area`` are computed from the written segmentation with
pycocotools, so every file is self-consistent. Keypoint coordinates are continuous pixel coordinates (pixel
``i`` covers ``[i, i+1)``), the convention of the rest of the project.

Every image is drawn from its own random stream seeded by ``(seed, split, index)``: the same seed gives
byte-identical files, and the first ``k`` images do not depend on ``num_images``.

CLI: ``python -m mcn_training.synthetic --out DIR --train N --val N --seed S [--height H --width W]``.
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_util

from mcn_ros.model.labels import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    KEYPOINT_NAMES,
    NUM_KEYPOINTS,
    SKELETON,
    coco_category_id,
)

#: The COCO classes the generator draws (besides crowds of people).
SYNTHETIC_CLASSES: tuple[str, ...] = ("person", "car", "traffic light", "stop sign", "sports ball")

# COCO supercategories in COCO_CLASSES order, as run lengths (person 1, vehicle 8, outdoor 5, ...).
_SUPERCATEGORIES: tuple[tuple[str, int], ...] = (
    ("person", 1), ("vehicle", 8), ("outdoor", 5), ("animal", 10), ("accessory", 5), ("sports", 10),
    ("kitchen", 7), ("food", 10), ("furniture", 6), ("electronic", 6), ("appliance", 5), ("indoor", 7),
)  # fmt: skip

_Point = Sequence[float] | np.ndarray
_SHIFT = 2  # cv2 fractional bits: drawing coordinates in quarter pixels
_SCALE = 1 << _SHIFT
_JPEG_QUALITY = 92
_UNLABELLED_KEYPOINT_PROB = 0.02  # keypoints randomly left unannotated (v=0), as in COCO


def coco_categories() -> list[dict[str, Any]]:
    """The 80 COCO categories (id, name, supercategory) as written in ``instances_*.json``."""
    supers = [name for name, count in _SUPERCATEGORIES for _ in range(count)]
    return [
        {"supercategory": s, "id": cid, "name": n}
        for s, cid, n in zip(supers, COCO_CATEGORY_IDS, COCO_CLASSES, strict=True)
    ]


def person_keypoint_category() -> dict[str, Any]:
    """The person category of ``person_keypoints_*.json`` (keypoint names, 1-based skeleton)."""
    return {
        "supercategory": "person",
        "id": coco_category_id("person"),
        "name": "person",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [[a + 1, b + 1] for a, b in SKELETON],
    }


@dataclass
class _Instance:
    """One drawn object: its full (pre-occlusion) mask, and for people 17 keypoints ``(x, y, v)``."""

    category_id: int
    mask: np.ndarray  # bool [H, W], pixels painted by this object
    keypoints: np.ndarray | None = None  # float [17, 3]
    crowd: bool = False


# ----------------------------------------------------------------------------------------------- drawing
def _pt(x: float, y: float) -> tuple[int, int]:
    """Continuous coordinates -> cv2 fixed-point pixel-centre coordinates (cv2's pixel i is centred at i)."""
    return round((x - 0.5) * _SCALE), round((y - 0.5) * _SCALE)


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    c = rng.integers(lo, hi, size=3)
    return int(c[0]), int(c[1]), int(c[2])


class _Canvas:
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


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
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


def _person(
    rng: np.random.Generator, canvas: _Canvas, foot_x: float, foot_y: float, height: float
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


def _car(rng: np.random.Generator, canvas: _Canvas, x0: float, bottom: float, width: float) -> None:
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


def _stop_sign(rng: np.random.Generator, canvas: _Canvas, cx: float, cy: float, r: float) -> None:
    canvas.rect(cx - 0.08 * r, cy, cx + 0.08 * r, cy + 3 * r, (120, 120, 120), in_mask=False)  # pole
    ang = np.pi / 8 + np.arange(8) * np.pi / 4
    octagon = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
    canvas.polygon(octagon, (200 + int(rng.integers(40)), 20, 25))
    inner = np.stack([cx + 0.85 * r * np.cos(ang), cy + 0.85 * r * np.sin(ang)], 1)
    p = np.round((inner - 0.5) * _SCALE).astype(np.int32)
    cv2.polylines(canvas.image, [p], True, (240, 240, 240), max(1, int(0.06 * r)), cv2.LINE_8, _SHIFT)
    canvas.rect(cx - 0.55 * r, cy - 0.12 * r, cx + 0.55 * r, cy + 0.12 * r, (240, 240, 240))


def _sports_ball(rng: np.random.Generator, canvas: _Canvas, cx: float, cy: float, r: float) -> None:
    if rng.random() < 0.5:  # football: white with dark patches
        canvas.circle((cx, cy), r, (235, 235, 235))
        for k in range(5):
            a = 2 * np.pi * k / 5 + rng.uniform(0, 1)
            canvas.circle((cx + 0.55 * r * np.cos(a), cy + 0.55 * r * np.sin(a)), 0.22 * r, (30, 30, 30))
    else:  # basketball: orange with seams
        canvas.circle((cx, cy), r, (230, 110 + int(rng.integers(40)), 20))
        canvas.line((cx - r, cy), (cx + r, cy), 1, (40, 20, 10))
        canvas.line((cx, cy - r), (cx, cy + r), 1, (40, 20, 10))


def _traffic_light(rng: np.random.Generator, canvas: _Canvas, cx: float, top: float, w: float) -> None:
    h = 2.6 * w
    canvas.rect(cx - 0.1 * w, top + h, cx + 0.1 * w, top + 2.2 * h, (90, 90, 90), in_mask=False)  # pole
    canvas.rect(cx - w / 2, top, cx + w / 2, top + h, (35 + int(rng.integers(30)),) * 3)
    lit = int(rng.integers(3))
    for k, col in enumerate(((230, 30, 30), (240, 200, 30), (40, 220, 80))):
        shade = col if k == lit else tuple(c // 4 for c in col)
        canvas.circle((cx, top + (k + 0.5) * h / 3), 0.32 * w, shade)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- scene
def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[_Instance]]:
    """Draw one image; return it and its instances in back-to-front order (with full, unoccluded masks)."""
    image = _background(rng, h, w)
    side = float(min(h, w))
    # Planned objects: (kind, rough box x0 y0 x1 y1, parameters). Rough boxes steer placement only.
    plans: list[tuple[str, np.ndarray, tuple[float, ...]]] = []

    def place(kind: str, bw: float, bh: float) -> tuple[float, float] | None:
        for _ in range(20):
            x0 = rng.uniform(-0.15 * bw, w - 0.85 * bw)
            y0 = rng.uniform(-0.1 * bh, h - 0.9 * bh)
            box = np.array([x0, y0, x0 + bw, y0 + bh])
            if all(_box_iou(box, p[1]) < 0.35 for p in plans):
                plans.append((kind, box, ()))
                return x0, y0
        return None

    n_people = int(rng.choice([0, 1, 1, 2, 2, 3]))
    for _ in range(n_people):
        ph = rng.uniform(0.3, 0.8) * h
        if (xy := place("person", 0.45 * ph, ph)) is not None:
            plans[-1] = ("person", plans[-1][1], (xy[0] + 0.225 * ph, xy[1] + ph, ph))
    for _ in range(int(rng.integers(0, 4))):
        kind = str(rng.choice(["car", "traffic light", "stop sign", "sports ball"]))
        if kind == "car":
            cw = rng.uniform(0.25, 0.6) * side
            if (xy := place(kind, cw, 0.45 * cw)) is not None:
                plans[-1] = (kind, plans[-1][1], (xy[0], xy[1] + 0.45 * cw, cw))
        elif kind == "traffic light":
            tw = rng.uniform(0.06, 0.12) * side
            if (xy := place(kind, tw, 2.6 * tw)) is not None:
                plans[-1] = (kind, plans[-1][1], (xy[0] + tw / 2, xy[1], tw))
        elif kind == "stop sign":
            r = rng.uniform(0.06, 0.15) * side
            if (xy := place(kind, 2 * r, 2 * r)) is not None:
                plans[-1] = (kind, plans[-1][1], (xy[0] + r, xy[1] + r, r))
        else:
            r = rng.uniform(0.04, 0.12) * side
            if (xy := place(kind, 2 * r, 2 * r)) is not None:
                plans[-1] = (kind, plans[-1][1], (xy[0] + r, xy[1] + r, r))

    instances: list[_Instance] = []
    if rng.random() < 0.15:  # a distant crowd of small people: one iscrowd=1 region
        canvas = _Canvas(image)
        cx, base = rng.uniform(0.2, 0.8) * w, rng.uniform(0.25, 0.5) * h
        for _ in range(int(rng.integers(4, 9))):
            _person(rng, canvas, cx + rng.uniform(-0.15, 0.15) * w, base + rng.uniform(-3, 3), 0.12 * h)
        instances.append(_Instance(coco_category_id("person"), canvas.mask.astype(bool), crowd=True))

    for kind, _box, params in sorted(plans, key=lambda p: p[1][3]):  # farther (higher) objects first
        canvas = _Canvas(image)
        kps = None
        if kind == "person":
            kps = _person(rng, canvas, *params)
        elif kind == "car":
            _car(rng, canvas, *params)
        elif kind == "traffic light":
            _traffic_light(rng, canvas, *params)
        elif kind == "stop sign":
            _stop_sign(rng, canvas, *params)
        else:
            _sports_ball(rng, canvas, *params)
        instances.append(_Instance(coco_category_id(kind), canvas.mask.astype(bool), kps))
    return image, instances


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE (column-major run lengths, starting with a run of zeros), as COCO crowds use."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _polygons(mask: np.ndarray) -> list[list[float]] | None:
    """Polygons that rasterise (pycocotools) exactly to ``mask``, or None (holes, degenerate parts)."""
    m = mask.astype(np.uint8)
    _, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
        return None  # holes: COCO polygons cannot express them
    # Contours of the 2x upsampled mask, through sub-pixel centres: 0.25 px outside every boundary pixel
    # centre, so pycocotools' rasterisation gives back exactly the mask.
    up = cv2.resize(m, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = [((c.reshape(-1, 2) + 0.5) / 2.0).round(2).ravel().tolist() for c in contours if len(c) >= 3]
    if not polys:
        return None
    h, w = mask.shape
    back = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w))).astype(bool)
    return polys if np.array_equal(back, mask) else None


def _annotations(
    instances: list[_Instance], h: int, w: int, rng: np.random.Generator
) -> list[tuple[dict[str, Any], np.ndarray | None]]:
    """Occlusion-resolved annotations (without ids), each with its keypoints (people) or None."""
    min_area = max(12, int(0.0015 * h * w))
    covered = np.zeros((h, w), bool)
    visible: list[np.ndarray] = [np.zeros(0, bool)] * len(instances)
    for i in range(len(instances) - 1, -1, -1):  # front to back
        visible[i] = instances[i].mask & ~covered
        covered |= instances[i].mask
    out: list[tuple[dict[str, Any], np.ndarray | None]] = []
    for inst, vis in zip(instances, visible, strict=True):
        area = int(vis.sum())
        if area == 0:
            continue
        crowd = inst.crowd or area < min_area  # remnants of hidden objects: ignore regions
        segm: Any = None if crowd else _polygons(vis)
        if segm is None:
            segm = _uncompressed_rle(vis)
            rle = mask_util.frPyObjects(segm, h, w)
        else:
            rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
        ann = {
            "segmentation": segm,
            "area": float(mask_util.area(rle)),
            "iscrowd": int(crowd),
            "bbox": [float(v) for v in mask_util.toBbox(rle)],
            "category_id": inst.category_id,
        }
        kps = None
        if inst.category_id == coco_category_id("person"):
            kps = np.zeros((NUM_KEYPOINTS, 3))
            if inst.keypoints is not None and not crowd:
                kps = inst.keypoints.copy()
                x, y = kps[:, 0], kps[:, 1]
                inside = (kps[:, 2] > 0) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
                xi = np.clip(np.floor(x).astype(int), 0, w - 1)
                yi = np.clip(np.floor(y).astype(int), 0, h - 1)
                # A labelled keypoint whose pixel is not in the person's visible mask is occluded: v = 1.
                kps[:, 2] = np.where(vis[yi, xi], 2.0, 1.0)
                dropped = rng.random(NUM_KEYPOINTS) < _UNLABELLED_KEYPOINT_PROB
                labelled = inside & ~dropped
                kps[~labelled] = 0.0
                kps[:, :2] = kps[:, :2].round(2)
        out.append((ann, kps))
    return out


def generate_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int,
    image_size: tuple[int, int] = (128, 128),
    split: str = "train",
    first_id: int = 1,
) -> dict[str, Path]:
    """Write ``num_images`` synthetic images and their COCO annotation files under ``out_dir``.

    ``image_size`` is (height, width). Image ids are ``first_id, first_id + 1, ...``. Returns the paths
    ``{"images": dir, "instances": json, "keypoints": json}``.
    """
    out = Path(out_dir)
    h, w = int(image_size[0]), int(image_size[1])
    if num_images < 0 or h < 16 or w < 16:
        raise ValueError(
            f"need num_images >= 0 and an image size of at least 16x16, got {num_images}, {h}x{w}"
        )
    img_dir = out / "images" / split
    ann_dir = out / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    split_key = zlib.crc32(split.encode())
    images: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    keypoints: list[dict[str, Any]] = []
    ann_id = first_id * 1000
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_key, index])
        image_id = first_id + index
        image, objs = _scene(rng, h, w)
        name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(img_dir / name), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        images.append({"id": image_id, "file_name": name, "height": h, "width": w, "license": 0})
        for ann, kps in _annotations(objs, h, w, rng):
            ann_id += 1
            ann = {"id": ann_id, "image_id": image_id, **ann}
            instances.append(ann)
            if kps is not None:
                keypoints.append(
                    {
                        **ann,
                        "num_keypoints": int((kps[:, 2] > 0).sum()),
                        "keypoints": [float(v) if v % 1 else int(v) for v in kps.ravel()],
                    }
                )
    info = {
        "description": f"mcn_ros synthetic COCO-format dataset (seed {seed}, split {split})",
        "version": "1.0",
        "year": 2026,
        "contributor": "mcn_training.synthetic",
        "url": "",
        "date_created": "",
    }
    licenses = [{"id": 0, "name": "generated", "url": ""}]
    files = {
        "instances": ann_dir / f"instances_{split}.json",
        "keypoints": ann_dir / f"person_keypoints_{split}.json",
    }
    common = {"info": info, "licenses": licenses, "images": images}
    files["instances"].write_text(
        json.dumps({**common, "annotations": instances, "categories": coco_categories()})
    )
    files["keypoints"].write_text(
        json.dumps({**common, "annotations": keypoints, "categories": [person_keypoint_category()]})
    )
    return {"images": img_dir, **files}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--out", required=True, help="output directory (COCO layout)")
    parser.add_argument("--train", type=int, default=100, help="number of training images")
    parser.add_argument("--val", type=int, default=20, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args(argv)
    size = (args.height, args.width)
    for split, n, first in (("train", args.train, 1), ("val", args.val, args.train + 1)):
        paths = generate_dataset(args.out, n, args.seed, size, split=split, first_id=first)
        print(f"{split}: {n} images -> {paths['instances']}, {paths['keypoints']}")


if __name__ == "__main__":
    main()
