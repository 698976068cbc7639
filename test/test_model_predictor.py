"""Predictor: images of mixed sizes in, Results in original coordinates out."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Collection
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from needs import onnx_modules
from torch import Tensor, nn

from mcn_ros.model import predictor as predictor_module
from mcn_ros.model.color_order import grey_as_rgb
from mcn_ros.model.config import DetectionConfig, ModelConfig, PoseConfig, SegmentationConfig
from mcn_ros.model.cuda_graphs import CaptureError
from mcn_ros.model.decode import DecodeOptions, decode_batch, unpack_results
from mcn_ros.model.labels import flip_permutation
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.predictor import Predictor, forward_and_decode, merge_flipped
from mcn_ros.model.preprocess import letterbox_for
from mcn_ros.model.results import Results
from mcn_ros.model.weights import save_weights

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "models"


class BrightSpotModel(nn.Module):
    """A stand-in network: one detection at the brightest 4x4 cell of the input, box 2x2 cells."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images: Tensor, tasks: Collection[str] | None = None) -> dict[str, Tensor]:
        cells = F.avg_pool2d(images.mean(dim=1, keepdim=True), 4)
        b, _, h, w = cells.shape
        brightest = cells.flatten(1).argmax(dim=1)  # the first one on ties: exactly one peak
        heatmap = F.one_hot(brightest, h * w).view(b, 1, h, w).float() * 15 - 10 + self.dummy
        return {
            "heatmap": heatmap,
            "size": torch.full((b, 2, h, w), 2.0),
            "offset": torch.full((b, 2, h, w), 0.5),
        }


def test_mixed_batch_results_in_original_coordinates() -> None:
    config = ModelConfig(
        name="fake", backbone="resnet18", input_size=(128, 128), detection=DetectionConfig(("person",))
    )
    predictor = Predictor(BrightSpotModel(), config)
    spots = [((300, 500), (120, 410)), ((90, 60), (20, 40)), ((128, 128), (64, 64)), ((47, 333), (30, 10))]
    images = []
    for (h, w), (cy, cx) in spots:
        image = np.zeros((h, w, 3), np.uint8)
        r = max(2, round(3 / min(128 / h, 128 / w)))  # a few input pixels wide whatever the scale
        image[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + r] = 255
        images.append(image)
    results = predictor.predict(images)
    assert isinstance(results, list) and len(results) == len(images)
    for result, ((h, w), (cy, cx)) in zip(results, spots, strict=True):
        assert result.image_size == (h, w)
        det = result.detections
        assert det is not None and len(det) == 1
        x1, y1, x2, y2 = det.boxes[0]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        box = letterbox_for((h, w), (128, 128))
        cell_x, cell_y = 4 / box.scale_x, 4 / box.scale_y  # one output cell, in original pixels
        assert abs((x1 + x2) / 2 - cx) <= cell_x and abs((y1 + y2) / 2 - cy) <= cell_y
        assert x2 - x1 == pytest.approx(2 * cell_x, rel=1e-4) or x1 == 0 or x2 == w
        assert y2 - y1 == pytest.approx(2 * cell_y, rel=1e-4) or y1 == 0 or y2 == h


