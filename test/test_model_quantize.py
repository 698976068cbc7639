"""Int8: the calibration CLI writes a checked graph; the onnxruntime backend runs it, cut to the tasks
asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from needs import onnx_modules
from nodetools import camera_frames, make_weights

from mcn_ros.model.backends import fold_batch_norms
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.quantize import (
    ChannelsLastOutput,
    QuantizeError,
    SpaceToDepthConv,
    SubPixelUpsample,
    default_int8_path,
    image_files,
    load_int8_graph,
    main,
    model_fingerprint,
    network_input,
    with_channels_last_outputs,
    with_space_to_depth_stem,
    with_subpixel_upsampling,
)
from mcn_ros.model.weights import load_weights

onnx, _ = onnx_modules()


@pytest.fixture(scope="module")
def quantised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Weights, their int8 graph beside them (the CLI's default place) and what the CLI printed."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("int8")
    weights = make_weights(folder / "model.safetensors", use_dcn=False)
    images = camera_frames(folder / "frames", 6)
    (images / "broken.jpg").write_bytes(b"not a jpeg")  # skipped, counted
    (images / "notes.txt").write_text("not an image")  # not a calibration file at all
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--weights", str(weights), "--images", str(images)]) == 0
    return weights, default_int8_path(weights), printed.getvalue()


def test_the_graph_is_int8_and_says_what_it_came_from(quantised: tuple[Path, Path, str]) -> None:
    weights, graph_path, printed = quantised
    assert graph_path == weights.parent / "model.int8.onnx" and graph_path.is_file()
    assert "calibrated on 6 images (1 unreadable, skipped)" in printed
    graph = onnx.load(str(graph_path))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # No int8 transposed conv in ONNX Runtime: the up-path runs as int8 convs with their ReLUs fused and a
    # pixel shuffle of reshapes and transposes (no float DepthToSpace, no float ReLU after it).
    assert not ops & {"ConvTranspose", "DepthToSpace", "Relu"}, ops
    # Each shuffle step reads a dequantised tensor and is quantised again with the same scale and zero
    # point: ONNX Runtime drops the pair and moves the uint8 values.
    consumers: dict[str, list[str]] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    producer_of = {output: node for node in graph.graph.node for output in node.output}
    shuffle = [node for node in graph.graph.node if node.op_type in ("Reshape", "Transpose")]
    assert len(shuffle) >= 3 * 3, [node.name for node in shuffle]  # 3 upsamplings, 3 steps each at least
    for node in shuffle:
        before = producer_of[node.input[0]]
        assert before.op_type == "DequantizeLinear" and consumers[node.output[0]] == ["QuantizeLinear"], node
        after = next(
            n for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0]
        )
        assert list(after.input[1:]) == list(before.input[1:]), node.name
    # The image's conv reads 2x2 blocks of pixels as channels (one SpaceToDepth of the input, then int8).
    (blocks,) = [node for node in graph.graph.node if node.op_type == "SpaceToDepth"]
    assert list(blocks.input) == ["images"] and consumers[blocks.output[0]] == ["QuantizeLinear"]
    # The shuffle's sizes come from the sub-pixel conv's input, which a conv reads anyway: a Shape of the
    # conv's output made ONNX Runtime keep an NCHW float copy of it.
    shapes = [node for node in graph.graph.node if node.op_type == "Shape"]
    assert shapes
    for node in shapes:
        assert "Conv" in consumers[node.input[0]], node.input[0]
    # The heads' last convs write the outputs in float (a quantised output keeps ~200 values: ties, steps):
    # a matrix product over the channels of the uint8 activation and int8 weights with the bias (one ONNX
    # Runtime MatMulIntegerToFloat, no separate add), written channels-last (the metadata says so, and the
    # backend hands decoding NCHW-shaped views); the convs before them are int8.
    outputs = {output.name for output in graph.graph.output}
    producers = {node.output[0]: node for node in graph.graph.node}
    initialisers = {tensor.name: tensor for tensor in graph.graph.initializer}
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    assert sorted(metadata["mcn_channels_last_outputs"].split(",")) == sorted(outputs)
    model, _, _ = load_weights(weights)
    with torch.inference_mode():
        channels = {name: value.shape[1] for name, value in model.eval()(torch.zeros(1, 3, 64, 64)).items()}
    for output in graph.graph.output:
        product = producers[output.name]
        assert (product.domain, product.op_type) == ("com.microsoft", "MatMulIntegerToFloat"), output.name
        activation, matrix, _, _, _, _, bias = product.input
        assert producers[activation].op_type == "QuantizeLinear", output.name
        assert initialisers[matrix].data_type == onnx.TensorProto.INT8, output.name
        assert initialisers[bias].data_type == onnx.TensorProto.FLOAT, output.name
        assert list(initialisers[bias].dims) == [channels[output.name]], output.name
        dims = output.type.tensor_type.shape.dim
        assert [d.dim_value for d in dims][3] == channels[output.name], (output.name, dims)  # [B, H, W, C]
    float_constants = {t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    bias_adds = [n.name for n in graph.graph.node if n.op_type == "Add" and float_constants & set(n.input)]
    assert "MatMul" not in {n.op_type for n in graph.graph.node} and not bias_adds, bias_adds
    int8_weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) > len(outputs)
    assert metadata["mcn_precision"] == "int8"
    assert metadata["mcn_model_sha256"] == model_fingerprint(model)
    assert json.loads(metadata["mcn_calibration"])["images"] == 6
    assert metadata["mcn_tasks"] == "detection,pose,segmentation" and "input_size" in metadata["mcn_config"]
    assert sorted(metadata["mcn_outputs"].split(",")) == sorted(o.name for o in graph.graph.output)
    assert json.loads(metadata["mcn_validation"]) is None  # no validation set given


@pytest.mark.usefixtures("int8_cpu")
def test_int8_runs_close_to_fp32_and_only_the_asked_heads(quantised: tuple[Path, Path, str]) -> None:
    weights, _, _ = quantised
    int8 = Predictor.from_weights(weights, device="cpu", precision="int8", backend="onnxruntime")
    fp32 = Predictor.from_weights(weights, device="cpu", backend="onnxruntime")
    assert int8.precision.name == "int8" and fp32.precision.name == "fp32"
    frames = sorted((weights.parent / "frames").glob("*.png"))[:2]
    batch = torch.from_numpy(np.concatenate([network_input(cv2.imread(str(p)), int8.config) for p in frames]))
    want, got = fp32.forward(batch, fp32.tasks), int8.forward(batch, int8.tasks)
    assert sorted(got) == sorted(want)
    for name in want:  # the graph writes them channels-last: NCHW-shaped views of that, as fp32's shapes
        assert got[name].shape == want[name].shape and got[name].permute(0, 2, 3, 1).is_contiguous(), name
    for name in want:
        error = float((got[name] - want[name]).norm() / want[name].norm())
        assert error < 0.1, (name, error)  # int8 rounding, not another model
    assert float((got["heatmap"] - want["heatmap"]).abs().max()) > 0  # int8 did run: not the fp32 graph
    for name in ("heatmap", "size", "segmentation"):  # float outputs: more values than uint8 could hold
        assert want[name].unique().numel() > 512, name
        assert got[name].unique().numel() > 512, name  # (int8 weights' sums: fewer than fp32's, not 256)
    detection_only = int8.forward(batch, ["detection"])
    assert sorted(detection_only) == sorted(fp32.forward(batch, ["detection"]))
    assert int8._onnx is not None
    session, names = int8._onnx.session(["detection"])
    assert sorted(o.name for o in session.get_outputs()) == sorted(names) == sorted(detection_only)
    image = cv2.imread(str(frames[0]))
    results = int8.predict(image, color_order="bgr", score_threshold=0.0)
    assert results.segmentation is not None and results.segmentation.shape == image.shape[:2]


@pytest.mark.usefixtures("int8_cpu")
def test_a_missing_or_foreign_graph_is_refused_with_the_fix(
    quantised: tuple[Path, Path, str], tmp_path: Path
) -> None:
    weights, graph_path, _ = quantised
    other = make_weights(tmp_path / "other.safetensors", seed=1, use_dcn=False)
    with pytest.raises(
        QuantizeError, match=r"int8 graph not found: .*other\.int8\.onnx.*mcn_ros\.model\.quantize"
    ):
        Predictor.from_weights(other, device="cpu", precision="int8", backend="onnxruntime")
    with pytest.raises(QuantizeError, match="calibrated from other weights"):
        Predictor.from_weights(other, "cpu", "int8", backend="onnxruntime", int8_graph=graph_path)
    loaded = onnx.load(str(graph_path))  # a graph handed over in memory is checked as a file is
    with pytest.raises(QuantizeError, match="the int8 graph given was calibrated from other weights"):
        Predictor.from_weights(other, "cpu", "int8", backend="onnxruntime", int8_graph=loaded)
    model, _, _ = load_weights(weights)
    assert load_int8_graph(graph_path, model) is not None
    (tmp_path / "garbage.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(QuantizeError, match=r"not a readable ONNX file|not an int8 graph"):
        load_int8_graph(tmp_path / "garbage.onnx", model)


def test_cli_errors_are_one_line_and_exit_2(
    quantised: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights, _, _ = quantised
    assert main(["--weights", str(weights), "--images", str(tmp_path / "none")]) == 2
    assert "error: image folder not found" in capsys.readouterr().err
    before = weights.read_bytes()
    frames = str(weights.parent / "frames")
    assert main(["--weights", str(weights), "--images", frames, "--output", str(weights)]) == 2
    assert "is the weights file itself" in capsys.readouterr().err and weights.read_bytes() == before
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"broken")
    output = tmp_path / "out.int8.onnx"
    assert main(["--weights", str(weights), "--images", str(tmp_path / "bad"), "--output", str(output)]) == 2
    assert "none of the 1 calibration images could be read" in capsys.readouterr().err
    assert not output.exists()
    deformable = make_weights(tmp_path / "dcn.safetensors", use_dcn=True)
    assert main(["--weights", str(deformable), "--images", str(weights.parent / "frames")]) == 2
    assert "uses deformable convolutions (use_dcn: true)" in capsys.readouterr().err


def test_image_files_are_spread_over_the_folder(tmp_path: Path) -> None:
    folder = camera_frames(tmp_path / "many", 10, (32, 32))
    picked = [p.name for p in image_files(folder, 4)]
    assert picked == ["frame_000.png", "frame_003.png", "frame_006.png", "frame_009.png"]
    assert len(image_files(folder)) == 10


@pytest.mark.usefixtures("int8_cpu")
def test_validation_scores_fp32_and_int8_with_pycocotools(
    quantised: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcn_training.synthetic import generate_dataset

    weights, _, _ = quantised
    written = generate_dataset(tmp_path / "val", 4, 3, (64, 64), "val")
    output = tmp_path / "validated.int8.onnx"
    status = main([
        "--weights", str(weights), "--images", str(weights.parent / "frames"), "--output", str(output),
        "--val-annotations", str(written["instances"]), str(written["keypoints"]),
        "--val-images", str(written["images"]),
    ])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "| metric (%) | fp32 | int8 |" in printed and "| mIoU |" in printed and "| kp_AP |" in printed
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    scored = json.loads(metadata["mcn_validation"])
    for kind in ("fp32", "int8"):
        assert all(isinstance(scored[kind][key], float) for key in ("bbox_AP", "kp_AP", "mIoU")), scored
        assert 0 < scored[kind]["mIoU"] <= 100  # background is found even by a random model


@pytest.mark.parametrize(
    ("bias", "norm", "relu"),
    [(False, True, False), (True, True, False), (True, False, False), (False, True, True)],
)
def test_subpixel_upsample_is_the_transposed_conv(bias: bool, norm: bool, relu: bool) -> None:
    """A 3x3 conv to 4x the channels + pixel shuffle computes the stride-2 4x4 transposed conv (and its
    BatchNorm, and the ReLU after them), borders included, on a non-square map."""
    torch.manual_seed(4)
    up = torch.nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1, bias=bias)
    bn = torch.nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        want = bn(up(x)) if norm else up(x)
        want = want.relu() if relu else want
        got = SubPixelUpsample(up, bn if norm else None, relu)(x)
    assert got.shape == (2, 5, 10, 14)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stride-2 4x4"):
        SubPixelUpsample(torch.nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1))


@pytest.mark.parametrize(
    ("kernel", "bias", "channels"), [(7, True, 3), (7, False, 3), (3, True, 1), (5, False, 4)]
)
def test_space_to_depth_conv_is_the_stride_2_conv(kernel: int, bias: bool, channels: int) -> None:
    torch.manual_seed(kernel)
    conv = torch.nn.Conv2d(channels, 8, kernel, stride=2, padding=kernel // 2, bias=bias)
    blocks = SpaceToDepthConv(conv)
    assert blocks.conv.in_channels == 4 * channels and blocks.conv.stride == (1, 1)
    for height, width in ((32, 48), (2, 6), (96, 128)):
        x = torch.randn(2, channels, height, width)
        with torch.no_grad():
            torch.testing.assert_close(blocks(x), conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="even height and width, got 31x48"):
        blocks(torch.randn(1, channels, 31, 48))


def test_only_plain_stride_2_convs_become_space_to_depth() -> None:
    from mcn_ros.model.quantize import space_to_depth_convertible

    conv = torch.nn.Conv2d
    assert space_to_depth_convertible(conv(3, 8, 7, stride=2, padding=3))
    for other in (
        conv(3, 8, 7, stride=1, padding=3), conv(3, 8, 7, stride=2, padding=2),
        conv(3, 8, 4, stride=2, padding=2), conv(4, 8, 3, stride=2, padding=1, groups=2),
        conv(3, 8, 3, stride=2, padding=2, dilation=2), torch.nn.ConvTranspose2d(3, 8, 3, stride=2),
        conv(3, 8, 3, stride=2, padding=1, dilation=2),
        conv(3, 8, 3, stride=2, padding=1, padding_mode="reflect"),
    ):  # fmt: skip
        assert not space_to_depth_convertible(other), other
    with pytest.raises(ValueError, match="not a stride-2 odd square conv"):
        SpaceToDepthConv(conv(3, 8, 7, stride=1, padding=3))
    # A model: only the wide conv over the image's few channels changes (a 3x3 one would do 4x the
    # multiply-adds as a block conv); the original stays as it was.
    model = torch.nn.Sequential(
        conv(3, 8, 7, stride=2, padding=3), torch.nn.ReLU(), conv(8, 8, 3, 2, 1), conv(3, 8, 3, 2, 1)
    )
    converted = with_space_to_depth_stem(model)
    assert [type(m) for m in converted] == [SpaceToDepthConv, torch.nn.ReLU, torch.nn.Conv2d, torch.nn.Conv2d]
    assert type(model[0]) is torch.nn.Conv2d


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, as export_onnx uses it
def test_space_to_depth_exports_as_the_onnx_operator(tmp_path: Path) -> None:
    """The blocks become ONNX's SpaceToDepth, and ONNX Runtime's result is the conv's."""
    _, ort = onnx_modules()
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3)
    path = tmp_path / "blocks.onnx"
    x = torch.randn(1, 3, 64, 96)
    torch.onnx.export(
        SpaceToDepthConv(conv), (x,), str(path), input_names=["x"], dynamo=False,
        dynamic_axes={"x": {2: "h", 3: "w"}},
    )  # fmt: skip
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops[0] == "SpaceToDepth" and "Transpose" not in ops, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in ((64, 96), (32, 160)):
        x = torch.randn(1, 3, *size)
        (got,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, conv(x).numpy(), rtol=1e-4, atol=1e-4)


