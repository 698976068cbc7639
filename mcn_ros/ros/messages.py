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
from mcn_ros.msg import HumanPose2D, HumanPose2DArray, Keypoint2D, PoseInfo


def _boxes(boxes: np.ndarray) -> list[BoundingBox2D]:
    """xyxy float boxes -> BoundingBox2D (centre + size, theta 0)."""
    centres = ((boxes[:, :2] + boxes[:, 2:]) * 0.5).astype(float).tolist()
    sizes = (boxes[:, 2:] - boxes[:, :2]).astype(float).tolist()
    out = []
    for (cx, cy), (w, h) in zip(centres, sizes, strict=True):
        box = BoundingBox2D(size_x=w, size_y=h)
        box.center.position.x, box.center.position.y = cx, cy
        out.append(box)
    return out


def detections_message(header: Header, detections: Detections) -> Detection2DArray:
    """Detection2DArray: one Detection2D per box, ``class_id`` = class index as a string (see LabelInfo)."""
    class_ids = detections.class_ids.astype(str).tolist()
    scores = detections.scores.astype(float).tolist()
    out = []
    for box, class_id, score in zip(_boxes(detections.boxes), class_ids, scores, strict=True):
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = class_id, score
        out.append(Detection2D(header=header, results=[hypothesis], bbox=box))
    return Detection2DArray(header=header, detections=out)


def poses_message(header: Header, poses: Poses, keypoint_threshold: float) -> HumanPose2DArray:
    """HumanPose2DArray: 17 keypoints per person, those under ``keypoint_threshold`` marked invalid."""
    keypoints = poses.keypoints.astype(float)
    valid = (poses.keypoints[:, :, 2] >= keypoint_threshold).tolist()
    rows = keypoints.tolist()
    out = []
    for box, score, person, person_valid in zip(
        _boxes(poses.boxes), poses.scores.astype(float).tolist(), rows, valid, strict=True
    ):
        points = [
            Keypoint2D(x=x, y=y, score=s, valid=v) for (x, y, s), v in zip(person, person_valid, strict=True)
        ]
        out.append(HumanPose2D(score=score, bbox=box, keypoints=points))
    return HumanPose2DArray(header=header, poses=out)


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


def pose_info_message(header: Header, keypoint_threshold: float) -> PoseInfo:
    """PoseInfo: keypoint names in slot order, skeleton edges and the validity threshold."""
    return PoseInfo(
        header=header,
        keypoint_names=list(KEYPOINT_NAMES),
        skeleton_from=[a for a, _ in SKELETON],
        skeleton_to=[b for _, b in SKELETON],
        keypoint_threshold=float(keypoint_threshold),
    )
