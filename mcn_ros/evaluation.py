"""Evaluation of :class:`~mcn_ros.model.results.Results` against COCO-format ground truth.

Shared by training (validation) and the rosbag replay report. Box and keypoint AP are the official COCO
numbers from ``pycocotools.cocoeval.COCOeval`` (AP = mean over IoU/OKS 0.50:0.95, AP50 at 0.50); per-class
box AP is read from the same run's precision array (area "all", 100 detections), so over the classes that
have ground truth its mean is the overall box AP; the
semantic segmentation metrics are computed here from a confusion matrix, because pycocotools has no
semantic-segmentation evaluator for instance-annotated COCO.

Segmentation ground truth (:func:`semantic_target`) merges the instance masks of each class, as the MCN
paper does: 0 = background (every pixel no listed class covers), ``i`` = ``classes[i-1]``, and 255 =
ignore for crowd regions (``iscrowd=1``) of listed classes not covered by a non-crowd instance. Where
instances overlap, smaller instances are painted over larger ones.

mIoU is FCN-style (the paper's reference [10]): one confusion matrix accumulated over all evaluated pixels
of all images (ignore pixels excluded), IoU per class = TP / (TP + FP + FN), and mIoU = the mean over the
classes that occur in the ground truth or the predictions of the evaluated images, **background included as
a class**. ``person_IoU`` is the IoU of the class "person" (the paper's single-class "Segmentation IoU").
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mcn_ros.coco import annotations_by_id, labelled_keypoints, merge_keypoints_into
from mcn_ros.model.labels import IGNORE_INDEX, NUM_KEYPOINTS
from mcn_ros.model.results import Results

#: The headline metrics of an :class:`EvalReport`, in the order reports print them.
METRICS: tuple[str, ...] = ("bbox_AP", "bbox_AP50", "kp_AP", "kp_AP50", "mIoU", "person_IoU")


@dataclass
class EvalReport:
    """Metrics of one evaluation (fractions in [0, 1]; None = the task was not evaluated)."""

    bbox_AP: float | None = None  # noqa: N815 (the contract's metric names)
    bbox_AP50: float | None = None  # noqa: N815 (the contract's metric names)
    kp_AP: float | None = None  # noqa: N815 (the contract's metric names)
    kp_AP50: float | None = None  # noqa: N815 (the contract's metric names)
    mIoU: float | None = None  # noqa: N815 (the contract's metric names)
    person_IoU: float | None = None  # noqa: N815 (the contract's metric names)
    #: IoU per segmentation class name ("background" included) over the classes that occur.
    per_class_IoU: dict[str, float] = field(default_factory=dict)  # noqa: N815
    #: Box AP (IoU 0.50:0.95) per detection class name, over the classes with ground truth in the images.
    per_class_AP: dict[str, float] = field(default_factory=dict)  # noqa: N815
    #: Number of images evaluated.
    num_images: int = 0
    #: Detection classes with no category of that name in the dataset: left out of the box AP, their
    #: predictions too (the ground truth cannot judge them).
    classes_not_in_dataset: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping."""
        return asdict(self)

    def table(self) -> str:
        """Markdown table of the headline metrics (percentages), then the per-class IoUs and APs if any."""
        rows = [
            ("bbox AP", self.bbox_AP),
            ("bbox AP50", self.bbox_AP50),
            ("keypoint AP", self.kp_AP),
            ("keypoint AP50", self.kp_AP50),
            ("mIoU", self.mIoU),
            ("person IoU", self.person_IoU),
        ]
        lines = ["| metric | value |", "| --- | ---: |"]
        lines += [f"| {name} | {_pct(value)} |" for name, value in rows if value is not None]
        lines.append(f"| images | {self.num_images} |")
        if self.per_class_IoU:
            lines += ["", "| class | IoU |", "| --- | ---: |"]
            lines += [f"| {name} | {_pct(value)} |" for name, value in self.per_class_IoU.items()]
        if self.per_class_AP:
            lines += ["", "| class | box AP |", "| --- | ---: |"]
            lines += [f"| {name} | {_pct(value)} |" for name, value in self.per_class_AP.items()]
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def load_coco(instances_json: str | Path, keypoints_json: str | Path | None = None) -> tuple[COCO, set[int]]:
    """Load an instances file and merge a keypoints file into it (by annotation id): the one dataset that
    training, the evaluator and the int8 calibration's validation read.

    Returns the ``COCO`` and the ids of the images with at least one keypoint annotation. Person annotations
    of the instances file missing from the keypoints file get 0 keypoints; the keypoint names and skeleton
    are copied into the person category. The image entries and annotations are checked
    (:func:`check_images`, :func:`check_annotations`): a ValueError names the first one that is unusable.
    """
    name = Path(instances_json).name
    dataset = json.loads(Path(instances_json).read_text(encoding="utf-8"))
    if not isinstance(dataset, dict):
        raise ValueError(f"{name}: not a COCO dataset (a JSON object), got a {type(dataset).__name__}")
    pose_images: set[int] = set()
    if keypoints_json is None:
        annotations_by_id(dataset.get("annotations", []), name)  # before pycocotools indexes them by id
    else:
        data = json.loads(Path(keypoints_json).read_text(encoding="utf-8"))
        pose_images.update(int(kp_ann["image_id"]) for kp_ann in data.get("annotations", []))
        replaced = merge_keypoints_into(dataset, data, (name, Path(keypoints_json).name))
        if replaced:
            ann_id, stated, counted = replaced[0]
            warnings.warn(
                f"{Path(keypoints_json).name}: the num_keypoints of {len(replaced)} annotations differ from "
                f"the number of keypoints labelled (v > 0) in them (first: annotation {ann_id!r}, "
                f"{stated!r} stated, {counted} labelled); the labelled ones count, as training reads them",
                stacklevel=2,
            )
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    check_images(coco, name)
    files = [name] + ([Path(keypoints_json).name] if keypoints_json is not None else [])
    source = " + ".join(files)
    dropped = check_annotations(coco, source, keypoints=keypoints_json is not None)
    if dropped:
        warnings.warn(f"{source}: {dropped} polygons of fewer than 3 points left out", stacklevel=2)
    return coco, pose_images


