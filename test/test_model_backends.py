"""The ONNX Runtime backend gives the PyTorch backend's outputs and results; a clear error without it."""

from __future__ import annotations

import dataclasses
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from needs import onnx_modules

from mcn_ros.model.backends import fold_batch_norms
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.results import Results

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "models"


def _model(seg_stride: int = 4) -> tuple[MultitaskCenterNet, ModelConfig]:
    torch.manual_seed(0)
    config = ModelConfig.from_yaml(CONFIG_DIR / "resnet18_det1_seg1_pose_128.yaml")
    assert config.segmentation is not None
    segmentation = dataclasses.replace(config.segmentation, output_stride=seg_stride)
    config = dataclasses.replace(config, input_size=(96, 96), segmentation=segmentation)
    return MultitaskCenterNet(config).eval(), config


def test_unknown_backend_and_missing_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    model, config = _model()
    with pytest.raises(ValueError, match="backend must be one of torch, onnxruntime"):
        Predictor(model, config, backend="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ImportError, match="needs the optional packages onnxruntime and onnx"):
        Predictor(model, config, backend="onnxruntime")


@pytest.mark.parametrize("seg_stride", [4, 1])
def test_onnxruntime_equals_torch(seg_stride: int) -> None:
    """Raw outputs within 1e-4 of their scale at two input shapes (dynamic axes) and every task subset's
    graph, handed on as channels-last views (the graph writes [B, H, W, C]); decoded detections, keypoints
    and segmentation equal on camera-shaped inputs."""
    onnx_modules()
    model, config = _model(seg_stride)
    eager = Predictor(model, config)
    onnx = Predictor(model, config, backend="onnxruntime")
    assert onnx.backend == "onnxruntime" and not onnx.channels_last
    for shape, tasks in (
        ((2, 3, 96, 96), None),
        ((1, 3, 64, 128), ["segmentation"]),
        ((1, 3, 96, 64), ["pose"]),
    ):
        batch = torch.randn(shape)
        want, got = (
            eager.forward(batch, eager.config.tasks if tasks is None else tasks),
            onnx.forward(batch, onnx.config.tasks if tasks is None else tasks),
        )
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert got[key].shape == value.shape, key
            assert got[key].permute(0, 2, 3, 1).is_contiguous(), key
            scale = float(value.abs().max()) + 1e-6
            assert float((got[key] - value).abs().max()) <= 1e-4 * scale, key
    rng = np.random.default_rng(5)
    images = [
        rng.integers(0, 256, (60, 100, 3), dtype=np.uint8),
        rng.integers(0, 256, (90, 50, 3), dtype=np.uint8),
    ]
    for a, b in zip(
        eager.predict(images, score_threshold=0.0), onnx.predict(images, score_threshold=0.0), strict=True
    ):
        assert isinstance(a, Results) and isinstance(b, Results)
        assert a.detections is not None and b.detections is not None
        np.testing.assert_allclose(b.detections.scores, a.detections.scores, atol=1e-5)
        np.testing.assert_allclose(b.detections.boxes, a.detections.boxes, atol=1e-3)
        assert a.poses is not None and b.poses is not None
        np.testing.assert_allclose(b.poses.keypoints, a.poses.keypoints, atol=1e-3)
        assert a.segmentation is not None and b.segmentation is not None
        assert np.mean(a.segmentation != b.segmentation) < 1e-3  # argmax ties at most


def test_folded_batch_norms_give_the_same_outputs() -> None:
    """The inference copy has no BatchNorm after a plain conv and the same outputs; the model is untouched."""
    model, config = _model()
    for module in model.modules():  # BatchNorms that do something (fresh ones are the identity)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    keys = list(model.state_dict())
    folded = fold_batch_norms(model)
    batch_norms = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batch_norms) < sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) / 4
    assert list(model.state_dict()) == keys
    batch = torch.randn(2, 3, 96, 64)
    with torch.inference_mode():
        want, got = model(batch), folded(batch)
    for key, value in want.items():
        assert float((got[key] - value).abs().max()) <= 1e-4 * float(value.abs().max()), key
    predictor = Predictor(model, config)
    assert predictor.model is model and predictor._run_model is not model
    assert Predictor(model, config, fold_bn=False)._run_model is model


def test_onnxruntime_predictor_from_several_threads() -> None:
    """ONNX Runtime Predictors called from four threads at once, each thread with another task set, so
    that every call makes its session: two threads share one Predictor, two have one each (torch's export
    state is process-wide). The same results as one caller gets (the concurrent exports broke each other:
    "GLOBALS.in_onnx_export must be True")."""
    onnx_modules()
    model, config = _model()
    image = np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    task_sets = [("detection",), ("pose",), ("segmentation",), ("detection", "segmentation")]
    shared = Predictor(model, config, backend="onnxruntime")
    predictors = [shared, shared] + [Predictor(model, config, backend="onnxruntime") for _ in range(2)]
    start = threading.Barrier(len(task_sets))

    def call(predictor: Predictor, tasks: tuple[str, ...]) -> Results:
        start.wait()
        result = predictor.predict(image, tasks=tasks, score_threshold=0.0, pose_score_threshold=0.0)
        assert isinstance(result, Results)
        return result

    with ThreadPoolExecutor(len(task_sets)) as pool:
        together = list(pool.map(call, predictors, task_sets))
    alone = Predictor(model, config, backend="onnxruntime")
    for tasks, got in zip(task_sets, together, strict=True):
        want = alone.predict(image, tasks=tasks, score_threshold=0.0, pose_score_threshold=0.0)
        assert isinstance(want, Results)
        for field in ("detections", "poses"):
            a, b = getattr(got, field), getattr(want, field)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a.boxes, b.boxes)
                np.testing.assert_array_equal(a.scores, b.scores)
        assert (got.segmentation is None) == (want.segmentation is None)
        if got.segmentation is not None:
            np.testing.assert_array_equal(got.segmentation, want.segmentation)


def test_onnxruntime_forward_refuses_what_the_model_refuses() -> None:
    """A batch whose sides are not multiples of 32 gives the torch model's error in ONNX Runtime too (the
    exported graph no longer checks: it returned maps that did not line up with the input)."""
    onnx_modules()
    model, config = _model()
    for backend in ("torch", "onnxruntime"):
        predictor = Predictor(model, config, backend=backend)
        with pytest.raises(ValueError, match=r"multiples of 32, got \(100, 100\)"):
            predictor.forward(torch.zeros(1, 3, 100, 100), ["detection"])


def test_onnxruntime_sessions_have_the_weights_of_construction() -> None:
    """Each task set's session was exported from the caller's live module on first use: weights changed in
    between reached some sessions and not others (and the export toggled the caller's module's mode)."""
    onnx_modules()
    torch.manual_seed(0)
    config = ModelConfig.from_dict(
        {"name": "t", "backbone": "resnet18", "input_size": [64, 64], "use_dcn": False,
         "detection": {"classes": ["person", "car"]}, "pose": {}}
    )  # fmt: skip
    model = MultitaskCenterNet(config)
    predictor = Predictor(model, config, backend="onnxruntime")
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    before = predictor.predict(image, tasks=["detection"], score_threshold=0.0)
    model.train()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    after = predictor.predict(image, tasks=["detection", "pose"], score_threshold=0.0)
    assert before.detections is not None and after.detections is not None
    np.testing.assert_allclose(after.detections.boxes, before.detections.boxes, atol=1e-3)
    np.testing.assert_allclose(after.detections.scores, before.detections.scores, atol=1e-5)
    assert model.training  # the caller's module as the caller left it
