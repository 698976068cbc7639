"""python -m mcn_ros.model.export: the ONNX file runs in ONNX Runtime as the PyTorch model, says what it is,
and bad input ends with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from needs import onnx_modules

from mcn_ros.model.config import ModelConfig
from mcn_ros.model.export import main
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.weights import load_weights, save_weights

onnx, onnxruntime = onnx_modules()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = ModelConfig.from_dict(
        {
            "name": "export_test",
            "backbone": "resnet18",
            "input_size": [64, 96],
            "use_dcn": False,
            "shared_head_conv": True,
            "detection": {"classes": ["person", "car"]},
            "pose": {},
            "segmentation": {"classes": ["person"]},
        }
    )
    torch.manual_seed(0)
    model = MultitaskCenterNet(config)
    for module in model.modules():  # BatchNorm statistics away from identity, so folding them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    return save_weights(path, model, config, {"command": "test_model_export"})


def test_the_onnx_file_computes_the_models_outputs(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "model.onnx"
    assert main(["--weights", str(weights), "--output", str(output), "--tasks", "detection", "pose"]) == 0
    assert "outputs" in capsys.readouterr().out
    graph = onnx.load(str(output))
    onnx.checker.check_model(graph)
    metadata = {p.key: p.value for p in graph.metadata_props}
    model, config, _ = load_weights(weights)
    assert ModelConfig.from_dict(yaml.safe_load(metadata["mcn_config"])) == config
    assert metadata["mcn_tasks"] == "detection,pose"

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == metadata["mcn_outputs"].split(",")
    assert "segmentation" not in names and {"heatmap", "kp_heatmap"} <= set(names)
    images = torch.randn(2, 3, 96, 128)  # another size than the config's: the axes are dynamic
    got = session.run(names, {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images, {"detection", "pose"})
    for name, value in zip(names, got, strict=True):
        reference = expected[name].numpy()
        scale = float(np.abs(reference).max()) or 1.0
        np.testing.assert_allclose(value, reference, atol=1e-4 * scale, rtol=0, err_msg=name)


def test_bad_input_ends_with_one_line(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:3000])
    cases = [
        (["--weights", str(tmp_path / "missing.safetensors")], "missing.safetensors"),
        (["--weights", str(truncated)], "truncated.safetensors"),
    ]
    for arguments, expected in cases:
        assert main([*arguments, "--output", str(tmp_path / "x.onnx")]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and expected in error and error.count("\n") == 1, error
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["--weights", str(weights), "--output", str(blocker / "model.onnx")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    before = weights.read_bytes()
    assert main(["--weights", str(weights), "--output", str(weights)]) == 2  # would destroy the weights
    assert "is the weights file itself" in capsys.readouterr().err and weights.read_bytes() == before


def test_a_finer_segmentation_output_declares_its_own_size() -> None:
    """At segmentation stride 1 the class-logit map is 4x the heatmaps' size: its declared spatial axes are
    named apart from theirs (a runtime that sizes outputs from the declaration would be misled)."""
    from mcn_ros.model.backends import export_onnx

    light = ModelConfig.from_dict(
        yaml.safe_load(
            (
                Path(__file__).resolve().parent.parent
                / "config"
                / "models"
                / "resnet18_det80_seg80_pose_light_512.yaml"
            ).read_text()
        )
    ).to_dict()
    light["segmentation"]["output_stride"], light["input_size"] = 1, [64, 64]
    config = ModelConfig.from_dict(light)
    model = MultitaskCenterNet(config).eval()
    assert config.detection is not None
    # NCHW, and the backend's own graphs' [B, H, W, C]
    for channels_last, (rows, columns) in ((False, (2, 3)), (True, (1, 2))):
        data, _ = export_onnx(model, config.tasks, 64, 64, channels_last=channels_last)
        dims = {
            o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
            for o in onnx.load_from_string(data).graph.output
        }
        assert [dims["segmentation"][i] for i in (0, rows, columns)] == ["batch", "seg_height", "seg_width"]
        assert [dims["heatmap"][i] for i in (0, rows, columns)] == ["batch", "out_height", "out_width"]
        assert dims["heatmap"][6 - rows - columns] == config.detection.num_classes
