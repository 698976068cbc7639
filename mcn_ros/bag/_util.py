"""Small helpers shared by the report modules (:mod:`mcn_ros.bag.report` and its parts): atomic file
writes, number and nested-key look-ups in a summary, RGB frame checks and letterboxing, and the summary's
accuracy keys."""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

#: Accuracy figures: (label, key); each also exists as ``direct_<key>`` and ``loaded_<key>``.
ACCURACY_KEYS: tuple[tuple[str, str], ...] = (
    ("bbox AP", "bbox_AP"),
    ("bbox AP50", "bbox_AP50"),
    ("keypoint AP", "kp_AP"),
    ("keypoint AP50", "kp_AP50"),
    ("mIoU", "mIoU"),
)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix, for writers that pick the format by it), renamed to
    ``path`` when the block succeeds and removed when it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def finite_number(value: Any) -> float | None:
    """A finite real number as float, else None (None, NaN, strings, booleans, ...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def nested_get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` or None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def as_rgb8(image: Any, index: int) -> np.ndarray:
    """An image as uint8 RGB [H, W, 3] (grey [H, W] and RGBA accepted); ValueError naming ``index``."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"frame {index}: expected uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"frame {index}: expected an RGB image [H, W, 3], got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


def letterbox(image: np.ndarray, size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """``image`` scaled to fit ``size`` (height, width) with its aspect ratio kept, centred, padded."""
    h, w = image.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return image
    scale = min(th / h, tw / w)
    nh, nw = max(1, min(th, round(h * scale))), max(1, min(tw, round(w * scale)))
    if scale < 1:
        interpolation = cv2.INTER_AREA
    elif float(scale).is_integer():
        interpolation = cv2.INTER_NEAREST  # crisp boxes and text when enlarging small frames
    else:
        interpolation = cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interpolation) if (nh, nw) != (h, w) else image
    out = np.full((th, tw, 3), fill, np.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out
