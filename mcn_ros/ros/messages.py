"""Results -> ROS messages, each stamped with the input image's header.

The message layer converts :class:`mcn_ros.model.results.Results` (numpy) and never touches tensors.
rclpy message construction is per object by nature; everything else is done on whole arrays.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import (
    BoundingBox2D,
    Detection2D,
    Detection2DArray,
    LabelInfo,
    ObjectHypothesisWithPose,
    VisionClass,
)

from mcn_ros.model.labels import KEYPOINT_NAMES, SKELETON
from mcn_ros.model.results import Detections, Poses
from mcn_ros.msg import HumanPose2D, HumanPose2DArray, PoseInfo


def _centres_and_sizes(boxes: np.ndarray) -> list[list[float]]:
    """xyxy float boxes -> rows (cx, cy, w, h) as Python floats, in one pass over the array."""
    centres = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    return np.concatenate([centres, boxes[:, 2:] - boxes[:, :2]], axis=1).astype(float).tolist()


# rosidl's generated constructors build every field's default (a nested message, 17 keypoints) even when a
# keyword argument replaces it; so each message below is made with no arguments and its defaults are filled
# in place, half the objects (bench/results/messages_cpu.md).
def _fill_box(box: BoundingBox2D, cx: float, cy: float, w: float, h: float) -> None:
    """Set a BoundingBox2D's centre and size (theta stays 0)."""
    box.center.position.x, box.center.position.y = cx, cy
    box.size_x, box.size_y = w, h


def detections_message(header: Header, detections: Detections) -> Detection2DArray:
    """Detection2DArray: one Detection2D per box, ``class_id`` = class index as a string (see LabelInfo)."""
    class_ids = detections.class_ids.astype(str).tolist()
    scores = detections.scores.astype(float).tolist()
    out = []
    for (cx, cy, w, h), class_id, score in zip(
        _centres_and_sizes(detections.boxes), class_ids, scores, strict=True
    ):
        detection = Detection2D()
        detection.header = header
        _fill_box(detection.bbox, cx, cy, w, h)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = class_id, score
        detection.results.append(hypothesis)
        out.append(detection)
    message = Detection2DArray()
    message.header, message.detections = header, out
    return message


def poses_message(header: Header, poses: Poses, keypoint_threshold: float) -> HumanPose2DArray:
    """HumanPose2DArray: 17 keypoints per person, those under ``keypoint_threshold`` marked invalid."""
    valid = (poses.keypoints[:, :, 2] >= keypoint_threshold).tolist()
    rows = poses.keypoints.astype(float).tolist()
    out = []
    for (cx, cy, w, h), score, person, person_valid in zip(
        _centres_and_sizes(poses.boxes), poses.scores.astype(float).tolist(), rows, valid, strict=True
    ):
        pose = HumanPose2D()
        pose.score = score
        _fill_box(pose.bbox, cx, cy, w, h)
        for point, (x, y, s), v in zip(pose.keypoints, person, person_valid, strict=True):
            point.x, point.y, point.score, point.valid = x, y, s, v
        out.append(pose)
    message = HumanPose2DArray()
    message.header, message.poses = header, out
    return message


def image_message(header: Header, pixels: np.ndarray, encoding: str) -> Image:
    """An Image holding ``pixels`` (HxW or HxWxC, C-contiguous) with the given encoding."""
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    msg = Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0)
    msg.step = int(pixels.strides[0])
    data = array("B")
    data.frombytes(pixels.data.cast("B"))  # one copy, straight into the message's buffer type
    msg.data = data
    return msg


def label_info_message(header: Header, class_names: Sequence[str], threshold: float) -> LabelInfo:
    """LabelInfo mapping each class index (the ``class_id`` of detections) to its name."""
    return LabelInfo(
        header=header,
        class_map=[VisionClass(class_id=i, class_name=name) for i, name in enumerate(class_names)],
        threshold=float(threshold),
    )


def segmentation_label_info_message(header: Header, class_names: Sequence[str]) -> LabelInfo:
    """LabelInfo mapping each value of the segmentation class map to its name: 0 is background, ``i`` the
    model's segmentation class ``i - 1`` (not the detection ids of ``~/label_info``)."""
    return LabelInfo(
        header=header,
        class_map=[
            VisionClass(class_id=i, class_name=name) for i, name in enumerate(("background", *class_names))
        ],
        threshold=0.0,
    )


def pose_info_message(header: Header, keypoint_threshold: float) -> PoseInfo:
    """PoseInfo: keypoint names in slot order, skeleton edges and the validity threshold."""
    return PoseInfo(
        header=header,
        keypoint_names=list(KEYPOINT_NAMES),
        skeleton_from=[a for a, _ in SKELETON],
        skeleton_to=[b for _, b in SKELETON],
        keypoint_threshold=float(keypoint_threshold),
    )