def _polygon(points: Any) -> bool:
    """Whether the coordinates ``points`` (checked numbers) are a polygon pycocotools can draw: at least 3
    (x, y) points."""
    return isinstance(points, list) and len(points) >= 6 and len(points) % 2 == 0


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not a bool, a string or null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= sys.float_info.max  # False for inf, nan and an int no float holds


def _pixels(value: Any) -> bool:
    """Whether ``value`` is an image side in pixels: a whole number >= 1."""
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return whole and not isinstance(value, bool) and value >= 1


def _image_problem(info: Mapping[str, Any]) -> str | None:
    """What is wrong with one image entry's fields (None: nothing), as training and evaluation read them."""
    name = info.get("file_name")
    if not isinstance(name, str) or not name:
        return "file_name is missing" if name is None else f"file_name should be a file name, got {name!r}"
    for side in ("height", "width"):
        if info.get(side) is None:
            return f"{side} is missing"
        if not _pixels(info[side]):
            return f"{side} should be a whole number of pixels >= 1, got {info[side]!r}"
    return None


def check_images(coco: COCO, source: str) -> None:
    """Check the image entries of ``coco`` (read from ``source``): a ValueError naming the first one whose
    ``file_name``, ``height`` or ``width`` training and evaluation cannot use."""
    for info in coco.dataset.get("images", []):
        problem = _image_problem(info)
        if problem is not None:
            raise ValueError(f"image {info.get('id')!r} in {source}: {problem}")


