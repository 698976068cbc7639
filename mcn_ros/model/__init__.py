"""Pure-PyTorch Multitask-CenterNet runtime: config, model, preprocessing, decoding, weights, Predictor.

Nothing here imports rclpy. The usual entry point is :class:`mcn_ros.model.predictor.Predictor`. Names are
imported lazily, so ``import mcn_ros.model.labels`` (class names only) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcn_ros.model.config import TASKS, ConfigError, ModelConfig
    from mcn_ros.model.decode import DecodeOptions, decode_batch
    from mcn_ros.model.mcn import MultitaskCenterNet
    from mcn_ros.model.predictor import Predictor
    from mcn_ros.model.preprocess import Letterbox, letterbox_for, preprocess
    from mcn_ros.model.results import Detections, Poses, Results
    from mcn_ros.model.weights import WeightsError, load_weights, save_weights

_EXPORTS = {
    "TASKS": "config",
    "ConfigError": "config",
    "ModelConfig": "config",
    "DecodeOptions": "decode",
    "decode_batch": "decode",
    "MultitaskCenterNet": "mcn",
    "Predictor": "predictor",
    "Letterbox": "preprocess",
    "letterbox_for": "preprocess",
    "preprocess": "preprocess",
    "Detections": "results",
    "Poses": "results",
    "Results": "results",
    "WeightsError": "weights",
    "load_weights": "weights",
    "save_weights": "weights",
}
__all__ = [
    "TASKS",
    "ConfigError",
    "DecodeOptions",
    "Detections",
    "Letterbox",
    "ModelConfig",
    "MultitaskCenterNet",
    "Poses",
    "Predictor",
    "Results",
    "WeightsError",
    "decode_batch",
    "letterbox_for",
    "load_weights",
    "preprocess",
    "save_weights",
]


def __getattr__(name: str) -> Any:
    """Import exported names on first use."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
