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


def grey_as_rgb(grey: np.ndarray) -> np.ndarray:
    """An HxW grey image as an HxWx3 RGB image without a copy: a read-only view whose three channels are
    the same memory (channel stride 0). The letterbox resizes its one plane (:func:`grey_plane`), a third
    of the work of resizing three equal channels; anything else reads it as any RGB image."""
    return np.broadcast_to(grey[:, :, None], (*grey.shape, 3))


def grey_plane(image: np.ndarray) -> np.ndarray | None:
    """The HxW plane of an HxWx3 image whose channels are one memory (:func:`grey_as_rgb`), else None."""
    return image[:, :, 0] if image.ndim == 3 and image.shape[2] == 3 and image.strides[2] == 0 else None


def to_rgb(image: np.ndarray, color_order: str) -> np.ndarray:
    """An HxWx3 image in RGB order: a BGR one converted by OpenCV into a new C-contiguous array (numpy's
    reversed-channel copy, ``image[:, :, ::-1].copy()``, took 30x as long at 640x480), an RGB one as it is."""
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    return cv2.cvtColor(opencv_view(image), cv2.COLOR_BGR2RGB) if color_order == "bgr" else image