def test_channels_last_output_is_the_1x1_conv() -> None:
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(6, 5, 1)
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        got = ChannelsLastOutput(conv)(x)
        torch.testing.assert_close(got, conv(x), rtol=1e-5, atol=1e-6)
    assert got.shape == (2, 5, 5, 7) and got.permute(0, 2, 3, 1).is_contiguous()
    with pytest.raises(ValueError, match="1x1"):
        ChannelsLastOutput(torch.nn.Conv2d(6, 5, 3))


def test_the_model_as_the_int8_graph_exports_it_computes_the_same(tmp_path: Path) -> None:
    """Sub-pixel upsampling and channels-last output products: the same outputs as the model's own."""
    model, config, _ = load_weights(make_weights(tmp_path / "m.safetensors", use_dcn=False))
    for module in model.modules():  # BatchNorms that do something
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    converted = with_channels_last_outputs(with_subpixel_upsampling(model))
    kinds = [type(m) for m in converted.modules()]
    assert torch.nn.ConvTranspose2d not in kinds and SubPixelUpsample in kinds
    upsamplings = [m for m in converted.modules() if isinstance(m, SubPixelUpsample)]
    assert all(m.relu for m in upsamplings)  # each took the BatchNorm and the ReLU after it
    assert kinds.count(ChannelsLastOutput) == len(model(torch.zeros(1, 3, 64, 64), config.tasks))
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules()), "the original is unchanged"
    assert ChannelsLastOutput not in [type(m) for m in model.modules()]
    stem = with_space_to_depth_stem(fold_batch_norms(converted))  # as quantize_graph exports it
    assert [type(m) for m in stem.modules()].count(SpaceToDepthConv) == 1  # the image's conv, nothing else
    assert SpaceToDepthConv not in kinds
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        want, got, stem_got = model.eval()(x, config.tasks), converted(x, config.tasks), stem(x, config.tasks)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stem_got[name], want[name], rtol=1e-4, atol=1e-4)


