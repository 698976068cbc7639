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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_util

from mcn_ros.cli_types import integer_at_least
from mcn_ros.model.labels import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    KEYPOINT_NAMES,
    NUM_KEYPOINTS,
    SKELETON,
    coco_category_id,
)
from mcn_training.synthetic_drawing import (
    Canvas,
    draw_background,
    draw_car,
    draw_person,
    draw_sports_ball,
    draw_stop_sign,
    draw_traffic_light,
)

#: The COCO classes the generator draws (besides crowds of people).
SYNTHETIC_CLASSES: tuple[str, ...] = ("person", "car", "traffic light", "stop sign", "sports ball")

# COCO supercategories in COCO_CLASSES order, as run lengths (person 1, vehicle 8, outdoor 5, ...).
_SUPERCATEGORIES: tuple[tuple[str, int], ...] = (
    ("person", 1), ("vehicle", 8), ("outdoor", 5), ("animal", 10), ("accessory", 5), ("sports", 10),
    ("kitchen", 7), ("food", 10), ("furniture", 6), ("electronic", 6), ("appliance", 5), ("indoor", 7),
)  # fmt: skip

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


# ----------------------------------------------------------------------------------------------- scene
def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[_Instance]]:
    """Draw one image; return it and its instances in back-to-front order (with full, unoccluded masks)."""
    image = draw_background(rng, h, w)
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
        canvas = Canvas(image)
        cx, base = rng.uniform(0.2, 0.8) * w, rng.uniform(0.25, 0.5) * h
        for _ in range(int(rng.integers(4, 9))):
            draw_person(rng, canvas, cx + rng.uniform(-0.15, 0.15) * w, base + rng.uniform(-3, 3), 0.12 * h)
        instances.append(_Instance(coco_category_id("person"), canvas.mask.astype(bool), crowd=True))

    for kind, _box, params in sorted(plans, key=lambda p: p[1][3]):  # farther (higher) objects first
        canvas = Canvas(image)
        kps = None
        if kind == "person":
            kps = draw_person(rng, canvas, *params)
        elif kind == "car":
            draw_car(rng, canvas, *params)
        elif kind == "traffic light":
            draw_traffic_light(rng, canvas, *params)
        elif kind == "stop sign":
            draw_stop_sign(rng, canvas, *params)
        else:
            draw_sports_ball(rng, canvas, *params)
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
    _remove_earlier_images(ann_dir / f"instances_{split}.json", img_dir, first_id, num_images)
    split_key = zlib.crc32(split.encode())
    images: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    keypoints: list[dict[str, Any]] = []
    ann_id = first_id * 1000
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_key, index])
        image_id = first_id + index
        image, objs = _scene(rng, h, w)
        name = _image_name(image_id)
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


def _image_name(image_id: int) -> str:
    """The file name of image ``image_id``, COCO's style."""
    return f"{image_id:012d}.jpg"


def _remove_earlier_images(instances: Path, img_dir: Path, first_id: int, num_images: int) -> None:
    """Delete the images an earlier run listed in ``instances`` that this run does not write again: a
    folder read as it is (``quantize --images``) would otherwise hold images its annotations do not list.
    Only files that annotation file names are touched."""
    try:
        listed = {str(image["file_name"]) for image in json.loads(instances.read_text())["images"]}
    except (OSError, ValueError, KeyError, TypeError):
        return
    written = {_image_name(first_id + index) for index in range(num_images)}
    for name in listed - written:
        if Path(name).name == name:  # a plain file name of that folder, nothing elsewhere
            (img_dir / name).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m mcn_training.synthetic",
        description=__doc__.split("\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output directory (COCO layout)")
    parser.add_argument("--train", type=integer_at_least(0), default=100, help="number of training images")
    parser.add_argument("--val", type=integer_at_least(0), default=20, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the same seed, the same images)")
    parser.add_argument("--height", type=integer_at_least(16), default=128, help="image height in pixels")
    parser.add_argument("--width", type=integer_at_least(16), default=128, help="image width in pixels")
    args = parser.parse_args(argv)
    size = (args.height, args.width)
    for split, n, first in (("train", args.train, 1), ("val", args.val, args.train + 1)):
        paths = generate_dataset(args.out, n, args.seed, size, split=split, first_id=first)
        print(f"{split}: {n} images -> {paths['instances']}, {paths['keypoints']}")


if __name__ == "__main__":
    main()