def _rle_string_total(counts: str) -> int | None:
    """The pixels a compressed COCO RLE string covers (the sum of its run lengths), decoded as pycocotools'
    ``rleFrString`` does; None where it is not one."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value = shift = 0
        more = True
        while more:
            if position == len(counts):
                return None
            char = ord(counts[position]) - 48
            if not 0 <= char < 64:
                return None
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift  # a negative difference
        if len(runs) > 2:
            value += runs[-2]  # from the third run on, a difference to the run two before
        if value < 0:
            return None
        runs.append(value)
    return sum(runs)


def _rle_problem(rle: Mapping[str, Any], image: Mapping[str, Any]) -> str | None:
    """What is wrong with an RLE segmentation of ``image`` (None: nothing). pycocotools decodes an RLE into
    an array of its ``size`` without checking that the run lengths fill it, or that it is the image's."""
    if "counts" not in rle or "size" not in rle:
        return "an RLE segmentation needs 'counts' and 'size'"
    if not _pixels(image.get("height")) or not _pixels(image.get("width")):
        return None  # check_images names the image
    height, width = int(image["height"]), int(image["width"])
    size = rle["size"]
    if not isinstance(size, list) or size != [height, width]:
        return f"RLE size {size!r} is not the image's [height, width] [{height}, {width}]"
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        total = _rle_string_total(counts)
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        total = sum(counts) if all(v >= 0 for v in counts) else None
    else:
        total = None
    if total is None:
        return "RLE counts should be run lengths (a list of whole numbers >= 0 or a COCO RLE string)"
    if total != height * width:
        return f"RLE counts cover {total} pixels, its size {height}x{width} has {height * width}"
    return None


def _annotation_problem(ann: Mapping[str, Any], coco: COCO, person: int | None) -> str | None:
    """What is wrong with one annotation's fields (None: nothing), as training and evaluation read them;
    keypoints are read on ``person`` annotations only (None: not at all)."""
    if ann.get("image_id") not in coco.imgs:
        return f"image_id {ann.get('image_id')!r} is not among the images"
    if ann.get("category_id") not in coco.cats:
        return f"category_id {ann.get('category_id')!r} is not among the categories"
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_finite(v) for v in bbox):
        return f"bbox should be 4 numbers [x, y, width, height], each finite, got {bbox!r}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox width and height should be >= 0, got {bbox!r}"
    if "area" in ann and not (_finite(ann["area"]) and ann["area"] >= 0):
        return f"area should be a finite number >= 0, got {ann['area']!r}"
    if "iscrowd" in ann and (not isinstance(ann["iscrowd"], (int, bool)) or ann["iscrowd"] not in (0, 1)):
        return f"iscrowd should be 0 or 1, got {ann['iscrowd']!r}"
    if ann.get("category_id") == person and "keypoints" in ann:
        problem = _keypoints_problem(ann["keypoints"])
        if problem is not None:
            return problem
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, coco.imgs[ann["image_id"]])
    if segmentation is not None and not isinstance(segmentation, list):
        return f"segmentation should be polygons or RLE, got {type(segmentation).__name__}"
    for polygon in segmentation or []:
        if not isinstance(polygon, list):
            return f"a polygon should be a list of coordinates, got {type(polygon).__name__}"
        bad = [v for v in polygon if not _finite(v)]
        if bad:
            return f"polygon coordinates should be finite numbers, got {bad[0]!r}"
    return None


def _keypoints_problem(keypoints: Any) -> str | None:
    """What is wrong with a person's keypoints (None: nothing): 17 x (x, y, v), v 0, 1 or 2."""
    if not isinstance(keypoints, list) or len(keypoints) != 3 * NUM_KEYPOINTS:
        count = len(keypoints) if isinstance(keypoints, list) else type(keypoints).__name__
        return f"keypoints should be {3 * NUM_KEYPOINTS} numbers (x, y, v of {NUM_KEYPOINTS}), got {count}"
    for index, value in enumerate(keypoints):
        if not _finite(value):
            return f"keypoints should be finite numbers, got {value!r} at index {index}"
        if index % 3 == 2 and value not in (0, 1, 2):
            return f"a keypoint's v (every third value) should be 0, 1 or 2, got {value!r} at index {index}"
    return None