def test_the_heads_last_convs_stay_float_behind_slices_and_resizes(tmp_path: Path) -> None:
    """The lighter configs' heads share one 1x1 conv per task, sliced into its outputs, and a segmentation
    at stride 2 is resized from its conv: those convs stay float NCHW convs, not channels-last products (only
    a conv writing an output as it is becomes one), and stay in float too (only the nodes writing an output
    did, Slice and Resize, so the convs were quantised and a heatmap, sizes and offsets shared one range)."""
    import dataclasses

    from mcn_ros.model.backends import CHANNELS_LAST_OUTPUTS, OnnxRuntimeForward
    from mcn_ros.model.config import ModelConfig
    from mcn_ros.model.mcn import MultitaskCenterNet
    from mcn_ros.model.quantize import quantize_graph

    config = ModelConfig.from_yaml(
        Path(__file__).parents[1] / "config/models/resnet18_det80_seg80_pose_light_512.yaml"
    )
    assert config.shared_head_conv and config.segmentation is not None
    segmentation = dataclasses.replace(config.segmentation, output_stride=2)
    config = dataclasses.replace(config, input_size=(64, 64), segmentation=segmentation)
    torch.manual_seed(0)
    model = MultitaskCenterNet(config).eval()
    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        files.append(tmp_path / f"frame{i}.png")
        cv2.imwrite(str(files[-1]), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    model_proto, read = quantize_graph(model, config, files)
    assert read == 2
    assert {p.key: p.value for p in model_proto.metadata_props}[CHANNELS_LAST_OUTPUTS] == ""
    graph = model_proto.graph
    producers = {output: node for node in graph.node for output in node.output}
    initialisers = {tensor.name: tensor for tensor in graph.initializer}
    tails = {}
    for output in graph.output:
        node = producers[output.name]
        while node.op_type != "Conv":
            assert node.op_type in {"Slice", "Resize"}, (output.name, node.op_type)  # no Q/DQ on the way
            node = producers[node.input[0]]
        assert initialisers[node.input[1]].data_type == onnx.TensorProto.FLOAT, output.name
        tails[output.name] = node.name
    assert len(set(tails.values())) < len(tails), "some outputs share a conv (the lighter heads)"
    outputs = OnnxRuntimeForward(model, config, graph=model_proto)(torch.zeros(1, 3, 64, 96), config.tasks)
    with torch.inference_mode():
        want = model(torch.zeros(1, 3, 64, 96), config.tasks)
    for name, value in outputs.items():
        assert value.shape == want[name].shape and value.is_contiguous(), name  # written NCHW


def test_float_tail_runs_back_through_the_channels_last_product() -> None:
    """ChannelsLastOutput's export (matrix product, bias add, transpose to NCHW) stays float back to the
    product; an add of two activations is no bias: the walk stops there."""
    from onnx import TensorProto, helper

    from mcn_ros.model.quantize import float_tail_nodes

    bias = helper.make_tensor("bias", TensorProto.FLOAT, [3], [0.0, 1.0, 2.0])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["product"], name="product"),
        helper.make_node("Add", ["bias", "product"], ["biased"], name="bias_add"),
        helper.make_node("Transpose", ["biased"], ["out"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Add", ["a", "x"], ["sum"], name="sum"),
        helper.make_node("Transpose", ["sum"], ["other"], name="other_order", perm=[0, 2, 1, 3]),
    ]
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 3])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4]),
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 4, 4, 3]),
            helper.make_tensor_value_info("other", TensorProto.FLOAT, [1, 4, 4, 3]),
        ],
        initializer=[bias, helper.make_tensor("w", TensorProto.FLOAT, [3, 3], [1.0] * 9)],
    )
    assert float_tail_nodes(graph) == ["to_nchw", "bias_add", "product", "sum", "other_order"]


