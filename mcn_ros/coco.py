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


def merge_keypoints(instances: Mapping[str, Any], keypoints: Mapping[str, Any] | None) -> dict[str, Any]:
    """One COCO dataset: a copy of ``instances`` with the keypoints of ``keypoints`` merged in by annotation
    id (:func:`merge_keypoints_into`); ``instances`` is left as it was."""
    merged = json.loads(json.dumps(instances))  # a deep copy of plain JSON data
    if keypoints is not None:
        merge_keypoints_into(merged, keypoints)
    return merged


def merge_keypoints_into(dataset: dict[str, Any], keypoints: Mapping[str, Any]) -> None:
    """Merge the keypoints file ``keypoints`` into the instances dataset ``dataset`` (in place), by id.

    A keypoint annotation the instances lack is added whole (a shallow copy); the others get its keypoints
    and ``num_keypoints``. Person annotations without keypoints get 17 unlabelled ones (ignored by OKS); the
    person category gets the keypoint names and skeleton of the keypoints file.
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
            target["num_keypoints"] = int(kp_ann.get("num_keypoints", 0))
    person_ids = set()
    for cat in keypoints.get("categories", []):
        for own in dataset.get("categories", []):
            if own["id"] == cat["id"] or own["name"] == cat["name"]:
                own.setdefault("keypoints", cat.get("keypoints"))
                own.setdefault("skeleton", cat.get("skeleton"))
                person_ids.add(own["id"])
    for ann in annotations:
        if ann["category_id"] in person_ids and "keypoints" not in ann:
            ann["keypoints"] = [0] * (3 * NUM_KEYPOINTS)
            ann["num_keypoints"] = 0
