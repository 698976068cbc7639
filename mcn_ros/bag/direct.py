"""The model runtime alone on a bag's frames (what the ROS path must not lose), and a replay's distance to it.

:func:`direct_predictions` runs :class:`~mcn_ros.model.predictor.Predictor` on the camera frames, decoded as
the node decodes them, with the node's parameters; :func:`agreement` compares its boxes and segmentation
with a replay's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import read_camera_bag
from mcn_ros.bag.ground_truth import GroundTruth
from mcn_ros.model.results import Results


def _precision(parameters: Mapping[str, Any]) -> str:
    """The node's precision parameter (reports written before it existed recorded a bool ``half``)."""
    if "precision" in parameters:
        return str(parameters["precision"])
    return "fp16" if parameters.get("half") else "fp32"


def direct_predictions(
    bag: Path,
    topic: str | None,
    ground_truth: GroundTruth,
    weights: Path,
    parameters: Mapping[str, Any],
    tasks: set[str],
) -> dict[int, Results]:
    """Predictor on the bag's frames, decoded as the node decodes them, with the node's parameters."""
    from mcn_ros.model.predictor import Predictor
    from mcn_ros.model.weights import WeightsError

    try:
        predictor = Predictor.from_weights(
            weights,
            device=str(parameters.get("device", "auto")),
            precision=_precision(parameters),
            rect=bool(parameters.get("rect_input", True)),
            backend=str(parameters.get("backend", "torch")),
            int8_graph=str(parameters.get("int8_graph", "")) or None,
            cuda_graphs=bool(parameters.get("cuda_graphs", False)),
            torch_compile=bool(parameters.get("torch_compile", False)),
        )
    except WeightsError as error:
        raise BagError(str(error)) from error
    size = [int(v) for v in parameters.get("input_size", [0, 0])]
    if size != [0, 0]:
        predictor.config = dataclasses.replace(predictor.config, input_size=(size[0], size[1]))
    enabled = set(parameters.get("tasks", predictor.tasks))
    camera = read_camera_bag(bag, topic)
    predictions: dict[int, Results] = {}
    for frame in camera.frames:
        image_id = ground_truth.image_of_stamp.get(frame.stamp_ns)
        if image_id is None:
            continue
        pixels, order = camera.pixels(frame)
        result = predictor.predict(
            pixels,
            tasks=sorted(tasks & enabled & set(predictor.tasks)),
            color_order=order,
            score_threshold=float(parameters.get("score_threshold", 0.3)),
            pose_score_threshold=float(parameters.get("pose_score_threshold", 0.3)),
            max_detections=int(parameters.get("max_detections", 100)),
            flip_test=bool(parameters.get("flip_test", False)),
            segmentation_resampling=str(parameters.get("segmentation_resampling", "nearest")),
        )
        assert isinstance(result, Results)
        predictions[image_id] = result
    return predictions


def agreement(direct: Mapping[int, Results], replayed: Mapping[int, Results]) -> dict[str, Any]:
    """How far the replayed boxes are from the model runtime's: frames whose box counts differ, largest
    box coordinate difference (px) among the others, frames whose segmentation differs."""
    count_differs = seg_differs = 0
    largest = 0.0
    for image_id, mine in direct.items():
        theirs = replayed.get(image_id)
        if theirs is None:
            continue
        if mine.detections is not None and theirs.detections is not None:
            if len(mine.detections) != len(theirs.detections):
                count_differs += 1
            elif len(mine.detections):
                largest = max(largest, float(np.abs(mine.detections.boxes - theirs.detections.boxes).max()))
        if mine.segmentation is not None and theirs.segmentation is not None:
            seg_differs += int(not np.array_equal(mine.segmentation, theirs.segmentation))
    return {
        "frames_with_other_box_count": count_differs,
        "max_box_difference_px": round(largest, 4),
        "frames_with_other_segmentation": seg_differs,
    }
