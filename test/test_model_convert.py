"""Conversion of plain PyTorch (CenterNet-named) state dicts into mcn_ros weights."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mcn_ros.model.config import DetectionConfig, ModelConfig, PoseConfig
from mcn_ros.model.convert import CENTERNET_MEAN_RGB, CENTERNET_STD_RGB, ConversionError, convert, main
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.preprocess import preprocess
from mcn_ros.model.weights import load_weights

CONFIG = ModelConfig(
    name="conv",
    backbone="resnet18",
    input_size=(64, 64),
    use_dcn=True,
    detection=DetectionConfig(),
    pose=PoseConfig(),
)
# Our names -> CenterNet's (resdcn_18 multi_pose model), the inverse of the default rules.
TO_CENTERNET = [
    (r"^heads\.detection\.heatmap\.", "hm."),
    (r"^heads\.detection\.size\.", "wh."),
    (r"^heads\.detection\.offset\.", "reg."),
    (r"^heads\.pose\.kp_offsets\.", "hps."),
    (r"^heads\.pose\.kp_heatmap\.", "hm_hp."),
    (r"^heads\.pose\.kp_subpixel\.", "hp_offset."),
    (r"^neck\.", ""),
    (r"^backbone\.body\.", ""),
]


def centernet_state(model: MultitaskCenterNet) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # old CenterNet checkpoints predate this buffer
        for pattern, replacement in TO_CENTERNET:
            key = re.sub(pattern, replacement, key)
        state[f"module.{key}"] = value.clone()
    state["module.fc.weight"] = torch.zeros(1000, 512)  # ImageNet classifier: ignored
    return state


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MultitaskCenterNet, Path]:
    torch.manual_seed(0)
    model = MultitaskCenterNet(CONFIG).eval()
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "model_last.pth"
    torch.save({"epoch": 140, "state_dict": centernet_state(model)}, path)
    config_path = folder / "conv.yaml"
    config_path.write_text(CONFIG.to_yaml())
    return path, model, config_path


def test_convert_centernet_checkpoint(source: tuple[Path, MultitaskCenterNet, Path], tmp_path: Path) -> None:
    path, model, config_path = source
    out = tmp_path / "conv.safetensors"
    argv = ["--config", str(config_path), "--checkpoint", str(path), "--output", str(out), "--dataset", "x"]
    status = main([*argv, "--source-color", "rgb"])  # weights as they are
    assert status == 0
    loaded, config, provenance = load_weights(out)
    assert (
        config == CONFIG and provenance["converted_from"] == "model_last.pth" and provenance["dataset"] == "x"
    )
    assert provenance["source_color"] == "rgb"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bgr_checkpoint_gives_centernet_outputs_on_rgb_images(
    source: tuple[Path, MultitaskCenterNet, Path], tmp_path: Path
) -> None:
    path, model, config_path = source  # ``model`` plays CenterNet: it expects BGR images, BGR statistics
    out = tmp_path / "bgr.safetensors"
    assert main(["--config", str(config_path), "--checkpoint", str(path), "--output", str(out)]) == 0
    _, config, provenance = load_weights(out)
    assert provenance["source_color"] == "bgr"  # the default
    assert config.mean == CENTERNET_MEAN_RGB and config.std == CENTERNET_STD_RGB
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # RGB, the input size

    # CenterNet's own preprocessing: BGR, (pixels / 255 - mean) / std with its BGR statistics.
    bgr = torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.408, 0.447, 0.470]).view(3, 1, 1)
    std = torch.tensor([0.289, 0.274, 0.278]).view(3, 1, 1)
    with torch.no_grad():
        reference = model(((bgr - mean) / std)[None])

    predictor = Predictor.from_weights(out, device="cpu", channels_last=False)
    batch, _ = preprocess([image], config.input_size, config.mean, config.std, channels_last=False)
    ours = predictor.forward(batch, config.tasks)
    # Random-init outputs vary little with the input (std ~0.01): unconverted colours would be off by ~1e-4.
    for key, value in reference.items():
        torch.testing.assert_close(ours[key], value, atol=1e-6, rtol=1e-5)


def test_unmapped_key_is_named(source: tuple[Path, MultitaskCenterNet, Path], tmp_path: Path) -> None:
    path, _, _ = source
    state = torch.load(path, weights_only=True)["state_dict"]
    state["module.mystery.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ConversionError, match=r"'mystery\.weight' \(no rule matches it\) has no counterpart"):
        convert(bad, CONFIG, tmp_path / "o.safetensors")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("ignore: ['^mystery\\.']\n")
    convert(bad, CONFIG, tmp_path / "o.safetensors", mapping=mapping)
    # The checkpoint given as the mapping (a binary file): one error, not a UnicodeDecodeError.
    with pytest.raises(ConversionError, match=r"key mapping .*bad\.pth: not a YAML text file"):
        convert(bad, CONFIG, tmp_path / "o.safetensors", mapping=bad)
    # A mapping file that is missing, or a list: one error naming the file; an empty one adds no rules.
    with pytest.raises(ConversionError, match=r"cannot read key mapping .*gone\.yaml"):
        convert(bad, CONFIG, tmp_path / "o.safetensors", mapping=tmp_path / "gone.yaml")
    mapping.write_text("- ['^a', 'b']\n")
    with pytest.raises(ConversionError, match=r"key mapping .*map\.yaml: expected a mapping at the top"):
        convert(bad, CONFIG, tmp_path / "o.safetensors", mapping=mapping)
    mapping.write_text("ignore: '^mystery'\n")  # one string, not a list: it was read character by character
    with pytest.raises(ConversionError, match=r"map\.yaml: 'ignore' must be a list of patterns, got '\^myst"):
        convert(bad, CONFIG, tmp_path / "o.safetensors", mapping=mapping)
    mapping.write_text("rules: [['(unclosed', 'x']]\n")
    with pytest.raises(ConversionError, match=r"map\.yaml: '\(unclosed' is not a regular expression"):
        convert(bad, CONFIG, tmp_path / "o.safetensors", mapping=mapping)
    mapping.write_text("rules: ['^a', 'b']\n")  # a pair, not a list of pairs
    with pytest.raises(ConversionError, match=r"'rules' must be a list of \[pattern, replacement\] pairs"):
        convert(bad, CONFIG, tmp_path / "o.safetensors", mapping=mapping)
    mapping.write_text("# nothing to add\n")
    with pytest.raises(ConversionError, match=r"'mystery\.weight' \(no rule matches it\) has no counterpart"):
        convert(bad, CONFIG, tmp_path / "o.safetensors", mapping=mapping)


def test_shape_mismatch_and_missing_are_named(
    source: tuple[Path, MultitaskCenterNet, Path], tmp_path: Path
) -> None:
    path, _, _ = source
    person_only = ModelConfig(**{**CONFIG.__dict__, "detection": DetectionConfig(("person",))})
    with pytest.raises(
        ConversionError, match=r"'hm\.2\.weight' has shape \(80, 64, 1, 1\) .* \(1, 64, 1, 1\)"
    ):
        convert(path, person_only, tmp_path / "o.safetensors")
    state = torch.load(path, weights_only=True)["state_dict"]
    del state["module.hps.2.bias"]
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(
        ConversionError, match=r"model tensor 'heads\.pose\.kp_offsets\.2\.bias' .* not provided"
    ):
        convert(partial, CONFIG, tmp_path / "o.safetensors")


def test_pickled_objects_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"args": argparse.Namespace(lr=1.0), "state_dict": {}}, unsafe)
    with pytest.raises(ConversionError, match="weights_only=True") as refused:
        convert(unsafe, CONFIG, tmp_path / "o.safetensors")
    message = str(refused.value)  # one line, and never the advice to load it unsafely
    assert "\n" not in message and "weights_only=False" not in message and "UnpicklingError" in message
    config_path = tmp_path / "c.yaml"
    config_path.write_text(CONFIG.to_yaml())
    status = main(["--config", str(config_path), "--checkpoint", str(tmp_path / "none.pth"), "--output", "x"])
    assert status == 2 and "checkpoint not found" in capsys.readouterr().err
