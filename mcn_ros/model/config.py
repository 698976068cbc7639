"""Typed, validated model configuration (frozen dataclasses) read from YAML once.

Every default lives here and is documented on its field; ``config/models/*.yaml`` repeat the values that
matter for a shipped model. The YAML shape is the shape of :meth:`ModelConfig.to_dict` (nested mappings,
lists for tuples); class lists may also be written as the strings ``"coco"`` (all 80) or ``"person"``.
Field constraints are in the annotations and :mod:`mcn_ros.typed_config` applies them, both when a file is
read and when a config is made in code (``__post_init__``); errors name the field (``decode.top_k: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BeforeValidator, Field

from mcn_ros.model.labels import COCO_CLASSES, KEYPOINT_NAMES
from mcn_ros.typed_config import ConfigError, build, check_fields, one_of, read_yaml_mapping, to_dict

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
#: Channels of CenterNet's ResNet up-path stages (strides 16, 8, 4).
DEFAULT_NECK_CHANNELS: tuple[int, int, int] = (256, 128, 64)
#: ImageNet RGB statistics for images scaled to [0, 1] (timm's backbones are trained with them).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
SEGMENTATION_OUTPUT_STRIDES: tuple[int, ...] = (1, 2, 4)


def _class_names(value: object) -> object:
    """``"coco"`` = all 80 COCO classes, ``"person"`` = person only; a list passes on to item checks."""
    if isinstance(value, str):
        if value == "coco":
            return COCO_CLASSES
        if value == "person":
            return ("person",)
        raise ValueError(f"expected 'coco', 'person' or a list of COCO class names, got {value!r}")
    return value


def _coco_class(name: str) -> str:
    if name not in COCO_CLASSES:
        raise ValueError(f"{name!r} is not a COCO class name")
    return name


def _distinct(names: tuple[str, ...]) -> tuple[str, ...]:
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ValueError(f"[{i}]: class {name!r} is listed twice")
    return names


def _coco_keypoints(value: object) -> object:
    return KEYPOINT_NAMES if value == "coco" else value


def _only_coco_keypoints(names: tuple[str, ...]) -> tuple[str, ...]:
    if names != KEYPOINT_NAMES:
        raise ValueError("only the 17 COCO keypoints in COCO order are supported")
    return names


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"must be odd, got {value}")
    return value


def _default_if(*markers: object) -> BeforeValidator:
    """A section written as one of ``markers`` (``true``, for decode also ``null``) means its defaults."""
    return BeforeValidator(lambda value: {} if any(value is m for m in markers) else value)


#: Class names: distinct COCO names (the YAML strings "coco" and "person" are shortcuts).
ClassNames = Annotated[
    tuple[Annotated[str, AfterValidator(_coco_class)], ...],
    Field(min_length=1),
    BeforeValidator(_class_names),
    AfterValidator(_distinct),
]
#: One side of the network input: a multiple of 32 (the backbone's stride).
_InputSide = Annotated[int, Field(ge=32, multiple_of=32)]
_Channels = Annotated[int, Field(ge=1)]
_NonNegative = Annotated[float, Field(ge=0)]
_Positive = Annotated[float, Field(gt=0)]


@dataclass(frozen=True)
class DetectionConfig:
    """CenterNet box detection head settings."""

    #: Detected classes (COCO names, in output-channel order). Default: all 80 COCO classes.
    classes: ClassNames = COCO_CLASSES

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def num_classes(self) -> int:
        """Number of heatmap channels."""
        return len(self.classes)


@dataclass(frozen=True)
class PoseConfig:
    """CenterNet multi-person pose head settings (persons come from the detection head's person channel)."""

    #: Keypoints; fixed to the 17 COCO keypoints (``"coco"`` in YAML), listed for self-description.
    keypoints: Annotated[
        tuple[str, ...], BeforeValidator(_coco_keypoints), AfterValidator(_only_coco_keypoints)
    ] = KEYPOINT_NAMES

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def num_keypoints(self) -> int:
        """Number of keypoints (17)."""
        return len(self.keypoints)


@dataclass(frozen=True)
class SegmentationConfig:
    """FCN-style semantic segmentation head settings."""

    #: Segmented classes without background (channel 0 of the logits is background). Default: all 80.
    classes: ClassNames = COCO_CLASSES
    #: Stride of the segmentation logits relative to the input: 4 = the shared stride-4 map itself (the
    #: paper's speed setting, 128x128 for a 512 input), 1 = upsampled bilinearly to the input size (the
    #: paper's DLA-34 accuracy setting). One of 1, 2, 4. Default 4.
    output_stride: Annotated[int, one_of(*SEGMENTATION_OUTPUT_STRIDES)] = 4

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def num_outputs(self) -> int:
        """Number of logit channels (classes + background)."""
        return len(self.classes) + 1


@dataclass(frozen=True)
class DecodeConfig:
    """Test-time decoding settings (CenterNet's defaults)."""

    #: Peaks kept per heatmap (and keypoint candidates per joint) before thresholds. Default 100.
    top_k: Annotated[int, Field(ge=1)] = 100
    #: Max-pool kernel of the peak (local maximum) test, odd. Default 3.
    pool_kernel: Annotated[int, Field(ge=1), AfterValidator(_odd)] = 3
    #: A keypoint-heatmap peak below this score is never used to snap a regressed keypoint. Default 0.1.
    kp_snap_score: _NonNegative = 0.1
    #: A peak farther than this times the longer side of the person box is not used. Default 0.3.
    kp_snap_distance: _NonNegative = 0.3

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ModelConfig:
    """A Multitask-CenterNet: backbone, shared stride-4 up-path and the configured task heads."""

    #: Model name (free text; config files use ``<backbone>_<tasks>_<input>``).
    name: Annotated[str, Field(min_length=1)]
    #: timm backbone: resnet18, resnet34, resnet50, resnet101 or dla34. Default dla34 (the paper's).
    backbone: Annotated[str, one_of(*BACKBONES)] = "dla34"
    #: Network input (height, width), multiples of 32. Default (512, 512) (the paper's).
    input_size: tuple[_InputSide, _InputSide] = (512, 512)
    #: Channels of each head branch's 3x3 conv; 0 = the backbone's default (:data:`DEFAULT_HEAD_CONV`).
    head_conv: Annotated[int, Field(ge=0)] = 0
    #: True: one 3x3 conv per task, shared by all of the task's outputs through one 1x1 conv (a lighter
    #: variant, not the paper's: 3 head convs instead of 7 for three tasks); False: one branch per output, as
    #: CenterNet. Default False.
    shared_head_conv: bool = False
    #: Channels of the three up-path stages of a ResNet backbone (strides 16, 8, 4); CenterNet's (256, 128,
    #: 64) by default. DLA-34's up-path is sized by its backbone and takes only the default.
    neck_channels: tuple[_Channels, _Channels, _Channels] = DEFAULT_NECK_CHANNELS
    #: Deformable convs (DCNv2) in the up-path (CenterNet's DLA-34/ResNet-DCN); False = plain 3x3 convs
    #: (exportable, faster on CPU). Default True.
    use_dcn: bool = True
    #: Box detection head; None = no detection (YAML ``true`` = the defaults).
    detection: Annotated[DetectionConfig | None, _default_if(True)] = None
    #: Pose head (needs detection with the class "person"); None = no pose.
    pose: Annotated[PoseConfig | None, _default_if(True)] = None
    #: Semantic segmentation head; None = no segmentation.
    segmentation: Annotated[SegmentationConfig | None, _default_if(True)] = None
    #: RGB normalisation of images scaled to [0, 1]. Default ImageNet.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[_Positive, _Positive, _Positive] = IMAGENET_STD
    #: Decoding settings (YAML ``null`` or ``true`` = the defaults).
    decode: Annotated[DecodeConfig, _default_if(None, True)] = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.head_conv:
            object.__setattr__(self, "head_conv", DEFAULT_HEAD_CONV[self.backbone])
        if self.backbone.startswith("dla") and self.neck_channels != DEFAULT_NECK_CHANNELS:
            raise ConfigError("neck_channels: only ResNet backbones take other up-path widths")
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
        return build(cls, data)

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
        return to_dict(self)

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