class ShapeRecorder(BrightSpotModel):
    """The bright-spot model, remembering the input shapes it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, images: Tensor, tasks: Collection[str] | None = None) -> dict[str, Tensor]:
        self.shapes.append(tuple(images.shape))
        return super().forward(images, tasks)


def test_camera_shaped_input_maps_back_like_the_square_one() -> None:
    """rect (the default) runs a 640x480 image at 512x384 and a portrait one at 384x512; the boxes come back
    in original pixels exactly as with the square 512x512 input."""
    config = ModelConfig(
        name="fake", backbone="resnet18", input_size=(512, 512), detection=DetectionConfig(("person",))
    )
    model = ShapeRecorder()
    rect, square = Predictor(model, config), Predictor(model, config, rect=False)
    assert rect.rect and not square.rect
    for (h, w), shape in (((480, 640), (1, 3, 384, 512)), ((640, 480), (1, 3, 512, 384))):
        image = np.zeros((h, w, 3), np.uint8)
        image[300:310, 200:210] = 255
        got, want = rect.predict(image), square.predict(image)
        assert isinstance(got, Results) and isinstance(want, Results)
        assert model.shapes[-2:] == [shape, (1, 3, 512, 512)]
        assert got.detections is not None and want.detections is not None and len(got.detections) == 1
        np.testing.assert_allclose(got.detections.boxes, want.detections.boxes, atol=1e-3)
        x1, y1, x2, y2 = got.detections.boxes[0]
        assert abs((x1 + x2) / 2 - 205) <= 5 and abs((y1 + y2) / 2 - 305) <= 5


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    config = ModelConfig.from_yaml(CONFIG_DIR / "resnet18_det1_seg1_pose_128.yaml")
    config = dataclasses.replace(config, input_size=(96, 96))
    return Predictor(MultitaskCenterNet(config), config)


def test_real_model_batch(predictor: Predictor) -> None:
    rng = np.random.default_rng(1)
    sizes = [(50, 80), (120, 40), (96, 96)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in sizes]
    results = predictor.predict(images, score_threshold=0.0, pose_score_threshold=0.0, max_detections=7)
    assert predictor.tasks == {"detection", "pose", "segmentation"}
    for result, (h, w) in zip(results, sizes, strict=True):
        assert result.image_size == (h, w)
        assert result.detections is not None and result.poses is not None and result.segmentation is not None
        # Threshold 0: every peak, up to max_detections (a random map has a few; zero-score non-peaks not).
        n = len(result.detections)
        assert 3 <= n <= 7 and result.detections.boxes.dtype == np.float32, n
        assert np.all(result.detections.scores > 0)
        assert np.all(result.detections.boxes[:, [0, 2]] <= w) and np.all(result.detections.boxes >= 0)
        assert np.all(np.diff(result.detections.scores) <= 0)
        assert result.poses.keypoints.shape == (n, 17, 3) and result.poses.keypoints.dtype == np.float32
        assert result.segmentation.shape == (h, w) and result.segmentation.dtype == np.uint8
        assert result.segmentation.max() <= 1
    single = predictor.predict(images[0], tasks=["segmentation"], color_order="bgr")
    assert isinstance(single, Results) and single.detections is None and single.poses is None
    flipped = predictor.predict(images[:2], flip_test=True, tasks=["pose"])
    assert [r.image_size for r in flipped] == sizes[:2] and flipped[0].detections is None


def test_inputs_and_configs_that_cannot_work_are_refused_with_what_to_do(predictor: Predictor) -> None:
    """A 2-D (grey) array, no task, and a config that describes another network than the model: each a
    clear error (they gave an image per row, a bare StopIteration, and silently wrong classes or
    normalisation)."""
    grey = np.zeros((48, 64), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"2-D array.*grey_as_rgb.*COLOR_GRAY2RGB"):
        predictor.predict(grey)
    grey[10:30, 20:50] = 200  # the hint's view gives the results of the grey image expanded to RGB
    viewed, expanded = predictor.predict([grey_as_rgb(grey), cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)])
    assert viewed.detections is not None and expanded.detections is not None
    assert np.array_equal(viewed.detections.boxes, expanded.detections.boxes)
    assert viewed.segmentation is not None and expanded.segmentation is not None
    assert np.array_equal(viewed.segmentation, expanded.segmentation)
    with pytest.raises(ValueError, match="no task asked"):
        predictor.predict(np.zeros((48, 64, 3), dtype=np.uint8), tasks=())
    model, config = predictor.model, predictor.config
    with pytest.raises(ValueError, match="first difference: mean"):
        Predictor(model, dataclasses.replace(config, mean=(0.0, 0.0, 0.0)))
    assert config.detection is not None
    other_classes = dataclasses.replace(config.detection, classes=("person", "car"))
    with pytest.raises(ValueError, match="does not describe this model"):
        Predictor(model, dataclasses.replace(config, detection=other_classes))
    # The input size and the decode settings are the caller's to choose.
    resized = dataclasses.replace(
        config, input_size=(64, 64), decode=dataclasses.replace(config.decode, top_k=7)
    )
    assert Predictor(model, resized).config.input_size == (64, 64)


def test_images_that_cannot_work_are_named_before_anything_runs(predictor: Predictor) -> None:
    """What cv2.imread gives for a file it cannot read (None), a list of rows, a 1-D array and an empty
    image: one clear error each, naming the image (they gave "'NoneType' object is not iterable", an
    AttributeError, an IndexError, and with rect an error without the image's index)."""
    with pytest.raises(TypeError, match=r"got NoneType \(cv2\.imread returns None"):
        predictor.predict(None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="image 1: expected a numpy array, got NoneType"):
        predictor.predict([np.zeros((8, 8, 3), np.uint8), None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="image 0: expected a numpy array, got list"):
        predictor.predict(np.zeros((4, 4, 3), np.uint8).tolist())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got an array of shape \(10,\)"):
        predictor.predict(np.zeros(10, np.uint8))
    assert predictor.rect
    with pytest.raises(ValueError, match=r"image 0: empty image \(0, 10, 3\)"):
        predictor.predict(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="no images given"):
        predictor.predict([])


def test_an_image_has_the_same_results_alone_and_in_a_mixed_batch(predictor: Predictor) -> None:
    """With rect (the default) a wide image batched with a tall one, whose camera-shaped inputs differ, gets
    its results alone: each input shape runs its own forward (a shared input moved the wide image by half
    the backbone's stride and changed its results). Images of one input shape still share a forward."""
    rng = np.random.default_rng(4)
    wide, tall, also_wide = (
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((45, 80), (90, 60), (46, 80))
    )
    assert (
        predictor.input_size([(45, 80)])
        == predictor.input_size([(46, 80)])
        != predictor.input_size([(90, 60)])
    )
    options = {"score_threshold": 0.0, "pose_score_threshold": 0.0}
    pair = predictor.predict([wide, tall], **options)
    for got, image in zip(pair, (wide, tall), strict=True):
        _same_results(got, predictor.predict(image, **options))
    for got, want in zip(predictor.predict(iter([wide, tall]), **options), pair, strict=True):
        _same_results(got, want)  # any iterable of images, as map(cv2.imread, paths)
    shapes = []
    forward = predictor.forward

    def recording(batch: Tensor, *args: object, **kwargs: object) -> dict[str, Tensor]:
        shapes.append(tuple(batch.shape))
        return forward(batch, *args, **kwargs)  # type: ignore[arg-type]

    predictor.forward = recording  # type: ignore[method-assign]
    try:
        three = predictor.predict([wide, tall, also_wide], **options)
    finally:
        del predictor.forward
    assert sorted(shapes) == [(1, 3, 96, 64), (2, 3, 64, 96)]
    _same_results(three[1], pair[1])
    assert [r.image_size for r in three] == [(45, 80), (90, 60), (46, 80)]


def test_forward_takes_a_task_name() -> None:
    """forward("pose") is forward({"pose"}) (it was split into letters on the torch backend)."""
    torch.manual_seed(0)
    config = ModelConfig.from_yaml(CONFIG_DIR / "resnet18_det1_seg1_pose_128.yaml")
    predictor = Predictor(MultitaskCenterNet(config), config)
    batch = torch.zeros(1, 3, 64, 64)
    assert sorted(predictor.forward(batch, "pose")) == sorted(predictor.forward(batch, {"pose"}))
    assert "segmentation" in predictor.forward(batch, "segmentation")


def test_onnxruntime_on_a_machine_with_a_gpu_runs_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """device "auto" (the default of from_weights and of the node) means the CPU for ONNX Runtime, which
    runs only there; it used to pick the GPU and fail. An explicit GPU is refused, saying what to set."""
    onnx_modules()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with a GPU
    config = ModelConfig.from_yaml(CONFIG_DIR / "resnet18_det1_seg1_pose_128.yaml")
    model = MultitaskCenterNet(config)
    assert Predictor(model, config, device="auto", backend="onnxruntime").device == torch.device("cpu")
    path = save_weights(tmp_path / "m.safetensors", model, config)
    assert Predictor.from_weights(path, backend="onnxruntime").device == torch.device(
        "cpu"
    )  # auto by default
    with pytest.raises(ValueError, match=r"runs on the CPU only.*use device 'cpu'"):
        Predictor(model, config, device="cuda", backend="onnxruntime")
    # Refused before the weights are loaded onto the GPU (which this machine would fail to reach).
    with pytest.raises(ValueError, match=r"runs on the CPU only.*use device 'cpu'"):
        Predictor.from_weights(path, device="cuda", backend="onnxruntime")


def test_max_detections_beyond_top_k() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        name="many", backbone="resnet18", input_size=(64, 64), use_dcn=False, detection=DetectionConfig()
    )
    assert config.decode.top_k == 100
    predictor = Predictor(MultitaskCenterNet(config), config)
    image = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    # 80 classes x 16 x 16 cells of a random-init heatmap (scores ~0.1): far more than 150 local peaks.
    many = predictor.predict(image, score_threshold=1e-3, max_detections=150)
    default = predictor.predict(image, score_threshold=1e-3)
    assert isinstance(many, Results) and isinstance(default, Results)
    assert many.detections is not None and default.detections is not None
    assert len(many.detections) == 150 and len(default.detections) == 100
    np.testing.assert_array_equal(many.detections.scores[:100], default.detections.scores)


def test_bgr_equals_rgb_of_swapped_image(predictor: Predictor) -> None:
    image = np.random.default_rng(2).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    a = predictor.predict(image, score_threshold=0.0, tasks=["detection"])
    b = predictor.predict(
        image[..., ::-1].copy(), color_order="bgr", score_threshold=0.0, tasks=["detection"]
    )
    assert isinstance(a, Results) and isinstance(b, Results)
    assert a.detections is not None and b.detections is not None
    np.testing.assert_allclose(a.detections.boxes, b.detections.boxes, rtol=1e-5, atol=1e-4)


def test_fp16_on_cpu_warns_and_runs_float32(predictor: Predictor) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        half = Predictor(predictor.model, predictor.config, device="cpu", precision="fp16")
    assert half.precision.name == "fp32" and half.precision.autocast_dtype is None
    assert any("CUDA" in str(w.message) for w in caught)


def test_from_weights(predictor: Predictor, tmp_path: Path) -> None:
    path = save_weights(tmp_path / "m.safetensors", predictor.model, predictor.config)
    loaded = Predictor.from_weights(path, device="cpu")
    image = np.full((40, 60, 3), 100, np.uint8)
    a = predictor.predict(image, score_threshold=0.0)
    b = loaded.predict(image, score_threshold=0.0)
    assert isinstance(a, Results) and isinstance(b, Results)
    assert a.detections is not None and b.detections is not None
    np.testing.assert_allclose(a.detections.boxes, b.detections.boxes, rtol=1e-5, atol=1e-4)


def _mirror(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """What a perfectly flip-equivariant network outputs for the mirrored image."""
    perm = flip_permutation()
    pairs = outputs["kp_offsets"].unflatten(1, (-1, 2))[:, perm]
    pairs = torch.stack((1 - pairs[:, :, 0], pairs[:, :, 1]), dim=2).flatten(1, 2)
    return {
        "heatmap": outputs["heatmap"].flip(-1),
        "size": outputs["size"].flip(-1),
        "offset": torch.stack((1 - outputs["offset"][:, 0], outputs["offset"][:, 1]), 1).flip(-1),
        "kp_offsets": pairs.flip(-1),
        "kp_heatmap": outputs["kp_heatmap"][:, perm].flip(-1),
        "kp_subpixel": torch.stack((1 - outputs["kp_subpixel"][:, 0], outputs["kp_subpixel"][:, 1]), 1).flip(
            -1
        ),
    }


def test_flip_merge_is_consistent_with_decoding() -> None:
    config = ModelConfig(
        name="f", backbone="resnet18", input_size=(64, 64), detection=DetectionConfig(), pose=PoseConfig()
    )
    h = w = 16
    out = {
        "heatmap": torch.full((1, 80, h, w), -9.0),
        "size": torch.full((1, 2, h, w), 4.0),
        "offset": torch.full((1, 2, h, w), 0.25),
        "kp_offsets": torch.zeros(1, 34, h, w),
        "kp_heatmap": torch.full((1, 17, h, w), -9.0),
        "kp_subpixel": torch.zeros(1, 2, h, w),
    }
    out["heatmap"][0, 0, 7, 5] = 3.0
    out["kp_offsets"][0, 2 * 5 : 2 * 5 + 2, 7, 5] = torch.tensor([-1.25, 0.5])  # left shoulder
    out["kp_offsets"][0, 2 * 6 : 2 * 6 + 2, 7, 5] = torch.tensor([2.5, 0.5])  # right shoulder
    mirrored = _mirror(out)
    hw = (64, 64)
    options = DecodeOptions()
    direct = decode_batch(out, [letterbox_for(hw, (64, 64))], [hw], config, ["pose"], options)[0]
    flipped = decode_batch(mirrored, [letterbox_for(hw, (64, 64))], [hw], config, ["pose"], options)[0]
    assert direct.poses is not None and flipped.poses is not None
    a, b = direct.poses.keypoints[0], flipped.poses.keypoints[0][flip_permutation()]
    np.testing.assert_allclose(b[:, 0], 64 - a[:, 0], atol=1e-4)  # x mirrors as W - x
    np.testing.assert_allclose(b[:, 1], a[:, 1], atol=1e-4)
    np.testing.assert_allclose(flipped.poses.boxes[0, [2, 0]], 64 - direct.poses.boxes[0, [0, 2]], atol=1e-4)
    merged = merge_flipped({k: torch.cat((out[k], mirrored[k])) for k in out}, 1)
    for key in ("heatmap", "kp_heatmap"):
        torch.testing.assert_close(merged[key].sigmoid(), out[key].sigmoid(), atol=1e-4, rtol=1e-4)
    for key in ("size", "kp_offsets", "offset", "kp_subpixel"):
        torch.testing.assert_close(merged[key], out[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_matches_cpu(precision: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        name="g",
        backbone="dla34",
        input_size=(128, 128),
        detection=DetectionConfig(),
        pose=PoseConfig(),
        segmentation=SegmentationConfig(output_stride=1),
    )
    model = MultitaskCenterNet(config)
    with torch.no_grad():
        for (
            module
        ) in model.heads.modules():  # make a few confident peaks so that there is something to compare
            if isinstance(module, nn.Conv2d) and module.out_channels == 80:
                assert module.bias is not None
                module.bias.fill_(0.0)
    cpu = Predictor(model, config, device="cpu")
    image = np.random.default_rng(3).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    ref = cpu.predict(image, score_threshold=0.0)
    same = MultitaskCenterNet(config).eval()
    same.load_state_dict(model.state_dict())  # before the Predictor: it runs a folded copy of the module
    gpu = Predictor(same, config, device="cuda", precision=precision)
    res = gpu.predict(image, score_threshold=0.0)
    assert isinstance(ref, Results) and isinstance(res, Results)
    assert ref.detections is not None and res.detections is not None and res.segmentation is not None
    tol = 1e-3 if precision == "fp32" else 5e-2
    np.testing.assert_allclose(res.detections.scores[:10], ref.detections.scores[:10], atol=tol, rtol=tol)
    assert res.segmentation.shape == (100, 150)
    if precision == "fp32":
        assert (res.segmentation == ref.segmentation).mean() > 0.99


def _graph_config(backbone: str = "resnet18", use_dcn: bool = False) -> ModelConfig:
    """A small three-task config; plain up-path convs by default (as the shipped ResNet-18 configs)."""
    return ModelConfig(
        name="g",
        backbone=backbone,
        input_size=(128, 128),
        use_dcn=use_dcn,
        detection=DetectionConfig(),
        pose=PoseConfig(),
        segmentation=SegmentationConfig(),
    )


def test_cuda_graphs_off_the_gpu_warn_and_run_eagerly() -> None:
    """cuda_graphs asked where it cannot be used: one warning saying why, the eager forward, same results."""
    torch.manual_seed(0)
    config = _graph_config()
    model = MultitaskCenterNet(config).eval()
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    plain = Predictor(model, config)
    with pytest.warns(UserWarning, match="CUDA graphs need a CUDA device"):
        asked = Predictor(model, config, cuda_graphs=True)
    assert not asked.cuda_graphs and not plain.cuda_graphs and not plain.cuda_graphs_possible
    assert asked.cuda_graphs_note is not None and "eagerly" in asked.cuda_graphs_note
    a, b = plain.predict(image, score_threshold=0.0), asked.predict(image, score_threshold=0.0)
    assert a.detections is not None and b.detections is not None
    np.testing.assert_array_equal(a.detections.scores, b.detections.scores)


def test_torch_compile_gives_the_eager_results() -> None:
    """The forward compiled by torch.compile (inductor, weights frozen in) predicts what the eager one does;
    where it cannot apply it warns, says why and runs eagerly."""
    torch.manual_seed(0)
    config = _graph_config()
    model = MultitaskCenterNet(config).eval()
    images = [np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8) for seed in (1, 2)]
    eager = Predictor(model, config)
    compiled = Predictor(model, config, torch_compile=True)
    assert compiled.torch_compile and not eager.torch_compile and compiled.torch_compile_note is None
    from torch._dynamo.utils import counters

    counters.clear()
    for image in images:  # one input shape: compiled once
        got = compiled.predict(image, score_threshold=0.0, pose_score_threshold=0.0)
        want = eager.predict(image, score_threshold=0.0, pose_score_threshold=0.0)
        assert got.detections is not None and want.detections is not None
        np.testing.assert_allclose(got.detections.scores, want.detections.scores, atol=1e-5)
        np.testing.assert_allclose(got.detections.boxes, want.detections.boxes, atol=1e-3)
        assert got.segmentation is not None and want.segmentation is not None
        assert (got.segmentation == want.segmentation).mean() > 0.999
    assert compiled.torch_compile and compiled.torch_compile_note is None  # nothing fell back
    assert counters["frames"]["ok"] >= 1  # dynamo did compile the forward (not the eager module run)
    # Past torch's recompile limit a new input shape runs eagerly, said once; known shapes stay compiled.
    compiled_frames = dict(counters["frames"])
    other = np.random.default_rng(3).integers(0, 256, (200, 150, 3), dtype=np.uint8)  # another input shape
    with torch._dynamo.config.patch(recompile_limit=1):
        with pytest.warns(UserWarning, match="recompile limit"):
            got = compiled.predict(other, score_threshold=0.0, pose_score_threshold=0.0)
        want = eager.predict(other, score_threshold=0.0, pose_score_threshold=0.0)
        assert got.detections is not None and want.detections is not None
        np.testing.assert_allclose(got.detections.scores, want.detections.scores, atol=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once
            compiled.predict(other)
            compiled.predict(images[0])
        assert dict(counters["frames"]) == compiled_frames  # nothing new went through dynamo
        assert compiled.torch_compile and "new ones run eagerly" in str(compiled.torch_compile_note)
        # Another Predictor's compilations count against its own limit, not the first one's (a node
        # configured anew compiles again): another model, compiled at the first one's input shape.
        torch.manual_seed(1)
        other_model = MultitaskCenterNet(config).eval()
        second = Predictor(other_model, config, torch_compile=True)
        every = {"score_threshold": 0.0, "pose_score_threshold": 0.0}
        got = second.predict(images[0], **every)
        want = Predictor(other_model, config).predict(images[0], **every)
        assert counters["frames"]["ok"] == compiled_frames["ok"] + 1  # compiled, not run eagerly
        assert got.detections is not None and want.detections is not None
        np.testing.assert_allclose(got.detections.scores, want.detections.scores, atol=1e-5)
        assert second.torch_compile_note is None
    onnx_modules()
    with pytest.warns(UserWarning, match="not backend onnxruntime"):
        onnx = Predictor(model, config, backend="onnxruntime", torch_compile=True)
    assert not onnx.torch_compile and "not used" in str(onnx.torch_compile_note)


def test_compiled_inputs_are_told_apart_by_memory_layout() -> None:
    """dynamo recompiles for other strides: a channels_last and an NCHW batch of one shape are two of the
    recompile limit's places (they were counted as one, so the note that new inputs run eagerly came late)."""
    torch.manual_seed(0)
    config = _graph_config()
    predictor = Predictor(MultitaskCenterNet(config).eval(), config, torch_compile=True)
    tasks = frozenset(config.tasks)
    nchw = torch.zeros(1, 3, 64, 64)
    with torch._dynamo.config.patch(recompile_limit=1):
        assert predictor._may_compile(nchw, tasks) and predictor._may_compile(nchw.clone(), tasks)
        with pytest.warns(UserWarning, match="recompile limit"):
            assert not predictor._may_compile(nchw.contiguous(memory_format=torch.channels_last), tasks)
    assert "memory layouts" in str(predictor.torch_compile_note)


def test_a_failed_compilation_leaves_the_eager_forward_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compilation that fails (no C++ compiler, an op inductor cannot lower) warns once, says why and leaves
    the eager forward serving; an error the eager forward makes too stays the caller's."""
    torch.manual_seed(0)
    config = _graph_config()
    model = MultitaskCenterNet(config).eval()

    def no_compiler(module: nn.Module, **options: object) -> object:
        def failing(*args: object) -> object:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

        return failing

    monkeypatch.setattr(torch, "compile", no_compiler)
    predictor = Predictor(model, config, torch_compile=True)
    with pytest.raises(ValueError):  # a batch the model refuses: the caller's error, compiling stays on
        predictor.forward(torch.zeros(1, 3, 100, 100), {"detection"})
    assert predictor.torch_compile and predictor.torch_compile_note is None
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match="torch.compile failed .InvalidCxxCompiler"):
        got = predictor.predict(image, score_threshold=0.0)
    want = Predictor(model, config).predict(image, score_threshold=0.0)
    assert got.detections is not None and want.detections is not None
    np.testing.assert_array_equal(got.detections.scores, want.detections.scores)
    assert not predictor.torch_compile and "more detail" not in str(predictor.torch_compile_note)


def test_a_failed_capture_falls_back_to_the_eager_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture that fails (an op CUDA graphs cannot hold) warns once and leaves the eager forward serving:
    no second capture is tried."""
    from mcn_ros.model.cuda_graphs import GraphedCalls

    calls: list[tuple[int, ...]] = []

    def forward(batch: Tensor, tasks: frozenset[str]) -> dict[str, Tensor]:
        calls.append(tuple(batch.shape))
        return {"double": batch * 2}

    graphed = GraphedCalls(forward)
    captures: list[object] = []

    def failing_capture(*args: object) -> None:
        captures.append(args)
        raise CaptureError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(graphed, "_capture", failing_capture)
    batch = torch.ones(1, 3, 4, 4)
    with pytest.warns(UserWarning, match="capture failed .operation not permitted"):
        out = graphed(batch, frozenset({"detection"}))
    torch.testing.assert_close(out["double"], batch * 2)
    assert (
        graphed.failure is not None and "eagerly" in graphed.failure and "more detail" not in graphed.failure
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(graphed(batch + 1, frozenset({"pose"}))["double"], (batch + 1) * 2)
    assert len(captures) == 1 and len(calls) == 2 and graphed.captured == 0


def test_an_error_before_the_capture_is_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error of the eager warm-up before a capture (out of memory, a batch of the wrong dtype) reaches the
    caller, as without graphs, and does not turn graphs off for good (it was taken for a failed capture)."""
    from mcn_ros.model.cuda_graphs import GraphedCalls

    graphed = GraphedCalls(lambda batch, tasks: {"double": batch * 2})

    def out_of_memory(*args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(graphed, "_capture", out_of_memory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "capture failed" warning
        with pytest.raises(torch.OutOfMemoryError):
            graphed(torch.ones(1, 3, 4, 4), frozenset({"detection"}))
    assert graphed.failure is None


def _same_results(got: Results | list[Results], want: Results | list[Results]) -> None:
    """Every field of two Results equal, exactly."""
    assert isinstance(got, Results) and isinstance(want, Results)
    assert got.image_size == want.image_size
    for task in ("detections", "poses"):
        a, b = getattr(got, task), getattr(want, task)
        assert (a is None) == (b is None)
        if a is not None:
            for field in dataclasses.fields(a):
                np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name))
    assert (got.segmentation is None) == (want.segmentation is None)
    if got.segmentation is not None:
        np.testing.assert_array_equal(got.segmentation, want.segmentation)


def test_forward_and_decode_is_what_predict_computes() -> None:
    """The part of predict that graph_decoding captures (forward, then decoding on the device), unpacked on
    the host, gives predict's results; graph_decoding without cuda_graphs is refused."""
    torch.manual_seed(0)
    config = _graph_config()
    predictor = Predictor(MultitaskCenterNet(config).eval(), config)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((90, 120), (60, 100))]
    sizes = tuple((int(im.shape[0]), int(im.shape[1])) for im in images)
    batch, letterboxes = predictor_module.preprocess(
        images, predictor.input_size(sizes), config.mean, config.std, predictor.device, "rgb", True
    )
    options = DecodeOptions.from_config(config.decode, score_threshold=0.05, pose_score_threshold=0.05)
    decoded = forward_and_decode(
        predictor._eager_forward, config, batch, config.tasks, tuple(letterboxes), sizes, options
    )
    want = predictor.predict(images, score_threshold=0.05, pose_score_threshold=0.05)
    got = unpack_results(decoded, sizes, config.tasks)
    assert want[0].detections is not None and len(want[0].detections) > 0
    for a, b in zip(got, want, strict=True):
        _same_results(a, b)
    with pytest.raises(ValueError, match="needs cuda_graphs"):
        Predictor(MultitaskCenterNet(config).eval(), config, graph_decoding=True)


def test_a_failed_decoding_capture_leaves_the_forward_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """graph_decoding whose capture fails: one warning, that frame decoded eagerly, later frames through the
    forward's graphs (here failing too, as on a CPU they must): every result the eager predictor's, and
    cuda_graphs_note says what happened. Bilinear resampling never asks for the decoding graph."""
    monkeypatch.setattr(predictor_module, "graph_unsafe_reason", lambda model, device: None)  # "possible"
    torch.manual_seed(0)
    config = _graph_config()
    model = MultitaskCenterNet(config).eval()
    plain = Predictor(model, config)
    image = np.random.default_rng(4).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    captures: list[str] = []

    def graphed_predictor() -> Predictor:
        graphed = Predictor(model, config, cuda_graphs=True, graph_decoding=True)
        assert graphed.cuda_graphs and graphed.graph_decoding and graphed.cuda_graphs_note is None
        for name, graphs in (("forward", graphed._graphed), ("decoding", graphed._graphed_decoding)):

            def capture(*args: object, name: str = name) -> None:
                captures.append(name)
                raise CaptureError("operation not permitted when stream is capturing")

            monkeypatch.setattr(graphs, "_capture", capture)
        return graphed

    bilinear = plain.predict(image, score_threshold=0.05, segmentation_resampling="bilinear")
    with pytest.warns(UserWarning, match="the forward runs eagerly"):
        got = graphed_predictor().predict(image, score_threshold=0.05, segmentation_resampling="bilinear")
    assert captures == ["forward"], "bilinear resampling: the forward's graph only"
    _same_results(got, bilinear)
    captures.clear()
    want = plain.predict(image, score_threshold=0.05)
    graphed = graphed_predictor()
    with pytest.warns(UserWarning, match="decoding runs after the forward's graph"):
        _same_results(graphed.predict(image, score_threshold=0.05), want)
    assert captures == ["decoding"] and graphed.cuda_graphs and not graphed.graph_decoding
    assert graphed.cuda_graphs_note is not None and "decoding runs after" in graphed.cuda_graphs_note
    with pytest.warns(UserWarning, match="the forward runs eagerly"):
        _same_results(graphed.predict(image, score_threshold=0.05), want)
    assert captures == ["decoding", "forward"], "the decoding graph is not tried again"
    assert not graphed.cuda_graphs and "forward runs eagerly" in str(graphed.cuda_graphs_note)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graphs_replay_the_eager_forward(precision: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replayed graphs give the eager forward's outputs for each input shape and task set (one graph each,
    the oldest dropped past MAX_GRAPHS), outputs stay valid after the next call, and a model with
    deformable convolutions is refused (runs eagerly) with the reason. cuDNN's deterministic algorithms:
    the transposed convs' fastest may add with atomics, in another order each run."""
    from mcn_ros.model import cuda_graphs

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)

    torch.manual_seed(0)
    config = _graph_config()
    model = MultitaskCenterNet(config).eval()
    eager = Predictor(model, config, device="cuda", precision=precision)
    graphed = Predictor(model, config, device="cuda", precision=precision, cuda_graphs=True)
    assert graphed.cuda_graphs and graphed.cuda_graphs_note is None
    everything = config.tasks
    cases = [((1, 128, 128), everything), ((2, 96, 128), everything), ((1, 128, 128), frozenset({"pose"}))]
    kept = []
    for (batch, h, w), tasks in cases * 2:  # the second pass replays
        images = torch.randn(batch, 3, h, w, device="cuda").contiguous(memory_format=torch.channels_last)
        want, got = eager.forward(images, tasks), graphed.forward(images, tasks)
        assert set(got) == set(want)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
        kept.append((got, want))
    assert graphed._graphed is not None and graphed._graphed.captured == len(cases)
    for got, want in kept:  # copies: not overwritten by later replays
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    small = cuda_graphs.GraphedCalls(graphed._eager_forward, max_graphs=2)
    for (batch, h, w), tasks in cases:
        small(torch.randn(batch, 3, h, w, device="cuda").contiguous(memory_format=torch.channels_last), tasks)
    assert small.captured == 2
    dcn_config = _graph_config("dla34", use_dcn=True)
    with pytest.warns(UserWarning, match="deformable convolutions"):
        refused = Predictor(
            MultitaskCenterNet(dcn_config).eval(), dcn_config, device="cuda", cuda_graphs=True
        )
    assert not refused.cuda_graphs
    plain_dla = _graph_config("dla34", use_dcn=False)
    assert Predictor(
        MultitaskCenterNet(plain_dla).eval(), plain_dla, device="cuda", cuda_graphs=True
    ).cuda_graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_decoding_replays_the_eager_predictions(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forward and decoding replayed from one graph give the eager predictor's results exactly: one graph per
    batch shape, task set and threshold, frames of other content through the same graph, and results
    returned earlier left as they were by later replays (cuDNN's deterministic algorithms, as above)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    torch.manual_seed(0)
    config = _graph_config()
    model = MultitaskCenterNet(config).eval()
    eager = Predictor(model, config, device="cuda", precision=precision)
    graphed = Predictor(
        model, config, device="cuda", precision=precision, cuda_graphs=True, graph_decoding=True
    )
    assert graphed.graph_decoding and graphed.cuda_graphs_note is None
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(3)]
    cases: list[tuple[list[np.ndarray], list[str] | None, float]] = [
        (frames[:1], None, 0.05),
        (frames[:2], None, 0.05),
        (frames[:1], ["pose"], 0.05),
        (frames[:1], None, 0.2),
    ]
    kept = []
    for images, tasks, threshold in cases * 2:  # the second pass replays
        want = eager.predict(images, tasks, score_threshold=threshold, pose_score_threshold=threshold)
        got = graphed.predict(images, tasks, score_threshold=threshold, pose_score_threshold=threshold)
        for a, b in zip(got, want, strict=True):
            _same_results(a, b)
        kept.append((got, want))
    assert graphed._graphed_decoding is not None and graphed._graphed_decoding.captured == len(cases)
    assert graphed._graphed is not None and graphed._graphed.captured == 0, "predict used one graph"
    for frame in frames:  # new content, the first case's graph
        want_frame = eager.predict(frame, score_threshold=0.05, pose_score_threshold=0.05)
        _same_results(graphed.predict(frame, score_threshold=0.05, pose_score_threshold=0.05), want_frame)
    for got, want in kept:
        for a, b in zip(got, want, strict=True):
            _same_results(a, b)
    assert any(len(r.detections or ()) > 0 for got, _ in kept for r in got), "something was detected"
    assert graphed.graph_decoding and graphed._graphed_decoding.captured == len(cases)