def _area(coco: COCO, ann: Mapping[str, Any]) -> float:
    """The area of a checked annotation, as detectron2's COCO converter fills in a missing one: its mask's,
    else its box's."""
    if ann.get("segmentation"):
        return float(mask_utils.area(coco.annToRLE(ann)))
    return float(ann["bbox"][2] * ann["bbox"][3])


def check_annotations(coco: COCO, source: str, keypoints: bool = True) -> int:
    """Check the annotations of ``coco`` (read from ``source``) as training and evaluation read them: a
    ValueError naming the first one whose fields they cannot use (or whose id another has), so that it stops
    a run at its start, not hours into it (``keypoints``: check the persons' keypoints, which only pose
    training and evaluation read). Polygons of fewer than 3 points, which pycocotools cannot draw, are
    dropped in place (as detectron2 does; an object left without any has no mask); returns how many. A
    missing ``area``, which COCOeval reads, is filled in (:func:`_area`) with one warning."""
    person = categories_by_name(coco).get("person")
    annotations_by_id(coco.dataset.get("annotations", []), source)
    dropped = measured = 0
    for ann in coco.dataset.get("annotations", []):
        problem = _annotation_problem(ann, coco, person if keypoints else None)
        if problem is not None:
            raise ValueError(
                f"annotation {ann.get('id')!r} (image {ann.get('image_id')!r}) in {source}: {problem}"
            )
        polygons = ann.get("segmentation")
        if isinstance(polygons, list) and not all(_polygon(p) for p in polygons):
            ann["segmentation"] = [p for p in polygons if _polygon(p)]
            dropped += len(polygons) - len(ann["segmentation"])
        if "area" not in ann:
            ann["area"] = _area(coco, ann)
            measured += 1
        ann.setdefault("iscrowd", 0)  # COCOeval reads it; training and detectron2 take a missing one as 0
    if measured:
        warnings.warn(
            f"{source}: {measured} annotations have no area: their masks' areas are used (their boxes' where "
            "they have no mask), as detectron2 does",
            stacklevel=2,
        )
    return dropped


def categories_by_name(coco: COCO) -> dict[str, int]:
    """Category name -> id of ``coco``'s categories (the model's classes are matched to them by name)."""
    return {str(cat["name"]): int(cid) for cid, cat in coco.cats.items()}


def category_ids(coco_gt: COCO, classes: Sequence[str]) -> list[int]:
    """COCO category ids of class names, matched by name in ``coco_gt``'s categories (KeyError if absent)."""
    by_name = categories_by_name(coco_gt)
    missing = [name for name in classes if name not in by_name]
    if missing:
        raise KeyError(f"classes not among the dataset's categories: {', '.join(missing)}")
    return [int(by_name[name]) for name in classes]


def semantic_target(coco_gt: COCO, image_id: int, classes: Sequence[str]) -> np.ndarray:
    """Class-id map uint8 [h, w] of one image: 0 background, 1..C = ``classes``, 255 = ignore: crowd
    regions, and the box of an object without a mask (``segmentation`` empty or absent, as in box-only
    data) where no masked object lies (its pixels are unknown, not background).

    Classes missing from the dataset's categories are simply never painted.
    """
    info = coco_gt.imgs[image_id]
    h, w = int(info["height"]), int(info["width"])
    target = np.zeros((h, w), np.uint8)
    by_name = categories_by_name(coco_gt)
    label = {by_name[name]: i + 1 for i, name in enumerate(classes) if name in by_name}
    anns = [a for a in coco_gt.imgToAnns.get(image_id, []) if a["category_id"] in label]
    masked = [a for a in anns if a.get("segmentation")]
    for ann in anns:
        if not ann.get("segmentation"):
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            rows = slice(max(0, int(y)), max(0, int(np.ceil(y + bh))))
            target[rows, max(0, int(x)) : max(0, int(np.ceil(x + bw)))] = IGNORE_INDEX
        elif ann.get("iscrowd", 0):
            target[coco_gt.annToMask(ann).astype(bool)] = IGNORE_INDEX
    objects = (a for a in masked if not a.get("iscrowd", 0))
    for ann in sorted(objects, key=lambda a: -float(a.get("area", 0.0))):
        target[coco_gt.annToMask(ann).astype(bool)] = label[ann["category_id"]]
    return target