def test_output_transposes_are_stripped_only_where_nothing_else_reads_them() -> None:
    from onnx import TensorProto, helper

    from mcn_ros.model.quantize import strip_output_transposes

    nodes = [
        helper.make_node("Relu", ["x"], ["kept_nhwc"], name="kept"),
        helper.make_node("Transpose", ["kept_nhwc"], ["kept_out"], name="t1", perm=[0, 3, 1, 2]),
        helper.make_node("Relu", ["x"], ["read_nhwc"], name="read"),
        helper.make_node("Transpose", ["read_nhwc"], ["read_out"], name="t2", perm=[0, 3, 1, 2]),
        helper.make_node("Neg", ["read_out"], ["negated"], name="neg"),  # reads the NCHW output
    ]
    nchw = [1, 2, 3, 4]
    model_proto = helper.make_model(
        helper.make_graph(
            nodes,
            "strip",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 2])],
            [
                helper.make_tensor_value_info(name, TensorProto.FLOAT, nchw)
                for name in ("kept_out", "read_out", "negated")
            ],
        )
    )
    assert strip_output_transposes(model_proto) == ["kept_out"]
    producers = {node.output[0]: node for node in model_proto.graph.node}
    assert producers["kept_out"].op_type == "Relu" and producers["read_out"].op_type == "Transpose"
    dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model_proto.graph.output}
    assert dims == {"kept_out": [1, 3, 4, 2], "read_out": nchw, "negated": nchw}
    onnx.checker.check_model(model_proto)


