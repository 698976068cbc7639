"""Accuracy of a replay: the node's recorded outputs read back as results and scored against the ground truth.

:func:`results_by_stamp` turns an output bag into :class:`~mcn_ros.model.results.Results` per frame (a missed
output is an empty answer, or left out); :func:`predictions_from_outputs` does it for the ground truth's
frames, optionally counting late outputs as missed; :func:`score` runs :func:`mcn_ros.evaluation.evaluate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import OutputBag
from mcn_ros.bag.convert import (
    ClassIndex,
    class_map_from_message,
    detections_from_message,
    label_map,
    poses_from_message,
)
from mcn_ros.bag.ground_truth import GroundTruth
from mcn_ros.bag.pacing import FrameRecord
from mcn_ros.bag.provenance import weights_metadata
from mcn_ros.bag.typestore import DETECTIONS, IMAGE, LABEL_INFO, POSES
from mcn_ros.evaluation import EvalReport, evaluate
from mcn_ros.model.results import Detections, Poses, Results
from mcn_ros.ros.topic_names import CAMERA_TOPICS, NODE_TOPICS

#: Output key -> the task it answers.
TASK_OF = {"detections": "detection", "poses": "pose", "segmentation": "segmentation"}


@dataclass
class Classes:
    """The class lists scored, and where they came from."""

    detection: list[str] | None
    segmentation: list[str] | None
    source: str


@dataclass
class OutputTopics:
    """Which topic of an output bag holds which output (None: not recorded)."""

    detections: str | None
    poses: str | None
    segmentation: str | None
    label_info: str | None
    segmentation_label_info: str | None = None

    def present(self) -> dict[str, str]:
        """The outputs recorded (not the latched class lists)."""
        outputs = ("detections", "poses", "segmentation")
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k in outputs}


def _one(topics: list[str], suffix: str, what: str) -> str | None:
    if len(topics) > 1:
        preferred = [t for t in topics if t.endswith("/" + suffix)]
        if len(preferred) == 1:
            return preferred[0]
        raise BagError(
            f"the output bag has several {what} topics ({', '.join(topics)}): pick one node or camera with "
            "--outputs-under NAMESPACE"
        )
    return topics[0] if topics else None


def _within(namespace: str, topic: str) -> bool:
    """Whether ``topic`` lies under ``namespace``."""
    return topic.startswith(namespace.rstrip("/") + "/")


def _serves(topic: str, leaf: str, namespace: str) -> bool:
    """Whether the node-level topic ``topic`` (``<node>/<leaf>``) is of a node at or above ``namespace``
    (a camera's outputs lie under their node's namespace: ``~/<camera>/detections``, ``~/label_info``)."""
    owner = topic.rstrip("/").removesuffix("/" + leaf)
    return owner == namespace.rstrip("/") or _within(owner, namespace)


def output_topics(outputs: OutputBag, under: str | None = None) -> OutputTopics:
    """Find the node's outputs in a bag by type (and the class-map Image by its name, ``segmentation``);
    ``under``: only those under that namespace (one camera of a several-camera node, ``/mcn_node/front``,
    or one of several nodes in a recording), and the LabelInfos of the node above it."""

    def of_type(msgtype: str) -> list[str]:
        return [t for t in outputs.topics_of_type(msgtype) if under is None or _within(under, t)]

    class_map = "/" + CAMERA_TOPICS["segmentation"]
    segmentation = [t for t in of_type(IMAGE) if t.rstrip("/").endswith(class_map)]
    label_infos = outputs.topics_of_type(LABEL_INFO)
    # The node's ~/segmentation/label_info names the class map's values; ~/label_info the detection ids.
    names = "/" + NODE_TOPICS["segmentation_label_info"]
    segmentation_infos = [t for t in label_infos if t.rstrip("/").endswith(names)]
    detection_infos = [t for t in label_infos if t not in segmentation_infos]
    if under is not None:
        segmentation_infos = [t for t in segmentation_infos if _serves(t, names[1:], under)]
        detection_infos = [t for t in detection_infos if _serves(t, NODE_TOPICS["label_info"], under)]
    return OutputTopics(
        detections=_one(of_type(DETECTIONS), CAMERA_TOPICS["detections"], "Detection2DArray"),
        poses=_one(of_type(POSES), CAMERA_TOPICS["poses"], "HumanPose2DArray"),
        segmentation=_one(segmentation, CAMERA_TOPICS["segmentation"], "segmentation"),
        label_info=_one(detection_infos, NODE_TOPICS["label_info"], "LabelInfo"),
        segmentation_label_info=_one(
            segmentation_infos, NODE_TOPICS["segmentation_label_info"], "segmentation LabelInfo"
        ),
    )


def _latest_label_map(outputs: OutputBag, topic: str | None) -> dict[int, str] | None:
    if topic is None or not outputs.messages[topic]:
        return None
    return label_map(outputs.messages[topic][-1].message)


def segmentation_classes(mapping: Mapping[int, str]) -> list[str]:
    """The segmentation classes of the node's ``~/segmentation/label_info`` map (0 = background, value ``i``
    = class ``i - 1``), or a BagError when the map is not of that shape."""
    if mapping.get(0) != "background" or sorted(mapping) != list(range(len(mapping))):
        raise BagError(
            "the segmentation LabelInfo is not the node's (values 0 = background, 1..N the classes); "
            "pass --weights"
        )
    return [mapping[value] for value in range(1, len(mapping))]


def resolve_classes(outputs: OutputBag, topics: OutputTopics, weights: Path | None) -> Classes:
    """The weights' class lists when known; else the recorded LabelInfos': ``~/label_info`` for detection,
    ``~/segmentation/label_info`` for segmentation (a class map without it is not scored)."""
    if weights is not None:
        config = weights_metadata(weights)[0]
        return Classes(
            list(config.detection.classes) if config.detection is not None else None,
            list(config.segmentation.classes) if config.segmentation is not None else None,
            f"weights {weights}",
        )
    detection = _latest_label_map(outputs, topics.label_info)
    segmentation = _latest_label_map(outputs, topics.segmentation_label_info)
    if topics.detections is not None and detection is None:
        raise BagError(
            "cannot tell the detection class names: the output bag has no LabelInfo; pass --weights"
        )
    if detection is None and segmentation is None:
        if topics.segmentation is not None:
            raise BagError("cannot tell the class names: the output bag has no LabelInfo; pass --weights")
        return Classes(None, None, "none needed")
    source = "LabelInfo"
    if segmentation is None and topics.segmentation is not None:
        source += " (none for segmentation: pass --weights to score it)"
    return Classes(
        [detection[k] for k in sorted(detection)] if detection is not None else None,
        segmentation_classes(segmentation) if segmentation is not None else None,
        source,
    )


def _first_by_stamp(outputs: OutputBag, topic: str | None) -> dict[int, Any]:
    if topic is None:
        return {}
    first: dict[int, Any] = {}
    for item in outputs.messages.get(topic, []):
        first.setdefault(item.stamp_ns, item.message)
    return first


def class_index(outputs: OutputBag, topics: OutputTopics, classes: Classes) -> ClassIndex:
    """Detection class id -> index into the scored classes (through LabelInfo when it was recorded)."""
    label = None
    if topics.label_info is not None and outputs.messages[topics.label_info]:
        label = label_map(outputs.messages[topics.label_info][-1].message)
    return ClassIndex(classes.detection or [], label)


def results_by_stamp(
    outputs: OutputBag,
    topics: OutputTopics,
    classes: Classes,
    sizes: Mapping[int, tuple[int, int]],
    late: Mapping[int, set[str]] | None = None,
    fill_missing: bool = True,
) -> tuple[dict[int, Results], dict[str, int]]:
    """Results of each frame (header stamp -> (height, width)) from the output bag, and how many outputs
    each task missed (never came, or late per ``late``: stamp -> output keys).

    A missed output is an empty answer with ``fill_missing`` (no boxes, no persons, segmentation all
    background: what a consumer that heard nothing knows), else left out (None).
    """
    index = class_index(outputs, topics, classes)
    by_key = {key: _first_by_stamp(outputs, topic) for key, topic in topics.present().items()}
    missing = dict.fromkeys(by_key, 0)
    found: dict[int, Results] = {}
    for stamp, size in sizes.items():
        results = Results(image_size=size)
        for key, messages in by_key.items():
            message = messages.get(stamp)
            if message is None or (late is not None and key in late.get(stamp, set())):
                missing[key] += 1
                if not fill_missing:
                    continue
                message = None
            try:
                if key == "detections":
                    results.detections = (
                        detections_from_message(message, index) if message is not None else Detections.empty()
                    )
                elif key == "poses":
                    results.poses = poses_from_message(message) if message is not None else Poses.empty()
                else:
                    results.segmentation = (
                        class_map_from_message(message) if message is not None else np.zeros(size, np.uint8)
                    )
            except ValueError as error:
                raise BagError(f"frame stamped {stamp} ns: cannot read its {key} output: {error}") from error
        found[stamp] = results
    return found, missing


def predictions_from_outputs(
    outputs: OutputBag,
    topics: OutputTopics,
    ground_truth: GroundTruth,
    classes: Classes,
    records: Sequence[FrameRecord] | None = None,
    on_time_only: bool = False,
) -> tuple[dict[int, Results], dict[str, int]]:
    """:func:`results_by_stamp` of the ground truth's frames, by image id; with ``on_time_only`` an output
    that came after the next frame was sent counts as missed."""
    late = None
    if on_time_only and records is not None:
        late = {r.stamp_ns: {k for k in r.arrivals_ns if not r.on_time(k)} for r in records}
    sizes = {stamp: ground_truth.image_size(i) for stamp, i in sorted(ground_truth.image_of_stamp.items())}
    found, missing = results_by_stamp(outputs, topics, classes, sizes, late)
    return {ground_truth.image_of_stamp[stamp]: r for stamp, r in found.items()}, missing


def check_stamps(
    ground_truth: GroundTruth, outputs: OutputBag, topics: OutputTopics, records: Sequence[FrameRecord] | None
) -> None:
    """Raise :class:`BagError` when the ground truth is not that of the replayed frames."""
    what = f"ground truth {ground_truth.path} does not match the replay"
    known = ground_truth.image_of_stamp
    if records is not None:
        unknown = [r.stamp_ns for r in records if r.stamp_ns not in known]
        if unknown or len(records) != len(known):
            raise BagError(
                f"{what}: {len(unknown)} of the {len(records)} replayed frames have no image id in it, "
                f"which lists {len(known)} frames (first unknown stamp: {unknown[0] if unknown else None} ns)"
            )
        return
    stamps = {m.stamp_ns for topic in topics.present().values() for m in outputs.messages[topic]}
    if stamps and not stamps & set(known):
        raise BagError(f"{what}: none of the {len(stamps)} output stamps of {outputs.path} is in it")


def score(ground_truth: GroundTruth, predictions: Mapping[int, Results], classes: Classes) -> EvalReport:
    """:func:`mcn_ros.evaluation.evaluate`, its errors turned into one message about the ground truth."""
    det = classes.detection if any(r.detections is not None for r in predictions.values()) else None
    seg = classes.segmentation if any(r.segmentation is not None for r in predictions.values()) else None
    try:
        return evaluate(ground_truth.coco(), predictions, det, seg)
    except (KeyError, ValueError) as error:
        text = error.args[0] if error.args else error
        raise BagError(
            f"ground truth {ground_truth.path or ''} does not match the outputs: {text}"
        ) from error
