"""The node's output messages -> :class:`~mcn_ros.model.results.Results`, the inverse of ``ros/messages.py``.

The functions read message fields only, so they take ``rosbags`` messages (read from a bag) and rclpy
messages alike. Detection class ids are strings: the node writes the class index (``"0"``, resolved by
``LabelInfo``); a class name is accepted too (other publishers do that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mcn_ros.model.labels import NUM_KEYPOINTS
from mcn_ros.model.results import Detections, Poses


class ClassIndex:
    """Maps a ``Detection2D`` hypothesis ``class_id`` to an index into ``classes`` (the evaluated list).

    ``label_map`` is LabelInfo's ``class_map`` as {class_id: class_name}; without it, numeric ids index
    ``classes`` directly (the node's convention).
    """

    def __init__(self, classes: Sequence[str], label_map: dict[int, str] | None = None) -> None:
        self.classes = list(classes)
        self._by_name = {name: i for i, name in enumerate(self.classes)}
        self._label_map = label_map or {}

    def __call__(self, class_id: str) -> int:
        text = str(class_id).strip()
        if text.lstrip("-").isdigit():
            number = int(text)
            if self._label_map:
                name = self._label_map.get(number)
                if name is None:
                    raise ValueError(f"class id {number} is not in LabelInfo's class map")
                return self._index(name)
            if not 0 <= number < len(self.classes):
                raise ValueError(f"class id {number} is out of range for {len(self.classes)} classes")
            return number
        return self._index(text)

    def _index(self, name: str) -> int:
        if name not in self._by_name:
            raise ValueError(f"class {name!r} is not among the evaluated classes {self.classes}")
        return self._by_name[name]


def label_map(message: Any) -> dict[int, str]:
    """LabelInfo -> {class_id: class_name}."""
    return {int(v.class_id): str(v.class_name) for v in message.class_map}


def _xyxy(boxes: Sequence[Any]) -> np.ndarray:
    """BoundingBox2D (centre, size; theta ignored) -> float32 [N, 4] x1, y1, x2, y2."""
    rows = [(b.center.position.x, b.center.position.y, b.size_x, b.size_y) for b in boxes]
    array = np.asarray(rows, np.float64).reshape(-1, 4)
    half = array[:, 2:] / 2
    return np.concatenate([array[:, :2] - half, array[:, :2] + half], axis=1).astype(np.float32)


def detections_from_message(message: Any, class_index: ClassIndex) -> Detections:
    """Detection2DArray -> Detections (the best hypothesis of each detection)."""
    boxes, scores, class_ids = [], [], []
    for detection in message.detections:
        if not detection.results:
            continue
        best = max(detection.results, key=lambda r: r.hypothesis.score)
        boxes.append(detection.bbox)
        scores.append(float(best.hypothesis.score))
        class_ids.append(class_index(best.hypothesis.class_id))
    return Detections(
        boxes=_xyxy(boxes), scores=np.asarray(scores, np.float32), class_ids=np.asarray(class_ids, np.int64)
    )


def poses_from_message(message: Any) -> Poses:
    """HumanPose2DArray -> Poses (keypoints x, y, score in slot order)."""
    poses = list(message.poses)
    keypoints = np.zeros((len(poses), NUM_KEYPOINTS, 3), np.float32)
    for i, pose in enumerate(poses):
        keypoints[i] = [(k.x, k.y, k.score) for k in pose.keypoints]
    return Poses(
        boxes=_xyxy([p.bbox for p in poses]),
        scores=np.asarray([p.score for p in poses], np.float32),
        keypoints=keypoints,
    )


def class_map_from_message(message: Any) -> np.ndarray:
    """A mono8 / mono16 (8UC1 / 16UC1) class-id Image -> [h, w] uint8 / uint16 array (a copy)."""
    encoding = str(message.encoding)
    if encoding in ("mono8", "8UC1"):
        dtype: np.dtype[Any] = np.dtype(np.uint8)
    elif encoding in ("mono16", "16UC1"):
        dtype = np.dtype(">u2" if message.is_bigendian else "<u2")
    else:
        raise ValueError(f"segmentation image has encoding {encoding!r}, expected mono8 or mono16")
    height, width, step = int(message.height), int(message.width), int(message.step)
    itemsize = dtype.itemsize
    buffer = np.frombuffer(bytes(message.data), np.uint8)
    if step < width * itemsize or buffer.size != height * step:
        raise ValueError(f"segmentation image {width}x{height}: {buffer.size} bytes with step {step}")
    rows = buffer.reshape(height, step)[:, : width * itemsize]
    return np.ascontiguousarray(rows).view(dtype).reshape(height, width).astype(dtype.newbyteorder("="))
