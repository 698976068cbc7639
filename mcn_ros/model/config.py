"""Typed, validated model configuration (frozen dataclasses) read from YAML once.

Every default lives here and is documented on its field; ``config/models/*.yaml`` repeat the values that
matter for a shipped model. The YAML shape is the shape of :meth:`ModelConfig.to_dict` (nested mappings,
lists for tuples); class lists may also be written as the strings ``"coco"`` (all 80) or ``"person"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcn_ros.model.labels import COCO_CLASSES, KEYPOINT_NAMES

#: Task names, in the order heads are built and run.
TASKS: tuple[str, ...] = ("detection", "pose", "segmentation")
#: Supported backbones (timm model names).
BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "dla34")
#: Stride of the detection and pose output maps relative to the network input (CenterNet's down ratio).
OUTPUT_STRIDE = 4
#: Head width (channels of each head branch's 3x3 conv) by backbone, as CenterNet: 256 DLA, 64 ResNet.
DEFAULT_HEAD_CONV: dict[str, int] = {
    "resnet18": 64,
    "resnet34": 64,
    "resnet50": 64,
    "resnet101": 64,
    "dla34": 256,
}
#: ImageNet RGB statistics for images scaled to [0, 1] (timm's backbones are trained with them).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
SEGMENTATION_OUTPUT_STRIDES: tuple[int, ...] = (1, 2, 4)


class ConfigError(ValueError):
    """An invalid model configuration; the message names the offending field."""


def _class_list(value: Any, where: str) -> tuple[str, ...]:
    """Parse a class list: ``"coco"``, ``"person"`` or a sequence of distinct COCO class names."""
    if isinstance(value, str):
        if value == "coco":
            return COCO_CLASSES
        if value == "person":
            return ("person",)
        raise ConfigError(f"{where}: expected 'coco', 'person' or a list of COCO class names, got {value!r}")
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of COCO class names, got {value!r}")
    names = tuple(value)
    for i, name in enumerate(names):
        if name not in COCO_CLASSES:
            raise ConfigError(f"{where}[{i}]: {name!r} is not a COCO class name")
        if names.index(name) != i:
            raise ConfigError(f"{where}[{i}]: class {name!r} is listed twice")
    return names


def read_yaml_mapping(path: str | Path, what: str, error: type[ValueError] | None = None) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; any failure raises ``error`` (default
    :class:`ConfigError`) with one message naming ``what`` and the file."""
    path = Path(path)
    error = error or ConfigError
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping at the top level")
    return data


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown field (allowed: {', '.join(allowed)})")


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DetectionConfig:
    """CenterNet box detection head settings."""

    #: Detected classes (COCO names, in output-channel order). Default: all 80 COCO classes.
    classes: tuple[str, ...] = COCO_CLASSES

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", _class_list(self.classes, "detection.classes"))

    @property
    def num_classes(self) -> int:
        """Number of heatmap channels."""
        return len(self.classes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectionConfig:
        """Build from the ``detection`` mapping of a config file."""
        _check_keys(data, ("classes",), "detection")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping in the YAML shape."""
        return {"classes": list(self.classes)}


@dataclass(frozen=True)
class PoseConfig:
    """CenterNet multi-person pose head settings (persons come from the detection head's person channel)."""

    #: Keypoints; fixed to the 17 COCO keypoints (``"coco"`` in YAML), listed for self-description.
    keypoints: tuple[str, ...] = KEYPOINT_NAMES

    def __post_init__(self) -> None:
        keypoints = KEYPOINT_NAMES if self.keypoints == "coco" else tuple(self.keypoints)
        if keypoints != KEYPOINT_NAMES:
            raise ConfigError("pose.keypoints: only the 17 COCO keypoints in COCO order are supported")
        object.__setattr__(self, "keypoints", keypoints)

    @property
    def num_keypoints(self) -> int:
        """Number of keypoints (17)."""
        return len(self.keypoints)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoseConfig:
        """Build from the ``pose`` mapping of a config file."""
        _check_keys(data, ("keypoints",), "pose")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping in the YAML shape."""
        return {"keypoints": list(self.keypoints)}


@dataclass(frozen=True)
class SegmentationConfig:
    """FCN-style semantic segmentation head settings."""

    #: Segmented classes without background (channel 0 of the logits is background). Default: all 80.
    classes: tuple[str, ...] = COCO_CLASSES
    #: Stride of the segmentation logits relative to the input: 4 = the shared stride-4 map itself (the
    #: paper's speed setting, 128x128 for a 512 input), 1 = upsampled bilinearly to the input size (the
    #: paper's DLA-34 accuracy setting). One of 1, 2, 4. Default 4.
    output_stride: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", _class_list(self.classes, "segmentation.classes"))
        stride = _int(self.output_stride, "segmentation.output_stride")
        if stride not in SEGMENTATION_OUTPUT_STRIDES:
            raise ConfigError(f"segmentation.output_stride: must be one of 1, 2, 4, got {stride}")

    @property
    def num_outputs(self) -> int:
        """Number of logit channels (classes + background)."""
        return len(self.classes) + 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentationConfig:
        """Build from the ``segmentation`` mapping of a config file."""
        _check_keys(data, ("classes", "output_stride"), "segmentation")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping in the YAML shape."""
        return {"classes": list(self.classes), "output_stride": self.output_stride}


@dataclass(frozen=True)
class DecodeConfig:
    """Test-time decoding settings (CenterNet's defaults)."""

    #: Peaks kept per heatmap (and keypoint candidates per joint) before thresholds. Default 100.
    top_k: int = 100
    #: Max-pool kernel of the peak (local maximum) test, odd. Default 3.
    pool_kernel: int = 3
    #: A keypoint-heatmap peak below this score is never used to snap a regressed keypoint. Default 0.1.
    kp_snap_score: float = 0.1
    #: A peak farther than this times the longer side of the person box is not used. Default 0.3.
    kp_snap_distance: float = 0.3

    def __post_init__(self) -> None:
        _int(self.top_k, "decode.top_k", 1)
        kernel = _int(self.pool_kernel, "decode.pool_kernel", 1)
        if kernel % 2 == 0:
            raise ConfigError(f"decode.pool_kernel: must be odd, got {kernel}")
        for name in ("kp_snap_score", "kp_snap_distance"):
            value = _float(getattr(self, name), f"decode.{name}")
            if value < 0:
                raise ConfigError(f"decode.{name}: must be >= 0, got {value}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecodeConfig:
        """Build from the ``decode`` mapping of a config file."""
        _check_keys(data, tuple(f.name for f in dataclasses.fields(cls)), "decode")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping in the YAML shape."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelConfig:
    """A Multitask-CenterNet: backbone, shared stride-4 up-path and the configured task heads."""

    #: Model name (free text; config files use ``<backbone>_<tasks>_<input>``).
    name: str
    #: timm backbone: resnet18, resnet34, resnet50, resnet101 or dla34. Default dla34 (the paper's).
    backbone: str = "dla34"
    #: Network input (height, width), multiples of 32. Default (512, 512) (the paper's).
    input_size: tuple[int, int] = (512, 512)
    #: Channels of each head branch's 3x3 conv; 0 = the backbone's default (:data:`DEFAULT_HEAD_CONV`).
    head_conv: int = 0
    #: Deformable convs (DCNv2) in the up-path (CenterNet's DLA-34/ResNet-DCN); False = plain 3x3 convs
    #: (exportable, faster on CPU). Default True.
    use_dcn: bool = True
    #: Box detection head; None = no detection.
    detection: DetectionConfig | None = None
    #: Pose head (needs detection with the class "person"); None = no pose.
    pose: PoseConfig | None = None
    #: Semantic segmentation head; None = no segmentation.
    segmentation: SegmentationConfig | None = None
    #: RGB normalisation of images scaled to [0, 1]. Default ImageNet.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: Decoding settings.
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name: expected a non-empty string, got {self.name!r}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        size = self.input_size
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ConfigError(f"input_size: expected [height, width], got {size!r}")
        for axis, value in zip(("height", "width"), size, strict=True):
            _int(value, f"input_size ({axis})", 32)
            if value % 32:
                raise ConfigError(f"input_size ({axis}): must be a multiple of 32, got {value}")
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        head_conv = _int(self.head_conv, "head_conv", 0)
        object.__setattr__(self, "head_conv", head_conv or DEFAULT_HEAD_CONV[self.backbone])
        if not isinstance(self.use_dcn, bool):
            raise ConfigError(f"use_dcn: expected true or false, got {self.use_dcn!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or len(values) != 3:
                raise ConfigError(f"{name}: expected 3 numbers (R, G, B), got {values!r}")
            floats = tuple(_float(v, name) for v in values)
            if name == "std" and min(floats) <= 0:
                raise ConfigError(f"std: must be > 0, got {values!r}")
            object.__setattr__(self, name, floats)
        for name, kind in (
            ("detection", DetectionConfig),
            ("pose", PoseConfig),
            ("segmentation", SegmentationConfig),
            ("decode", DecodeConfig),
        ):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), kind):
                raise ConfigError(
                    f"{name}: expected {kind.__name__}, got {type(getattr(self, name)).__name__}"
                )
        if self.decode is None:
            raise ConfigError("decode: must not be null")
        if not self.tasks:
            raise ConfigError("detection/pose/segmentation: at least one task must be configured")
        if self.pose is not None and (self.detection is None or "person" not in self.detection.classes):
            raise ConfigError("pose: needs a detection head whose classes include 'person'")

    @property
    def tasks(self) -> frozenset[str]:
        """The configured tasks (subset of :data:`TASKS`)."""
        return frozenset(t for t in TASKS if getattr(self, t) is not None)

    @property
    def person_index(self) -> int | None:
        """Detection channel of the class "person", or None."""
        if self.detection is None or "person" not in self.detection.classes:
            return None
        return self.detection.classes.index("person")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the stride-4 detection/pose maps."""
        return self.input_size[0] // OUTPUT_STRIDE, self.input_size[1] // OUTPUT_STRIDE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build and validate from a plain mapping (the YAML shape); raises :class:`ConfigError`."""
        allowed = tuple(f.name for f in dataclasses.fields(cls))
        _check_keys(data, allowed, "")
        kwargs: dict[str, Any] = dict(data)
        sections: dict[str, Any] = {
            "detection": DetectionConfig,
            "pose": PoseConfig,
            "segmentation": SegmentationConfig,
            "decode": DecodeConfig,
        }
        for name, kind in sections.items():
            value = kwargs.get(name)
            if value is None:
                kwargs.pop(name, None)
            elif value is True:
                kwargs[name] = kind()
            elif isinstance(value, Mapping):
                kwargs[name] = kind.from_dict(value)
            elif not isinstance(value, kind):
                raise ConfigError(f"{name}: expected a mapping or null, got {value!r}")
        for name in ("input_size", "mean", "std"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        if "name" not in kwargs:
            raise ConfigError("name: missing")
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - guarded by _check_keys
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        """Read a config file; errors name the file and the field."""
        data = read_yaml_mapping(path, "model config")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (lists for tuples) that :meth:`from_dict` reads back to an equal config."""
        return {
            "name": self.name,
            "backbone": self.backbone,
            "input_size": list(self.input_size),
            "head_conv": self.head_conv,
            "use_dcn": self.use_dcn,
            "detection": None if self.detection is None else self.detection.to_dict(),
            "pose": None if self.pose is None else self.pose.to_dict(),
            "segmentation": None if self.segmentation is None else self.segmentation.to_dict(),
            "mean": list(self.mean),
            "std": list(self.std),
            "decode": self.decode.to_dict(),
        }

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
