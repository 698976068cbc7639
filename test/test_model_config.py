"""Model configuration: shipped files, YAML round trip, validation messages."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mcn_ros.model.config import (
    ConfigError,
    DetectionConfig,
    ModelConfig,
    PoseConfig,
    SegmentationConfig,
)
from mcn_ros.model.labels import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    FLIP_PAIRS,
    KEYPOINT_NAMES,
    SKELETON,
    coco_category_id,
    flip_permutation,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "models"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))

PAPER_COMBINATIONS = {
    "dla34_seg80_512": ({"segmentation"}, None, 80),
    "dla34_seg1_512": ({"segmentation"}, None, 1),
    "dla34_det80_512": ({"detection"}, 80, None),
    "dla34_det1_512": ({"detection"}, 1, None),
    "dla34_det80_seg80_512": ({"detection", "segmentation"}, 80, 80),
    "dla34_det1_seg1_512": ({"detection", "segmentation"}, 1, 1),
    "dla34_det80_seg80_pose_512": ({"detection", "segmentation", "pose"}, 80, 80),
    "dla34_det1_seg1_pose_512": ({"detection", "segmentation", "pose"}, 1, 1),
    "dla34_det1_pose_512": ({"detection", "pose"}, 1, None),
}


def test_labels_are_consistent() -> None:
    assert len(set(COCO_CLASSES)) == 80 and len(set(COCO_CATEGORY_IDS)) == 80
    assert coco_category_id("person") == 1 and coco_category_id("toothbrush") == 90
    assert len(KEYPOINT_NAMES) == 17
    assert all(0 <= a < 17 and 0 <= b < 17 for a, b in SKELETON)
    perm = flip_permutation()
    assert sorted(perm) == list(range(17)) and [perm[p] for p in perm] == list(range(17))
    for left, right in FLIP_PAIRS:
        assert KEYPOINT_NAMES[left].replace("left", "right") == KEYPOINT_NAMES[right]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_shipped_config_loads_and_round_trips(path: Path) -> None:
    config = ModelConfig.from_yaml(path)
    assert config.name == path.stem
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert path.stem.startswith(config.backbone) and path.stem.endswith(f"_{config.input_size[0]}")


def test_paper_combinations_are_shipped() -> None:
    for name, (tasks, det, seg) in PAPER_COMBINATIONS.items():
        config = ModelConfig.from_yaml(CONFIG_DIR / f"{name}.yaml")
        assert config.tasks == tasks, name
        assert config.backbone == "dla34" and config.input_size == (512, 512) and config.head_conv == 256
        assert (config.detection.num_classes if config.detection else None) == det
        assert (len(config.segmentation.classes) if config.segmentation else None) == seg
        if config.segmentation is not None:
            assert config.segmentation.output_stride == 1  # the paper's 512x512 segmentation output
    speed = ModelConfig.from_yaml(CONFIG_DIR / "resnet18_det80_seg80_pose_512.yaml")
    assert speed.segmentation is not None and speed.segmentation.output_stride == 4


def test_defaults_and_class_shortcuts() -> None:
    config = ModelConfig.from_dict(
        {"name": "m", "backbone": "resnet18", "detection": {"classes": "person"}, "segmentation": {}}
    )
    assert config.head_conv == 64 and config.input_size == (512, 512) and config.use_dcn
    assert config.detection == DetectionConfig(("person",))
    assert config.segmentation == SegmentationConfig(COCO_CLASSES, 4)
    assert config.decode.top_k == 100 and config.decode.kp_snap_distance == 0.3
    assert config.person_index == 0 and config.output_size == (128, 128)
    dla = ModelConfig(name="d", detection=DetectionConfig())
    assert dla.head_conv == 256 and dla.backbone == "dla34"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backbone": "vgg16"}, "backbone: must be one of resnet18, "),
        ({"input_size": [500, 512]}, "input_size[0]: must be a multiple of 32, got 500"),
        ({"input_size": [512]}, "input_size: expected 2 values, got [512]"),
        ({"input_size": [512.0, 512]}, "input_size[0]: expected an integer, got 512.0"),
        ({"detection": {"classes": ["person", "unicorn"]}}, "detection.classes[1]: 'unicorn' is not a COCO"),
        ({"detection": {"classes": ["car", "car"]}}, "detection.classes[1]: class 'car' is listed twice"),
        ({"detection": {"classes": "car"}}, "detection.classes: expected 'coco', 'person' or a list"),
        ({"detection": {"classes": []}}, "detection.classes: must not be empty"),
        ({"detection": {"classes": ["car"]}, "pose": {}}, "pose: needs a detection head"),
        ({"segmentation": {"output_stride": 3}}, "segmentation.output_stride: must be one of 1, 2, 4, got 3"),
        ({"decode": {"pool_kernel": 2}}, "decode.pool_kernel: must be odd, got 2"),
        ({"decode": {"top_k": 0}}, "decode.top_k: must be >= 1, got 0"),
        ({"decode": {"top_k": True}}, "decode.top_k: expected an integer, got True"),
        ({"decode": {"kp_snap_score": float("inf")}}, "decode.kp_snap_score: expected a finite number"),
        ({"std": [0.2, 0.0, 0.2]}, "std[1]: must be > 0, got 0.0"),
        ({"use_dcn": "yes"}, "use_dcn: expected true or false, got 'yes'"),
        ({"colour": 1}, "colour: unknown field (allowed: name, backbone, input_size, "),
        ({"detection": {"classes": "coco", "extra": 1}}, "detection.extra: unknown field (allowed: classes)"),
        ({"detection": 3}, "detection: expected a mapping, got 3"),
        ({"detection": None}, "detection/pose/segmentation: at least one task must be configured"),
        ({"name": None}, "name: must not be null"),
    ],
)
def test_validation_names_the_field(change: dict, message: str) -> None:
    data = {"name": "m", "backbone": "resnet18", "detection": {"classes": "coco"}, **change}
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        ModelConfig.from_dict(data)


def test_missing_field_and_wrong_shape() -> None:
    with pytest.raises(ConfigError, match=r"^name: missing \(required\)$"):
        ModelConfig.from_dict({"backbone": "resnet18", "detection": {}})
    with pytest.raises(ConfigError, match=r"^expected a mapping, got \['m'\]$"):
        ModelConfig.from_dict(["m"])  # type: ignore[arg-type]


def test_configs_made_in_code_are_checked_too() -> None:
    config = ModelConfig(name="m", backbone="resnet18", detection=DetectionConfig())
    with pytest.raises(ConfigError, match=r"^input_size\[1\]: must be a multiple of 32, got 50$"):
        dataclasses.replace(config, input_size=(64, 50))
    with pytest.raises(ConfigError, match=r"^classes\[0\]: 'unicorn' is not a COCO class name$"):
        DetectionConfig(("unicorn",))
    assert DetectionConfig("person").classes == ("person",)  # type: ignore[arg-type]
    normalised = dataclasses.replace(config, input_size=[64, 96], mean=[0, 0, 0])  # type: ignore[arg-type]
    assert normalised.input_size == (64, 96) and normalised.mean == (0.0, 0.0, 0.0)
    assert isinstance(normalised.mean[0], float)


def test_from_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbackbone: resnet18\ndetection: {classes: coco}\nhead_conv: -1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: head_conv"):
        ModelConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        ModelConfig.from_yaml(tmp_path / "missing.yaml")


def test_configs_are_frozen() -> None:
    config = ModelConfig(name="m", backbone="resnet18", detection=DetectionConfig(), pose=PoseConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]
    assert config.pose is not None and config.pose.num_keypoints == 17


def test_package_exports_resolve() -> None:
    import mcn_ros.model as package

    for name in package.__all__:
        assert getattr(package, name) is not None, name
    with pytest.raises(AttributeError):
        _ = package.no_such_name