def test_a_graph_without_the_layout_key_is_read_as_written(tmp_path: Path) -> None:
    """Graphs made before the channels-last outputs (no ``mcn_channels_last_outputs``) write NCHW: the
    backend hands them on as they are (a float graph of the same model stands in for one)."""
    from mcn_ros.model.backends import OnnxRuntimeForward, export_onnx

    model, config, _ = load_weights(make_weights(tmp_path / "m.safetensors", use_dcn=False))
    data, _ = export_onnx(model.eval(), config.tasks)
    forward = OnnxRuntimeForward(model, config, graph=onnx.load_from_string(data))
    assert forward.channels_last == frozenset()
    x = torch.randn(1, 3, 64, 96)
    got = forward(x, config.tasks)
    with torch.inference_mode():
        want = model(x, config.tasks)
    for name in want:
        assert got[name].is_contiguous(), name
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)


def test_float_tail_runs_back_through_an_argmax_to_the_conv() -> None:
    """A graph that ends in a class map (as ultralytics' semantic export: conv, resize, argmax, cast) keeps
    all of that tail in float, as the MCN's heads: the function quantises the YOLO peers' files too."""
    from onnx import TensorProto, helper

    from mcn_ros.model.quantize import float_tail_nodes

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["logits"], name="classifier"),
        helper.make_node("Resize", ["logits", "", "scales"], ["up"], name="upsample"),
        helper.make_node("ArgMax", ["up"], ["ids"], name="argmax", axis=1, keepdims=0),
        helper.make_node("Cast", ["ids"], ["classes"], name="to_uint8", to=TensorProto.UINT8),
        helper.make_node("Relu", ["x"], ["features"], name="before"),
    ]
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("classes", TensorProto.UINT8, [1, 64, 64])],
    )
    assert float_tail_nodes(graph) == ["to_uint8", "argmax", "upsample", "classifier"]