def _summarise(evaluator: COCOeval) -> tuple[float, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50 = float(evaluator.stats[0]), float(evaluator.stats[1])
    # COCOeval reports -1 when no ground truth exists for the evaluated categories.
    return max(ap, 0.0), max(ap50, 0.0)


def _per_class_ap(evaluator: COCOeval, coco_gt: COCO) -> dict[str, float]:
    """AP per category of an accumulated COCOeval, the standard way (as ``summarize`` does for all).

    ``eval["precision"]`` is [IoU thresholds, recall points, categories, areas, max dets] with -1 where a
    category has no (non-ignored) ground truth; AP of category k = mean of its entries > -1 for area "all"
    and the largest max-dets setting (100). Categories with no such entry are left out.
    """
    precision = np.asarray(evaluator.eval["precision"])
    params = evaluator.params
    area = params.areaRngLbl.index("all")
    dets = params.maxDets.index(max(params.maxDets))
    out: dict[str, float] = {}
    for k, cat_id in enumerate(params.catIds):  # COCOeval.evaluate sorts catIds: they index axis 2
        values = precision[:, :, k, area, dets]
        values = values[values > -1]
        if values.size:
            out[str(coco_gt.cats[cat_id]["name"])] = float(values.mean())
    return out


def _load_results(coco_gt: COCO, results: list[dict[str, Any]]) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(results)


def _keypoint_gt(coco_gt: COCO, person_id: int) -> COCO:
    """A COCO of the person annotations with keypoints (missing ones: 0 keypoints, i.e. ignored by OKS;
    a missing ``num_keypoints``: the number labelled)."""
    anns = []
    for ann in coco_gt.dataset.get("annotations", []):
        if ann["category_id"] != person_id:
            continue
        ann = dict(ann)
        ann.setdefault("keypoints", [0] * (3 * NUM_KEYPOINTS))
        ann.setdefault("num_keypoints", labelled_keypoints(ann["keypoints"]))  # ignored by COCOeval when 0
        anns.append(ann)
    gt = COCO()
    gt.dataset = {
        "images": coco_gt.dataset.get("images", []),
        "annotations": anns,
        "categories": [coco_gt.cats[person_id]],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def evaluate(
    coco_gt: COCO,
    predictions: Mapping[int, Results],
    detection_classes: Sequence[str] | None,
    segmentation_classes: Sequence[str] | None,
) -> EvalReport:
    """Evaluate predictions (image id -> Results in original pixels) on the images they cover.

    Boxes are evaluated when ``detection_classes`` is given and the Results carry detections (categories
    restricted to those classes; classes the dataset has no category for are left out and listed in
    ``classes_not_in_dataset``); keypoints when the Results carry poses and the ground truth has keypoints
    (category person, COCO's 17 OKS sigmas); segmentation when ``segmentation_classes`` is given and the
    Results carry a class map. No predictions at all for a task gives AP 0.0, not an error.
    """
    image_ids = sorted(int(i) for i in predictions)
    unknown = [i for i in image_ids if i not in coco_gt.imgs]
    if unknown:
        raise KeyError(f"predictions for images not in the ground truth: {unknown[:5]}")
    report = EvalReport(num_images=len(image_ids))
    if not image_ids:
        return report

    with_det = [i for i in image_ids if predictions[i].detections is not None]
    if detection_classes is not None and with_det:
        by_name = categories_by_name(coco_gt)
        report.classes_not_in_dataset = [name for name in detection_classes if name not in by_name]
        category_of = {i: by_name[name] for i, name in enumerate(detection_classes) if name in by_name}
        if not category_of:
            raise KeyError(
                f"none of the {len(detection_classes)} detection classes is among the dataset's categories "
                f"({', '.join(sorted(by_name)[:10])}...): are these the weights for this dataset?"
            )
        cat_ids = list(category_of.values())
        dets: list[dict[str, Any]] = []
        for image_id in with_det:
            d = predictions[image_id].detections
            assert d is not None
            xywh = np.asarray(d.boxes, np.float64).reshape(-1, 4).copy()
            xywh[:, 2:] -= xywh[:, :2]
            for box, score, cls in zip(xywh, d.scores, d.class_ids, strict=True):
                if int(cls) in category_of:
                    dets.append(
                        {
                            "image_id": image_id,
                            "category_id": category_of[int(cls)],
                            "bbox": [round(float(v), 3) for v in box],
                            "score": float(score),
                        }
                    )
        if dets:
            evaluator = COCOeval(coco_gt, _load_results(coco_gt, dets), "bbox")
            evaluator.params.imgIds = with_det
            evaluator.params.catIds = cat_ids
            report.bbox_AP, report.bbox_AP50 = _summarise(evaluator)
            report.per_class_AP = _per_class_ap(evaluator, coco_gt)
        else:
            report.bbox_AP, report.bbox_AP50 = 0.0, 0.0
            with_gt = {
                int(a["category_id"])
                for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=with_det, catIds=cat_ids))
                if not a.get("iscrowd", 0)
            }
            report.per_class_AP = {str(coco_gt.cats[c]["name"]): 0.0 for c in sorted(with_gt)}

    with_pose = [i for i in image_ids if predictions[i].poses is not None]
    has_kp_gt = any("keypoints" in a for a in coco_gt.dataset.get("annotations", []))
    if with_pose and has_kp_gt:
        (person_id,) = category_ids(coco_gt, ["person"])
        kps: list[dict[str, Any]] = []
        for image_id in with_pose:
            p = predictions[image_id].poses
            assert p is not None
            for box, score, points in zip(p.boxes, p.scores, p.keypoints, strict=True):
                points = np.asarray(points, np.float64).copy()
                points[:, 2] = 1.0  # COCO result convention: OKS ignores it; a visible flag for viewers
                bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
                kps.append(
                    {
                        "image_id": image_id,
                        "category_id": person_id,
                        "keypoints": [round(float(v), 3) for v in points.ravel()],
                        "score": float(score),
                        "bbox": [float(box[0]), float(box[1]), bw, bh],
                    }
                )
        if kps:
            gt = _keypoint_gt(coco_gt, person_id)
            evaluator = COCOeval(gt, _load_results(gt, kps), "keypoints")
            evaluator.params.imgIds = with_pose
            evaluator.params.catIds = [person_id]
            report.kp_AP, report.kp_AP50 = _summarise(evaluator)
        else:
            report.kp_AP, report.kp_AP50 = 0.0, 0.0

    with_seg = [i for i in image_ids if predictions[i].segmentation is not None]
    if segmentation_classes is not None and with_seg:
        names = ["background", *segmentation_classes]
        n = len(names)
        confusion = np.zeros((n, n), np.int64)  # [ground truth, prediction]
        for image_id in with_seg:
            pred = np.asarray(predictions[image_id].segmentation).astype(np.int64)
            gt_map = semantic_target(coco_gt, image_id, segmentation_classes).astype(np.int64)
            if pred.shape != gt_map.shape:
                raise ValueError(
                    f"image {image_id}: segmentation {pred.shape} but the image is {gt_map.shape}"
                )
            valid = gt_map != IGNORE_INDEX
            if (pred[valid] >= n).any():
                raise ValueError(f"image {image_id}: segmentation class id out of range (>= {n})")
            confusion += np.bincount(gt_map[valid] * n + pred[valid], minlength=n * n).reshape(n, n)
        tp = np.diag(confusion).astype(np.float64)
        union = confusion.sum(0) + confusion.sum(1) - tp
        present = union > 0
        iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
        report.per_class_IoU = {names[c]: float(iou[c]) for c in np.flatnonzero(present)}
        report.mIoU = float(iou[present].mean()) if present.any() else 0.0
        if "person" in segmentation_classes:
            report.person_IoU = report.per_class_IoU.get("person", 0.0)
    return report
