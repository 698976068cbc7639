"""Colour order of HxWx3 uint8 images (camera frames come as RGB or BGR): numpy and OpenCV only, no torch."""

from __future__ import annotations

import cv2
import numpy as np

COLOR_ORDERS = ("rgb", "bgr")


def opencv_view(image: np.ndarray) -> np.ndarray:
    """``image`` as OpenCV takes it: rows may be padded (a raw frame's ``step``), pixels must be packed
    (a copy otherwise, e.g. of a view with reversed channels or columns)."""
    item = image.itemsize
    if image.strides[2] == item and image.strides[1] == 3 * item and image.strides[0] > 0:
        return image
    return np.ascontiguousarray(image)


def to_rgb(image: np.ndarray, color_order: str) -> np.ndarray:
    """An HxWx3 image in RGB order: a BGR one converted by OpenCV into a new C-contiguous array (numpy's
    reversed-channel copy, ``image[:, :, ::-1].copy()``, took 30x as long at 640x480), an RGB one as it is."""
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    return cv2.cvtColor(opencv_view(image), cv2.COLOR_BGR2RGB) if color_order == "bgr" else image