def test_product_biases_fuse_only_where_the_operator_computes_the_same() -> None:
    """A bias added to a product of a dequantised activation and dequantised int8 weights (one scale, or
    one per output column, given by axis 1 or by ONNX's default axis; any zero points) becomes one
    MatMulIntegerToFloat with the bias; ONNX Runtime's outputs do not change. Square weights scaled per row
    (only the axis tells them from per-column ones), a product read elsewhere and a bias that is not one value
    per column stay as they are; a dequantisation still read by another node or by the graph's outputs
    stays. The products have no names: the fused nodes still get different ones."""
    from onnx import TensorProto, helper

    from mcn_ros.model.quantize import fuse_product_biases

    rng = np.random.default_rng(0)
    size = 6  # the activation's channels and the weights' columns: square weights

    # Weights within +-63: without VNNI, ONNX Runtime's uint8 x int8 kernel sums pairs of products in int16
    # (vpmaddubsw), which saturates past 32767 (255 x 127 x 2 does; 255 x 63 x 2 does not), and the fused
    # outputs would then differ from the float product's on an AVX2 CPU for reasons not the fusion's.
    def int8(name: str, shape: list[int], low: int = -63, high: int = 64) -> Any:
        return helper.make_tensor(name, TensorProto.INT8, shape, rng.integers(low, high, shape).ravel())

    def floats(name: str, shape: list[int], low: float = 0.01, high: float = 0.1) -> Any:
        return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.uniform(low, high, shape).ravel())

    def dequantise(kind: str, **axis: int) -> Any:
        return helper.make_node("DequantizeLinear", [f"w_{kind}", f"s_{kind}", f"z_{kind}"], [f"d_{kind}"],
                                name=f"dq_{kind}", **axis)  # fmt: skip

    def product(kind: str, weights: str, bias: str = "bias", bias_first: bool = False) -> list[Any]:
        summed = [bias, f"p_{kind}"] if bias_first else [f"p_{kind}", bias]
        return [helper.make_node("MatMul", ["xd", weights], [f"p_{kind}"]),  # unnamed
                helper.make_node("Add", summed, [f"out_{kind}"])]  # fmt: skip

    initialisers = [
        floats("a_scale", []), helper.make_tensor("a_zero", TensorProto.UINT8, [], [128]),
        int8("w_col", [size, size]), floats("s_col", [size]), int8("z_col", [size], -3, 4),
        int8("w_default", [size, size]), floats("s_default", [size]), int8("z_default", [size], -3, 4),
        int8("w_tensor", [size, size]), floats("s_tensor", []), int8("z_tensor", [], 0, 1),
        int8("w_row", [size, size]), floats("s_row", [size]), int8("z_row", [size], 0, 1),
        int8("w_out", [size, size]), floats("s_out", []), int8("z_out", [], 0, 1),
        floats("bias", [size], -1.0, 1.0), floats("bias_2d", [1, size], -1.0, 1.0),
    ]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zero"], ["xd"], name="dq"),
        dequantise("col", axis=1), dequantise("default"), dequantise("tensor"), dequantise("row", axis=0),
        dequantise("out"),
        *product("col", "d_col"), *product("default", "d_default", bias_first=True),
        *product("tensor", "d_tensor"), *product("row", "d_row"), *product("read", "d_tensor"),
        *product("2d", "d_col", bias="bias_2d"), *product("out", "d_out"),
    ]  # fmt: skip
    names = ["out_col", "out_default", "out_tensor", "out_row", "out_read", "p_read", "out_2d", "out_out"]
    model_proto = helper.make_model(
        helper.make_graph(
            nodes, "biases", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, size])],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4, 5, size]) for name in names]
            + [helper.make_tensor_value_info("d_out", TensorProto.FLOAT, [size, size])],
            initializer=initialisers,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )  # fmt: skip
    original = model_proto.SerializeToString()
    assert fuse_product_biases(model_proto) == ["out_col", "out_default", "out_tensor", "out_out"]
    assert {(o.domain, o.version) for o in model_proto.opset_import} == {("", 17), ("com.microsoft", 1)}
    onnx.checker.check_model(model_proto)
    producers = {node.output[0]: node for node in model_proto.graph.node}
    fused = [producers[name] for name in ("out_col", "out_default", "out_tensor", "out_out")]
    assert {(node.domain, node.op_type) for node in fused} == {("com.microsoft", "MatMulIntegerToFloat")}
    assert [node.input[-1] for node in fused] == ["bias"] * 4 and len({node.name for node in fused}) == 4
    left = ("out_row", "out_read", "out_2d")
    assert {name: producers[name].op_type for name in left} == dict.fromkeys(left, "Add")
    # The column weights' dequantisation is still read by the 2-D bias's product, the tensor one's by the
    # product read elsewhere, the last one's by the graph's outputs, the activation's by all three left;
    # only the default-axis weights' went with their product.
    kept = {node.name for node in model_proto.graph.node if node.op_type == "DequantizeLinear"}
    assert kept == {"dq", "dq_col", "dq_tensor", "dq_row", "dq_out"}
    x = rng.normal(0.0, 2.0, (1, 4, 5, size)).astype(np.float32)
    run = {
        kind: _onnx_runtime_outputs(data, x) for kind, data in (("before", original), ("after", model_proto))
    }
    for before, after in zip(run["before"], run["after"], strict=True):  # the same up to float rounding
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6 * float(np.abs(before).max()))


def test_products_without_an_onnx_runtime_kernel_or_in_a_graph_with_subgraphs_are_left() -> None:
    """An int8 activation times uint8 weights has no MatMulIntegerToFloat kernel on the CPU, nor has a float16
    scale with a float32 bias; an activation scaled per channel is not what the operator's 1-D activation
    scale means; a graph with a subgraph (whose reads of the outer graph are not counted) is left whole."""
    from onnx import TensorProto, helper

    from mcn_ros.model.quantize import fuse_product_biases

    def graph(
        activation: int, weights: int, scale: int, subgraph: bool = False, per_channel: bool = False
    ) -> Any:
        shape = [2] if per_channel else []  # the activation quantised per channel (axis 1 of [3, 2])
        nodes = [
            helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zero"], ["xd"], name="dq"),
            helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"], name="dq_w"),
            helper.make_node("MatMul", ["xd", "wd"], ["p"], name="product"),
            helper.make_node("Add", ["p", "bias"], ["out"], name="add"),
        ]
        if subgraph:
            body = helper.make_graph(
                [helper.make_node("Identity", ["p"], ["inner"])], "body", [],
                [helper.make_tensor_value_info("inner", TensorProto.FLOAT, [3, 2])],
            )  # fmt: skip
            nodes.append(helper.make_node("If", ["flag"], ["chosen"], then_branch=body, else_branch=body))
        return helper.make_model(
            helper.make_graph(
                nodes, "kinds", [helper.make_tensor_value_info("xq", activation, [3, 2])],
                [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 2])],
                initializer=[
                    helper.make_tensor("a_scale", scale, shape, [0.1] * (2 if per_channel else 1)),
                    helper.make_tensor("a_zero", activation, shape, [3] * (2 if per_channel else 1)),
                    helper.make_tensor("w", weights, [2, 2], [1, 2, 3, 4]),
                    helper.make_tensor("s", scale, [], [0.5]),
                    helper.make_tensor("z", weights, [], [0]),
                    helper.make_tensor("bias", TensorProto.FLOAT, [2], [1, 2]),
                    helper.make_tensor("flag", TensorProto.BOOL, [], [True]),
                ],
            ),
            opset_imports=[helper.make_opsetid("", 17)],
        )  # fmt: skip

    uint8, int8 = TensorProto.UINT8, TensorProto.INT8
    assert fuse_product_biases(graph(uint8, int8, TensorProto.FLOAT)) == ["out"]  # the control
    assert fuse_product_biases(graph(int8, uint8, TensorProto.FLOAT)) == []
    assert fuse_product_biases(graph(uint8, int8, TensorProto.FLOAT16)) == []
    assert fuse_product_biases(graph(uint8, int8, TensorProto.FLOAT, subgraph=True)) == []
    assert fuse_product_biases(graph(uint8, int8, TensorProto.FLOAT, per_channel=True)) == []


