"""Inference results as plain numpy dataclasses (no torch, no ROS), in original image pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcn_ros.model.labels import NUM_KEYPOINTS


@dataclass
class Detections:
    """Boxes of one image: ``boxes`` float32 [N, 4] (x1, y1, x2, y2), ``scores`` float32 [N],
    ``class_ids`` int64 [N] indexing ``config.detection.classes``. Sorted by descending score."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))


@dataclass
class Poses:
    """Persons of one image: ``boxes`` float32 [P, 4], ``scores`` float32 [P], ``keypoints`` float32
    [P, 17, 3] (x, y, score) in COCO keypoint order. Sorted by descending score. Boxes are clipped to the
    image; keypoints are not (a joint hidden beyond the frame edge is estimated where it would be): clip
    them before indexing pixels."""

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Poses:
        """No persons."""
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, NUM_KEYPOINTS, 3), np.float32),
        )


@dataclass
class Results:
    """Everything the model found in one image.

    ``image_size`` (height, width) of the original image; a field is None when its task was not run.
    ``segmentation`` is a class-id map [h, w] at the original resolution: 0 = background, ``i`` = class
    ``config.segmentation.classes[i - 1]``; uint8 (uint16 if more than 255 classes).
    """

    image_size: tuple[int, int]
    detections: Detections | None = None
    poses: Poses | None = None
    segmentation: np.ndarray | None = None
