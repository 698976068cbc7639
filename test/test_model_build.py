"""Model assembly: every shipped config builds and runs; backbones, up-paths and heads as documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcn_ros.model.backbones import OUT_INDICES, Backbone, ModulatedDeformConv2d, create_up_path
from mcn_ros.model.config import ConfigError, DetectionConfig, ModelConfig, PoseConfig, SegmentationConfig
from mcn_ros.model.heads import HEATMAP_BIAS, DetectionHead, PoseHead, SegmentationHead
from mcn_ros.model.mcn import MultitaskCenterNet

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "models"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def small(config: ModelConfig, size: int) -> ModelConfig:
    return dataclasses.replace(config, input_size=(size, size))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_shipped_config_forward(path: Path) -> None:
    torch.manual_seed(0)
    config = ModelConfig.from_yaml(path)
    size = 64 if config.backbone == "dla34" else 96
    b = 1 if config.backbone == "dla34" else 2  # DCN is slow on CPU
    config = small(config, size)
    model = MultitaskCenterNet(config).eval()
    with torch.no_grad():
        out = model(torch.randn(b, 3, size, size + 32))
    h, w = size // 4, (size + 32) // 4
    expected: dict[str, tuple[int, ...]] = {}
    if config.detection is not None:
        expected |= {
            "heatmap": (b, config.detection.num_classes, h, w),
            "size": (b, 2, h, w),
            "offset": (b, 2, h, w),
        }
    if config.pose is not None:
        expected |= {"kp_offsets": (b, 34, h, w), "kp_heatmap": (b, 17, h, w), "kp_subpixel": (b, 2, h, w)}
    if config.segmentation is not None:
        s = config.segmentation.output_stride
        expected["segmentation"] = (b, config.segmentation.num_outputs, size // s, (size + 32) // s)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    assert set(model.heads.keys()) == set(config.tasks)


@pytest.mark.parametrize("name", sorted(OUT_INDICES))
def test_backbone_feature_info(name: str) -> None:
    backbone = Backbone(name)
    assert backbone.strides == (4, 8, 16, 32)
    expected_channels = {"dla34": (64, 128, 256, 512), "resnet50": (256, 512, 1024, 2048)}
    expected_channels["resnet101"] = expected_channels["resnet50"]
    assert backbone.channels == expected_channels.get(name, (64, 128, 256, 512))
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 64 // s, 64 // s) for c, s in zip(backbone.channels, backbone.strides, strict=True)
    ]
    neck = create_up_path(backbone, use_dcn=False)
    with torch.no_grad():
        assert tuple(neck(features).shape) == (1, neck.out_channels, 16, 16)
    assert neck.out_channels == 64  # DLA: the stride-4 level; ResNet: the last deconv


@pytest.mark.parametrize("backbone", ["resnet18", "dla34"])
def test_use_dcn_switches_deformable_convs(backbone: str) -> None:
    config = ModelConfig(
        name="m", backbone=backbone, input_size=(64, 64), detection=DetectionConfig(("person",))
    )
    with_dcn = MultitaskCenterNet(config)
    plain = MultitaskCenterNet(dataclasses.replace(config, use_dcn=False))
    assert any(isinstance(m, ModulatedDeformConv2d) for m in with_dcn.neck.modules())
    assert not any(isinstance(m, ModulatedDeformConv2d) for m in plain.modules())


def test_deformable_conv_starts_as_masked_plain_conv_and_trains() -> None:
    torch.manual_seed(0)
    conv = ModulatedDeformConv2d(4, 5)
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    y = conv(x)
    # Zero offsets and mask sigmoid(0) = 0.5 at initialisation.
    expected = F.conv2d(x, conv.weight, padding=1) * 0.5 + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    y.square().mean().backward()
    assert conv.conv_offset_mask.weight.grad is not None and conv.weight.grad is not None


def test_channels_last_and_dcn_agree_with_contiguous() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        name="m", backbone="dla34", input_size=(64, 64), detection=DetectionConfig(("person",))
    )
    model = MultitaskCenterNet(config).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)["heatmap"]
        nhwc = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(nhwc["heatmap"], reference, rtol=1e-4, atol=1e-4)


def test_head_initialisation() -> None:
    det, pose = DetectionHead(8, 3, 16), PoseHead(8, 17, 16)
    seg = SegmentationHead(8, 4, 16, output_stride=1)
    finals = {
        "heatmap": det.heatmap[2],
        "size": det.size[2],
        "offset": det.offset[2],
        "kp_heatmap": pose.kp_heatmap[2],
        "kp_offsets": pose.kp_offsets[2],
        "kp_subpixel": pose.kp_subpixel[2],
        "segmentation": seg.segmentation[2],
    }
    for name, conv in finals.items():
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is not None
        expected = HEATMAP_BIAS if name in ("heatmap", "kp_heatmap") else 0.0
        assert torch.all(conv.bias == expected), name
    for branch in (det.heatmap, pose.kp_offsets, seg.segmentation):
        assert isinstance(branch[0], nn.Conv2d) and branch[0].kernel_size == (3, 3)
        assert branch[0].out_channels == 16 and isinstance(branch[1], nn.ReLU)
    assert tuple(seg(torch.zeros(1, 8, 5, 6))["segmentation"].shape) == (1, 4, 20, 24)


def test_shared_head_conv_gives_the_same_outputs_from_one_branch_per_task() -> None:
    paper = ModelConfig(
        name="paper", backbone="resnet18", use_dcn=False, input_size=(64, 96),
        detection=DetectionConfig(), pose=PoseConfig(), segmentation=SegmentationConfig(),
    )  # fmt: skip
    light = dataclasses.replace(paper, name="light", shared_head_conv=True, neck_channels=(128, 64, 32))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = MultitaskCenterNet(paper).eval()(x)
        model = MultitaskCenterNet(light).eval()
        outputs = model(x)
    assert {k: v.shape for k, v in outputs.items()} == {k: v.shape for k, v in expected.items()}
    head_convs = [m for m in model.heads.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(head_convs) == 3  # one per task, against 7 (one per output) in the paper's layout
    assert model.neck.out_channels == 32 and all(c.in_channels == 32 for c in head_convs)
    # Each output's slice of the shared 1x1 conv starts at its own bias (heatmaps at the focal-loss prior).
    det = model.heads["detection"].shared.branch[2].bias
    num_classes = light.detection.num_classes  # type: ignore[union-attr]
    assert torch.all(det[:num_classes] == HEATMAP_BIAS) and torch.all(det[num_classes:] == 0)
    pose = model.heads["pose"].shared.branch[2].bias
    assert torch.all(pose[34:51] == HEATMAP_BIAS) and torch.all(pose[:34] == 0) and torch.all(pose[51:] == 0)
    with pytest.raises(ConfigError, match="neck_channels"):
        dataclasses.replace(paper, backbone="dla34", neck_channels=(128, 64, 32))


@pytest.fixture(scope="module")
def hooked_model() -> tuple[MultitaskCenterNet, dict[str, int]]:
    config = ModelConfig(
        name="m",
        backbone="resnet18",
        input_size=(64, 64),
        use_dcn=False,
        detection=DetectionConfig(),
        pose=PoseConfig(),
        segmentation=SegmentationConfig(("person", "car")),
    )
    model = MultitaskCenterNet(config).eval()
    calls = {name: 0 for name in model.heads}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def count(*_: object) -> None:
            calls[name] += 1

        return count

    for name, head in model.heads.items():
        head.register_forward_hook(hook(name))
        for branch_name, branch in head.named_children():
            branch.register_forward_hook(hook(name))
            calls.setdefault(f"{name}.{branch_name}", 0)
    return model, calls


@pytest.mark.parametrize(
    ("tasks", "run", "keys"),
    [
        (["segmentation"], {"segmentation"}, {"segmentation"}),
        (["detection"], {"detection"}, {"heatmap", "size", "offset"}),
        (
            ["pose"],
            {"detection", "pose"},
            {"heatmap", "size", "offset", "kp_offsets", "kp_heatmap", "kp_subpixel"},
        ),
        (None, {"detection", "pose", "segmentation"}, None),
    ],
)
def test_only_asked_heads_run(
    hooked_model: tuple[MultitaskCenterNet, dict[str, int]],
    tasks: list[str] | None,
    run: set[str],
    keys: set[str] | None,
) -> None:
    model, calls = hooked_model
    calls.update(dict.fromkeys(calls, 0))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), tasks)
    assert {name for name, n in calls.items() if n} == run
    if keys is not None:
        assert set(out) == keys


def test_unknown_or_unconfigured_task_is_rejected() -> None:
    config = ModelConfig(name="m", backbone="resnet18", input_size=(64, 64), detection=DetectionConfig())
    model = MultitaskCenterNet(config)
    with pytest.raises(ValueError, match="not configured"):
        model(torch.zeros(1, 3, 64, 64), ["segmentation"])
    with pytest.raises(ValueError, match="unknown task"):
        model(torch.zeros(1, 3, 64, 64), ["depth"])
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 60, 64))


def test_local_backbone_weights(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    classifier = timm.create_model("resnet18", pretrained=False)  # timm's layout, classifier included
    state = {k: v.contiguous() for k, v in classifier.state_dict().items()}
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    config = ModelConfig(
        name="m", backbone="resnet18", input_size=(64, 64), detection=DetectionConfig(("person",))
    )
    model = MultitaskCenterNet(config, backbone_weights=path)
    torch.testing.assert_close(
        model.backbone.body.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"]
    )
    del state["layer3.1.bn2.running_var"]
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"missing, first 'layer3\.1\.bn2\.running_var'"):
        Backbone("resnet18", path)
    with pytest.raises(ValueError, match="not found"):
        Backbone("resnet18", tmp_path / "none.safetensors")
    pickled = tmp_path / "resnet18.pth"  # timm's weights as a torch.save pickle: refused, with the way out
    torch.save(classifier.state_dict(), pickled)
    with pytest.raises(
        ValueError, match=r"not a readable safetensors file .*pickle is not loaded.*save_file"
    ):
        Backbone("resnet18", pickled)