def test_a_fused_product_drops_the_dequantisations_only_it_read() -> None:
    from onnx import TensorProto, helper

    from mcn_ros.model.quantize import fuse_product_biases

    nodes = [
        helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zero"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"], name="dq_w"),
        helper.make_node("MatMul", ["xd", "wd"], ["p"], name="product"),
        helper.make_node("Add", ["p", "bias"], ["out"], name="add"),
    ]
    initialisers = [
        helper.make_tensor("a_scale", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("a_zero", TensorProto.UINT8, [], [3]),
        helper.make_tensor("w", TensorProto.INT8, [2, 2], [1, -2, 3, -4]),
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("z", TensorProto.INT8, [], [0]),
        helper.make_tensor("bias", TensorProto.FLOAT, [2], [1.0, -1.0]),
    ]
    model_proto = helper.make_model(
        helper.make_graph(
            nodes, "one", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [3, 2])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 2])], initializer=initialisers,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )  # fmt: skip
    assert fuse_product_biases(model_proto) == ["out"]
    assert [node.op_type for node in model_proto.graph.node] == ["MatMulIntegerToFloat"]
    x = np.array([[3, 13], [0, 255], [7, 3]], dtype=np.uint8)
    (out,) = _onnx_runtime_outputs(model_proto.SerializeToString(), x, "xq")
    want = (0.1 * (x.astype(np.float32) - 3)) @ (0.5 * np.array([[1, -2], [3, -4]], np.float32)) + [1.0, -1.0]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-5)


def _onnx_runtime_outputs(model: Any, x: np.ndarray, name: str = "x") -> list[np.ndarray]:
    """A one-threaded ONNX Runtime CPU session's outputs of ``model`` (a ModelProto or its bytes) on ``x``."""
    _, ort = onnx_modules()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return list(session.run(None, {name: x}))


