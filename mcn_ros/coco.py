"""COCO json data as this project reads it: the keypoints file merged into the instances file.

COCO ships person keypoints (``person_keypoints_*.json``) apart from the boxes and masks of all classes
(``instances_*.json``); the evaluator, the training data and the bags' ground truth want one dataset. Plain
JSON data in and out: no ROS, no torch, no pycocotools.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from typing import Any

from mcn_ros.model.labels import NUM_KEYPOINTS


def labelled_keypoints(keypoints: Any) -> int:
    """COCO's ``num_keypoints`` of a keypoints list (x, y, v per keypoint): how many are labelled (v > 0).

    Not a list of numbers: 0 (the annotation check names such keypoints)."""
    if not isinstance(keypoints, list):
        return 0
    return sum(1 for v in keypoints[2::3] if isinstance(v, (int, float)) and v > 0)


def annotations_by_id(annotations: Any, source: str) -> dict[Any, dict[str, Any]]:
    """The annotations of ``source`` by id; a ValueError naming the first without an id, or with the id of
    an earlier one (pycocotools' index, and a merge by id, would keep only the last of them)."""
    by_id: dict[Any, dict[str, Any]] = {}
    for index, ann in enumerate(annotations):
        ann_id = ann.get("id") if isinstance(ann, Mapping) else None
        if ann_id is None or not isinstance(ann_id, Hashable):
            image = ann.get("image_id") if isinstance(ann, Mapping) else None
            got = "" if ann_id is None else f": {ann_id!r}"
            raise ValueError(f"the annotation at index {index} in {source} (image {image!r}) has no id{got}")
        if ann_id in by_id:
            images = f"images {by_id[ann_id].get('image_id')!r} and {ann.get('image_id')!r}"
            raise ValueError(f"annotation id {ann_id!r} is used twice in {source} ({images})")
        by_id[ann_id] = ann
    return by_id


def merge_keypoints(
    instances: Mapping[str, Any],
    keypoints: Mapping[str, Any] | None,
    names: tuple[str, str] = ("the instances", "the keypoints file"),
) -> dict[str, Any]:
    """One COCO dataset: a copy of ``instances`` with the keypoints of ``keypoints`` merged in by annotation
    id (:func:`merge_keypoints_into`, ``names`` the two files'); ``instances`` is left as it was."""
    merged = json.loads(json.dumps(instances))  # a deep copy of plain JSON data
    if keypoints is not None:
        merge_keypoints_into(merged, keypoints, names)
    return merged


def merge_keypoints_into(
    dataset: dict[str, Any],
    keypoints: Mapping[str, Any],
    names: tuple[str, str] = ("the instances", "the keypoints file"),
) -> list[tuple[Any, Any, int]]:
    """Merge the keypoints file ``keypoints`` into the instances dataset ``dataset`` (in place), by id; an
    id missing or used twice in either is a ValueError naming it and the file (``names``: of both).

    A keypoint annotation the instances lack is added whole (a shallow copy); the others get its keypoints
    and ``num_keypoints``. Person annotations without keypoints get 17 unlabelled ones (ignored by OKS); the
    person category gets the keypoint names and skeleton of the keypoints file.

    ``num_keypoints`` is set to the count of labelled keypoints (:func:`labelled_keypoints`), its meaning in
    COCO, where it is missing or states another count: COCOeval ignores a person whose ``num_keypoints`` is
    0, while training learns from the visibility flags. Returns (annotation id, stated, counted) of each
    annotation whose stated count was replaced (a missing one is not listed).
    """
    annotations = dataset.setdefault("annotations", [])
    by_id = annotations_by_id(annotations, names[0])
    for kp_ann in annotations_by_id(keypoints.get("annotations", []), names[1]).values():
        target = by_id.get(kp_ann["id"])
        if target is None:
            annotations.append(dict(kp_ann))
            by_id[kp_ann["id"]] = annotations[-1]
        else:
            target["keypoints"] = kp_ann.get("keypoints", [0] * (3 * NUM_KEYPOINTS))
            target.pop("num_keypoints", None)
            if "num_keypoints" in kp_ann:
                target["num_keypoints"] = kp_ann["num_keypoints"]
    person_ids = set()
    for cat in keypoints.get("categories", []):
        for own in dataset.get("categories", []):
            if own["id"] == cat["id"] or own["name"] == cat["name"]:
                own.setdefault("keypoints", cat.get("keypoints"))
                own.setdefault("skeleton", cat.get("skeleton"))
                person_ids.add(own["id"])
    replaced = []
    for ann in annotations:
        if ann["category_id"] in person_ids and "keypoints" not in ann:
            ann["keypoints"] = [0] * (3 * NUM_KEYPOINTS)
        if "keypoints" in ann:
            counted = labelled_keypoints(ann["keypoints"])
            stated = ann.get("num_keypoints", counted)
            if stated != counted:
                replaced.append((ann["id"], stated, counted))
            ann["num_keypoints"] = counted
    return replaced
