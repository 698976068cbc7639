"""Drawing of results onto images (debug image, demo and replay reports). OpenCV only, no ROS.

Drawing loops over the boxes and limbs it draws: it runs only when someone looks at the picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from mcn_ros.model.color_order import to_rgb
from mcn_ros.model.labels import SKELETON
from mcn_ros.model.results import Results


def color_palette(num_classes: int, seed: int = 7) -> np.ndarray:
    """A fixed RGB colour per class id (row 0, background, is black): uint8 [num_classes + 1, 3]."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(64, 256, size=(num_classes + 1, 3), dtype=np.uint8)
    palette[0] = 0
    return palette


def colorize(class_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class-id map [H, W] -> RGB image [H, W, 3] through the palette; ids past it take its last colour.

    A uint8 map goes through OpenCV's colour map with the palette as its table (one pass; numpy's indexing
    took 3.2 ms at 640x480 on 2 cores, a grey-to-RGB conversion then a table lookup 0.85, this 0.35: the
    node's segmentation/color and debug images); wider ids through numpy.
    """
    if class_map.dtype != np.uint8 or class_map.size == 0:
        top = len(palette) - 1  # compared only where the map's type can exceed it (numpy 2 refuses otherwise)
        return palette[class_map if top >= np.iinfo(class_map.dtype).max else np.minimum(class_map, top)]
    table = np.empty((256, 1, 3), np.uint8)
    count = min(len(palette), 256)
    table[:count, 0] = palette[:count]
    table[count:, 0] = palette[count - 1]
    return cv2.applyColorMap(np.ascontiguousarray(class_map), table)


def draw_results(
    image: np.ndarray,
    results: Results,
    detection_classes: Sequence[str],
    palette: np.ndarray,
    keypoint_threshold: float = 0.1,
    blend: float = 0.45,
    segmentation_rgb: np.ndarray | None = None,
    color_order: str = "rgb",
) -> np.ndarray:
    """An RGB copy of an image (in ``color_order``) with the segmentation blended in (classes > 0) and boxes,
    labels and skeletons drawn; ``segmentation_rgb``: the class map already through :func:`colorize`, if at
    hand."""
    canvas = to_rgb(image, color_order)
    if canvas is image:
        canvas = np.array(image, order="C")  # a C-contiguous copy, also of a flipped view
    if results.segmentation is not None:
        overlay = (
            segmentation_rgb if segmentation_rgb is not None else colorize(results.segmentation, palette)
        )
        mixed = cv2.addWeighted(canvas, 1.0 - blend, overlay, blend, 0.0)
        # OpenCV's masked copy: numpy's copyto with the mask broadcast over the channels took 25x as long.
        canvas = cv2.copyTo(mixed, (results.segmentation > 0).view(np.uint8), canvas)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    if results.detections is not None:
        det = results.detections
        for box, score, class_id in zip(
            det.boxes.tolist(), det.scores.tolist(), det.class_ids.tolist(), strict=True
        ):
            color = tuple(int(c) for c in palette[1 + class_id % (len(palette) - 1)])
            # Results cover pixel u with [u, u + 1); OpenCV draws on pixel centres: the box's first and last
            # pixels are floor(x1) and ceil(x2) - 1.
            x1, y1 = math.floor(box[0]), math.floor(box[1])
            x2, y2 = max(x1, math.ceil(box[2]) - 1), max(y1, math.ceil(box[3]) - 1)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
            label = f"{detection_classes[class_id]} {score:.2f}"
            cv2.putText(
                canvas, label, (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA
            )
    if results.poses is not None:
        for person in results.poses.keypoints:
            points = np.floor(person[:, :2]).astype(int).tolist()  # the pixel each keypoint falls in
            visible = (person[:, 2] >= keypoint_threshold).tolist()
            for a, b in SKELETON:
                if visible[a] and visible[b]:
                    cv2.line(
                        canvas, tuple(points[a]), tuple(points[b]), (255, 200, 0), thickness, cv2.LINE_AA
                    )
            for point, seen in zip(points, visible, strict=True):
                if seen:
                    cv2.circle(canvas, tuple(point), thickness + 1, (255, 0, 0), -1, cv2.LINE_AA)
    return canvas