@pytest.fixture
def no_int8_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU without int8 dot products, whatever this one has (the reverse of conftest's ``int8_cpu``):
    precision int8 falls back to fp32 and quantize skips validation."""
    from mcn_ros.model import precision

    found = precision.cpu_flags() - set(precision.NATIVE_INT8_FLAGS)
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: found)


def _with_metadata(graph: Any, **changes: str | None) -> Any:
    """A copy of ``graph`` (a ModelProto) with metadata keys set to new values (None: removed)."""
    changed = onnx.ModelProto()
    changed.CopyFrom(graph)
    kept = [(p.key, p.value) for p in changed.metadata_props if p.key not in changes]
    del changed.metadata_props[:]
    for key, value in [*kept, *((k, v) for k, v in changes.items() if v is not None)]:
        changed.metadata_props.add(key=key, value=value)
    return changed


def _config_yaml(graph: Any, **changes: Any) -> str:
    """The graph's recorded model config (``mcn_config``) with top-level ``changes`` (a dict value is
    merged into the section)."""
    import yaml

    data = yaml.safe_load({p.key: p.value for p in graph.metadata_props}["mcn_config"])
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return str(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.usefixtures("int8_cpu")
def test_a_graph_handed_over_in_memory_gets_the_checks_of_a_file(
    quantised: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """A ModelProto was checked only for a fingerprint it might not have: an fp32 export (of other weights
    or another config) ran as "int8"."""
    from mcn_ros.model.export import export

    weights, graph_path, _ = quantised
    other = make_weights(tmp_path / "other.safetensors", seed=1, use_dcn=False)
    export(other, tmp_path / "other.onnx")
    for given in (tmp_path / "other.onnx", onnx.load(str(tmp_path / "other.onnx"))):
        with pytest.raises(QuantizeError, match=r"not an int8 graph of mcn_ros\.model\.quantize"):
            Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=given)
    own = onnx.load(str(graph_path))
    unnamed = _with_metadata(own, mcn_model_sha256=None)
    with pytest.raises(QuantizeError, match=r"the int8 graph given: names no weights .*mcn_model_sha256"):
        Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=unnamed)
    fp32 = _with_metadata(own, mcn_precision=None)
    with pytest.raises(QuantizeError, match="no mcn_precision=int8"):
        Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=fp32)
    with pytest.raises(TypeError, match="a path or an onnx ModelProto"):
        Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=b"bytes")  # type: ignore[arg-type]
    assert (
        Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=own).precision.name
        == "int8"
    )


@pytest.mark.usefixtures("int8_cpu")
def test_the_graph_must_record_the_weights_config(quantised: tuple[Path, Path, str], tmp_path: Path) -> None:
    """The same tensors under another config (a segmentation output stride, class names) read other
    outputs: refused, every differing field named; what the caller sets at run time may differ."""
    weights, graph_path, _ = quantised
    own = onnx.load(str(graph_path))
    strided = _config_yaml(own, segmentation={"output_stride": 1, "classes": ["person", "truck"]})
    changed = _with_metadata(own, mcn_config=strided)
    onnx.save(changed, str(tmp_path / "strided.int8.onnx"))
    for given in (changed, tmp_path / "strided.int8.onnx"):
        with pytest.raises(QuantizeError) as raised:
            Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=given)
        message = str(raised.value)
        assert "under another model config" in message, message
        assert "segmentation.output_stride: 1 in the graph, 4 in the weights" in message, message
        assert "segmentation.classes: ['person', 'truck'] in the graph" in message, message
    run_time = _config_yaml(own, name="renamed", input_size=[128, 96], decode={"top_k": 7})
    accepted = _with_metadata(own, mcn_config=run_time)
    predictor = Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=accepted)
    assert predictor.precision.name == "int8"
    with pytest.raises(QuantizeError, match=r"records no model config \(no mcn_config\)"):
        Predictor.from_weights(
            weights, "cpu", "int8", backend="onnxruntime", int8_graph=_with_metadata(own, mcn_config=None)
        )
    with pytest.raises(QuantizeError, match=r"recorded model config \(mcn_config\) cannot be read"):
        Predictor.from_weights(
            weights, "cpu", "int8", backend="onnxruntime", int8_graph=_with_metadata(own, mcn_config="- [")
        )


@pytest.mark.usefixtures("no_int8_cpu")
def test_where_int8_falls_back_to_fp32_the_graph_is_still_checked(
    quantised: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """Without int8 dot products the run is fp32, but a graph of other weights or another config fails as
    it would on the deployment CPU, and the note says whether the graph was found."""
    weights, graph_path, _ = quantised
    with pytest.warns(
        UserWarning, match=r"running fp32; the int8 graph .*model\.int8\.onnx was found and matches"
    ):
        fine = Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime")
    assert fine.precision.name == "fp32" and "was found" in str(fine.precision.note)
    other = make_weights(tmp_path / "other.safetensors", seed=1, use_dcn=False)
    with pytest.raises(QuantizeError, match="calibrated from other weights"):
        Predictor.from_weights(other, "cpu", "int8", backend="onnxruntime", int8_graph=graph_path)
    strided = _with_metadata(
        onnx.load(str(graph_path)),
        mcn_config=_config_yaml(onnx.load(str(graph_path)), segmentation={"output_stride": 1}),
    )
    with pytest.raises(QuantizeError, match=r"segmentation\.output_stride: 1 in the graph, 4 in the weights"):
        Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=strided)
    with pytest.warns(
        UserWarning, match=r"other\.int8\.onnx was not found either: make it with .*mcn_ros\.model\.quantize"
    ):
        missing = Predictor.from_weights(other, "cpu", "int8", backend="onnxruntime")
    assert missing.precision.name == "fp32"
    model, config, _ = load_weights(weights)
    with pytest.warns(UserWarning, match=r"running fp32; no int8 graph was given"):
        Predictor(model, config, backend="onnxruntime", precision="int8")


@pytest.mark.usefixtures("no_int8_cpu")
def test_validation_inputs_are_checked_where_validation_is_skipped(
    quantised: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights, _, _ = quantised
    output = tmp_path / "out.int8.onnx"
    frames = str(weights.parent / "frames")
    base = ["--weights", str(weights), "--images", frames, "--output", str(output)]
    nowhere = str(tmp_path / "nonexistent")
    assert main([*base, "--val-annotations", nowhere, "--val-images", nowhere]) == 2
    assert f"error: validation annotations not found: {nowhere}" in capsys.readouterr().err
    (tmp_path / "instances.json").write_text("{}")
    assert main([*base, "--val-annotations", str(tmp_path / "instances.json"), "--val-images", nowhere]) == 2
    assert f"error: validation image folder not found: {nowhere}" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.usefixtures("int8_cpu")
def test_an_empty_int8_graph_means_the_one_beside_the_weights(
    quantised: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """The node's convention (config/mcn.yaml: empty = beside the weights), in from_weights too."""
    weights, _, _ = quantised
    for empty in ("", None):
        predictor = Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=empty)
        assert predictor.precision.name == "int8"
    with pytest.raises(QuantizeError, match=r"int8 graph .* is a directory: name the \.int8\.onnx file"):
        Predictor.from_weights(weights, "cpu", "int8", backend="onnxruntime", int8_graph=tmp_path)
    model, config, _ = load_weights(weights)
    with pytest.raises(QuantizeError, match="int8_graph is empty: name the graph file"):
        Predictor(model, config, backend="onnxruntime", precision="int8", int8_graph="")
