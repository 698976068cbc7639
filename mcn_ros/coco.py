"""COCO json data as this project reads it: the keypoints file merged into the instances file.

COCO ships person keypoints (``person_keypoints_*.json``) apart from the boxes and masks of all classes
(``instances_*.json``); the evaluator, the training data and the bags' ground truth want one dataset. Plain
JSON data in and out: no ROS, no torch, no pycocotools.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mcn_ros.model.labels import NUM_KEYPOINTS


def labelled_keypoints(keypoints: Any) -> int:
    """COCO's ``num_keypoints`` of a keypoints list (x, y, v per keypoint): how many are labelled (v > 0).

    Not a list of numbers: 0 (the annotation check names such keypoints)."""
    if not isinstance(keypoints, list):
        return 0
    return sum(1 for v in keypoints[2::3] if isinstance(v, (int, float)) and v > 0)


def merge_keypoints(instances: Mapping[str, Any], keypoints: Mapping[str, Any] | None) -> dict[str, Any]:
    """One COCO dataset: a copy of ``instances`` with the keypoints of ``keypoints`` merged in by annotation
    id (:func:`merge_keypoints_into`); ``instances`` is left as it was."""
    merged = json.loads(json.dumps(instances))  # a deep copy of plain JSON data
    if keypoints is not None:
        merge_keypoints_into(merged, keypoints)
    return merged


def merge_keypoints_into(dataset: dict[str, Any], keypoints: Mapping[str, Any]) -> list[tuple[Any, Any, int]]:
    """Merge the keypoints file ``keypoints`` into the instances dataset ``dataset`` (in place), by id.

    A keypoint annotation the instances lack is added whole (a shallow copy); the others get its keypoints
    and ``num_keypoints``. Person annotations without keypoints get 17 unlabelled ones (ignored by OKS); the
    person category gets the keypoint names and skeleton of the keypoints file.

    ``num_keypoints`` is set to the count of labelled keypoints (:func:`labelled_keypoints`), its meaning in
    COCO, where it is missing or states another count: COCOeval ignores a person whose ``num_keypoints`` is
    0, while training learns from the visibility flags. Returns (annotation id, stated, counted) of each
    annotation whose stated count was replaced (a missing one is not listed).
    """
    annotations = dataset.setdefault("annotations", [])
    by_id = {ann["id"]: ann for ann in annotations}
    for kp_ann in keypoints.get("annotations", []):
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
