"""Int8 for the ONNX Runtime backend: a weights file's forward calibrated on your own camera images.

    python -m mcn_ros.model.quantize --weights model.safetensors --images DIR [--count 100]
        [--output model.int8.onnx] [--val-annotations instances.json --val-images DIR]

The forward is exported as :mod:`mcn_ros.model.export` exports it (BatchNorm folded, all the weights'
tasks; the up-path's transposed convs as the same maths in convs, :class:`SubPixelUpsample`) and quantised
by ONNX Runtime's own static quantisation (``onnxruntime.quantization``: QDQ format, int8 weights per output
channel, uint8 activations, MinMax ranges; the heads' last convs write float outputs):
the activation ranges come from running the fp32 graph on up to ``--count`` images of ``--images``
(JPEG/PNG/BMP, spread evenly over the sorted file names), each letterboxed as the node letterboxes it.
Calibrate on frames of the cameras the node will see; the ranges are what int8 keeps of the scene.

The file goes beside the weights by default (``model.int8.onnx``, where the node looks for it) and records,
in its ONNX metadata, the model config, the calibration (images, folder), the outputs it writes
channels-last ([B, H, W, C], :class:`ChannelsLastOutput`) and a SHA-256 fingerprint of the model's
tensors: :func:`check_int8_graph` refuses a graph calibrated from other weights or under another model
config (the input size and decode settings aside), a file's as one handed over in memory. With
``--val-annotations`` and ``--val-images`` (COCO format) it also scores fp32 and int8 on those images with
pycocotools (box and keypoint AP, mIoU) and stores both in the file, so the accuracy int8 costs on your
data is stated where the graph is.

Run with ``Predictor(..., backend="onnxruntime", precision="int8")`` or the node's ``backend:
onnxruntime`` + ``precision: int8``; it runs int8 only on a CPU with int8 dot products (VNNI or AMX,
:func:`~mcn_ros.model.precision.cpu_int8_native`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcn_ros.model.backends import (
    CHANNELS_LAST_OUTPUTS,
    TO_NCHW,
    OnnxExportError,
    export_onnx,
    fold_batch_norms,
    import_onnxruntime,
)
from mcn_ros.model.config import OUTPUT_STRIDE, ModelConfig
from mcn_ros.model.export import describe
from mcn_ros.model.heads import SegmentationHead, TaskHead
from mcn_ros.model.precision import cpu_int8_native
from mcn_ros.model.preprocess import preprocess, rect_input_size
from mcn_ros.model.weights import WeightsError, load_weights, same_file, write_atomically

#: File name endings read as calibration or validation images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: Scores kept for AP (low: AP integrates over all scores), as training's validation.
VALIDATION_SCORE = 0.01


class QuantizeError(RuntimeError):
    """The int8 graph cannot be made or used; the message says which file and why."""


def default_int8_path(weights: str | Path) -> Path:
    """Where the int8 graph of ``weights`` goes by default: beside it, ``<name>.int8.onnx``."""
    return Path(weights).with_suffix(".int8.onnx")


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's tensors (names, dtypes, shapes, values in NCHW order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_files(folder: str | Path, count: int | None = None) -> list[Path]:
    """Up to ``count`` image files of ``folder`` (sorted by name, spread evenly; None = all)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QuantizeError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise QuantizeError(f"{folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    if count is not None and len(files) > count:
        picks = np.linspace(0, len(files) - 1, count).round().astype(int)
        files = [files[i] for i in picks]
    return files


def network_input(image: np.ndarray, config: ModelConfig) -> np.ndarray:
    """A BGR image letterboxed camera-shaped and normalised for ``config``: a [1, 3, H, W] float32 array."""
    size = rect_input_size([(int(image.shape[0]), int(image.shape[1]))], config.input_size)
    batch, _ = preprocess([image], size, config.mean, config.std, "cpu", "bgr", False)
    return batch.numpy()


def _calibration_feeds(files: Sequence[Path], config: ModelConfig, unreadable: list[Path]) -> Iterator[Any]:
    """One letterboxed image per feed, read when asked (calibration keeps no image set in memory)."""
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            unreadable.append(path)
            continue
        yield {"images": network_input(image, config)}


def quantize_onnx(source: Path, target: Path, feeds: Iterator[dict[str, np.ndarray]]) -> None:
    """Quantise the ONNX file ``source`` into ``target`` with ONNX Runtime's static quantisation as this
    project does it (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges over ``feeds``: input
    name -> array, one dict per calibration batch). ``source``'s metadata is kept.

    The heads' last 1x1 convs and what cuts or resizes their outputs write float outputs
    (:func:`float_tail_nodes`): quantised to uint8, each output had at most 256 distinct values, so
    neighbouring heatmap cells tied (more peaks for the decoder to sort out) and sizes and offsets moved in
    steps (the accuracy either way: bench/results/int8_onnxruntime.md and its history). Those convs stay
    float convs; where they are matrix products (:class:`ChannelsLastOutput`) and the graph has no other
    matrix product, the products take int8 weights (per output channel) and the uint8 activation as it is and
    only their outputs stay float, which ONNX Runtime runs as one MatMulIntegerToFloat (no dequantised
    activation, no float product). Measured on the 512 model at 512x384 on 2 cores, the graphs' sessions in
    turn (ad hoc): 51.5 -> 48.3 ms per forward beside a test run, the outputs within 0.3 % (relative norm)
    of the float products'."""
    import onnx

    import_onnxruntime()
    from onnxruntime.quantization import (  # type: ignore[import-untyped]
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import (  # type: ignore[import-untyped]
        quant_pre_process,
    )

    class Feeds(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    prepared = target.with_suffix(".prepared.onnx")
    quant_pre_process(str(source), str(prepared))
    prepared_graph = onnx.load(str(prepared), load_external_data=False).graph
    last = float_tail_nodes(prepared_graph)
    products = {node.name for node in prepared_graph.node if node.op_type == "MatMul"}
    extra: dict[str, Any] = {}
    if products and products <= set(last):
        # The option is by operator type: taken only where every matrix product is a head's last conv.
        last = [name for name in last if name not in products]
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ORT's notes on its own pre-processing and opset choices
            quantize_static(
                str(prepared), str(target), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=last,
                extra_options=extra,
            )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
    kept = onnx.load(str(source), load_external_data=False).metadata_props
    if kept:
        graph = onnx.load(str(target))
        graph.metadata_props.extend(kept)
        onnx.save(graph, str(target))


#: Nodes that only cut, reshape, resize or reduce what the heads' last conv wrote (the lighter configs'
#: shared 1x1 conv is sliced into its outputs; a segmentation at stride 1 or 2 is resized from the stride-4
#: conv; other graphs quantised by the same function, such as ultralytics' semantic one, end in an argmax).
PASS_THROUGH_OPS = frozenset(
    {"Slice", "Split", "Resize", "Reshape", "Identity", "Squeeze", "Unsqueeze", "ArgMax", "Cast"}
)


def float_tail_nodes(graph: Any) -> list[str]:
    """Names of the nodes that stay in float in the int8 graph: from each output of ``graph`` (an ONNX
    GraphProto) back through :data:`PASS_THROUGH_OPS` to the node that computes it, the heads' last conv
    included (as :class:`ChannelsLastOutput` exports it: the transpose to NCHW, the bias add and the matrix
    product). Quantised, the heads' outputs would keep ~200 values each, and sizes and offsets sharing a
    conv with the heatmap would share its range."""
    producer = _producers(graph)
    constants = {tensor.name for tensor in graph.initializer}
    constants |= {node.output[0] for node in graph.node if node.op_type == "Constant"}
    names: list[str] = []
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None:
            if node.name and node.name not in names:
                names.append(node.name)
            if node.op_type == "Transpose" and _permutation(node) == TO_NCHW:
                node = producer.get(node.input[0])
            elif node.op_type == "Add" and sum(name in constants for name in node.input) == 1:
                # a bias added to the conv's product
                node = producer.get(next(name for name in node.input if name not in constants))
            elif node.op_type in PASS_THROUGH_OPS:
                node = producer.get(node.input[0])
            else:
                break
    return names


def _producers(graph: Any) -> dict[str, Any]:
    """Tensor name -> the node of ``graph`` (a GraphProto) that writes it."""
    return {output: node for node in graph.node for output in node.output}


def _readers(graph: Any) -> Counter[str]:
    """Tensor name -> how many times ``graph`` (a GraphProto) reads it: as a node's input or as an output."""
    return Counter([name for node in graph.node for name in node.input] + [o.name for o in graph.output])


def _permutation(node: Any) -> tuple[int, ...] | None:
    """A Transpose node's ``perm`` attribute."""
    return next((tuple(a.ints) for a in node.attribute if a.name == "perm"), None)


class ChannelsLastOutput(nn.Module):
    """A head's last 1x1 conv as a matrix product over the channels of the channels-last view, handed back
    as an NCHW-shaped view of the channels-last result: the same maths.

    In ONNX Runtime the int8 convs before it run channels-last: the transpose into the view cancels against
    the layout transpose ONNX Runtime puts after them, and :func:`quantize_graph` drops the transpose back
    to NCHW where it writes a graph output (:func:`with_channels_last_outputs` converts only such convs), so
    the graph writes the output channels-last and the backend hands decoding a channels-last view (which it
    decodes faster than NCHW maps). As a float conv it was dequantised, transposed to NCHW and
    reordered to and from ONNX Runtime's blocked layout. Measured on the 512 model at 512x384 on 2 cores,
    the graphs' sessions timed in turn: 30.8 -> 29.8 ms per forward; decoding the demo weights' outputs
    3.0 -> 2.5 ms.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1) or conv.padding != (0, 0):
            raise ValueError(f"not a plain 1x1 conv: {conv}")
        self.weight = nn.Parameter(conv.weight.detach()[:, :, 0, 0].clone(), requires_grad=False)
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(*TO_NCHW)


def with_channels_last_outputs(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose heads' last 1x1 convs are :class:`ChannelsLastOutput`
    modules where such a conv writes one output as it is (``model`` unchanged): not a lighter config's
    shared conv, whose output is sliced, nor a segmentation conv whose logits are resized (output stride 1
    or 2); their outputs stay NCHW convs, as measured."""
    converted = copy.deepcopy(model).eval()
    heads = getattr(converted, "heads", None)
    if heads is None:
        return converted
    branches: list[nn.Sequential] = []
    for head in heads.values():
        if isinstance(head, TaskHead) and head.shared is None:
            branches += [getattr(head, name) for name in head.names]
        elif isinstance(head, SegmentationHead) and head.output_stride == OUTPUT_STRIDE:
            branches.append(head.segmentation)
    for branch in branches:
        last = branch[-1]
        if isinstance(last, nn.Conv2d) and last.kernel_size == (1, 1) and last.groups == 1:
            branch[-1] = ChannelsLastOutput(last)
    return converted


def strip_output_transposes(graph: Any) -> list[str]:
    """Remove from ``graph`` (a ModelProto, changed in place) each Transpose to NCHW that writes a graph
    output, so that the output is the channels-last map before it; the names of those outputs."""
    producer, readers = _producers(graph.graph), _readers(graph.graph)
    stripped = []
    for output in graph.graph.output:
        node = producer.get(output.name)
        if node is None or node.op_type != "Transpose" or _permutation(node) != TO_NCHW:
            continue
        source = node.input[0]
        if readers[source] != 1 or readers[output.name] != 1:
            continue  # the channels-last map, or the NCHW output, is read by other nodes or is an output too
        writer = producer.get(source)
        if writer is None:
            continue
        writer.output[list(writer.output).index(source)] = output.name
        graph.graph.node.remove(node)
        dims = output.type.tensor_type.shape.dim
        if len(dims) == 4:  # NCHW -> NHWC
            kept = [copy.deepcopy(dims[i]) for i in (0, 2, 3, 1)]
            del dims[:]
            dims.extend(kept)
        stripped.append(output.name)
    return stripped


def fuse_product_biases(graph: Any) -> list[str]:
    """Replace in ``graph`` (a ModelProto, changed in place) each float bias added to a matrix product of a
    dequantised activation (one scale) and dequantised constant 8-bit weights (one scale, or one per output
    column) by ONNX Runtime's ``com.microsoft`` MatMulIntegerToFloat with its bias input: the same maths,
    which ONNX Runtime otherwise runs as that operator then a separate Add over the whole output. Only the
    integer types ONNX Runtime's CPU kernel takes (:data:`PRODUCT_INTEGER_TYPES`), float32 scales and bias,
    and graphs without subgraphs (whose reads are not counted here). The names of the fused nodes' outputs.

    :func:`quantize_onnx` leaves the heads' last products in that form (:class:`ChannelsLastOutput`); ONNX
    Runtime turns the product into MatMulIntegerToFloat but keeps the bias add, which reads and writes every
    output value once more. Measured on the 512 model at 512x384 on 2 cores (ONNX Runtime's profile by op
    type): the adds took 1.36 ms of 29.3, the fused products 0.25 ms more than the products alone; the
    outputs are the same up to float rounding (on the demo weights' graph bit for bit)."""
    from onnx import AttributeProto, TensorProto, helper

    nodes = graph.graph.node
    subgraphs = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
    if any(attribute.type in subgraphs for node in nodes for attribute in node.attribute):
        return []
    producer, readers = _producers(graph.graph), _readers(graph.graph)
    constants = {tensor.name: tensor for tensor in graph.graph.initializer}

    fused: list[str] = []
    for add in list(nodes):
        if add.op_type != "Add" or add.domain or len(add.input) != 2:
            continue
        biases = [name for name in add.input if name in constants]
        if len(biases) != 1:
            continue
        bias = constants[biases[0]]
        (summed,) = (name for name in add.input if name not in constants)
        product = producer.get(summed)
        if product is None or product.op_type != "MatMul" or readers[summed] != 1:
            continue
        activation, weights = (producer.get(name) for name in product.input)
        if not _fusable_dequantisations(activation, weights, constants):
            continue
        assert activation is not None and weights is not None  # _fusable_dequantisations checked them
        columns = constants[weights.input[0]].dims[-1]
        if list(bias.dims) != [columns] or bias.data_type != TensorProto.FLOAT:
            continue
        inputs = [activation.input[0], weights.input[0], activation.input[1], weights.input[1],
                  activation.input[2], weights.input[2], bias.name]  # fmt: skip
        node = helper.make_node(
            "MatMulIntegerToFloat", inputs, list(add.output), name=f"{add.output[0]}/MatMulIntegerToFloat",
            domain="com.microsoft",
        )  # fmt: skip
        nodes.insert(list(nodes).index(add), node)
        for gone in (add, product):
            nodes.remove(gone)
        for dequantised in (activation, weights):
            readers[dequantised.output[0]] -= 1
            if readers[dequantised.output[0]] == 0:  # the product read it alone
                nodes.remove(dequantised)
        fused.append(add.output[0])
    if fused and not any(opset.domain == "com.microsoft" for opset in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


#: (activation, weights) integer types of ONNX Runtime's CPU MatMulIntegerToFloat (ONNX TensorProto codes:
#: uint8 x int8, uint8 x uint8, int8 x int8).
PRODUCT_INTEGER_TYPES = frozenset({(2, 3), (2, 2), (3, 3)})


def _fusable_dequantisations(activation: Any, weights: Any, constants: dict[str, Any]) -> bool:
    """Whether a product of these two nodes' outputs can be one MatMulIntegerToFloat: both
    DequantizeLinear (no attribute but ``axis``) with a float32 scale and a zero point given as constants,
    the activation with one scale, the weights a constant 2-D matrix with one scale or one per output column
    (axis 1), the two integer types a pair of :data:`PRODUCT_INTEGER_TYPES`."""
    from onnx import TensorProto

    for node in (activation, weights):
        if node is None or node.op_type != "DequantizeLinear" or node.domain or len(node.input) != 3:
            return False
        if not all(name in constants for name in node.input[1:]):
            return False
        if constants[node.input[1]].data_type != TensorProto.FLOAT:
            return False
        if any(attribute.name != "axis" for attribute in node.attribute):  # block_size, output_dtype
            return False
    if not all(_single_value(constants[name]) for name in activation.input[1:]):
        return False
    matrix = constants.get(weights.input[0])
    if matrix is None or len(matrix.dims) != 2 or constants[weights.input[2]].data_type != matrix.data_type:
        return False
    if (constants[activation.input[2]].data_type, matrix.data_type) not in PRODUCT_INTEGER_TYPES:
        return False
    axis = next((a.i for a in weights.attribute if a.name == "axis"), 1)
    per_tensor = all(_single_value(constants[name]) for name in weights.input[1:])
    per_column = axis in (1, -1) and all(
        list(constants[name].dims) == [matrix.dims[1]] for name in weights.input[1:]
    )
    return per_tensor or per_column


def _single_value(tensor: Any) -> bool:
    return int(np.prod(tensor.dims)) == 1


class SubPixelUpsample(nn.Module):
    """A stride-2 4x4 transposed conv (padding 1), optionally with the BatchNorm and the ReLU after it, as
    one 3x3 conv to 4x the channels (and the ReLU) then a pixel shuffle: the same maths (each output
    phase's 2x2 taps, zeros elsewhere; the ReLU, elementwise, commutes with the shuffle).

    ONNX Runtime has no int8 transposed conv: in a quantised graph the up-path's ConvTransposes ran in
    float between a dequantise and a quantise; as convs they run in int8. The conv's channels are phase
    major (phase 2 * row parity + column parity, then channel), so that in ONNX Runtime's channels-last int8
    layout the shuffle is one move of the row-parity axis; it is written as transposes to and from channels
    last around that move, which ONNX Runtime cancels against its own layout transposes, and as reshapes and
    a transpose, which the quantiser keeps in uint8. With the ReLU before the shuffle it is fused into the
    int8 conv. Measured on the 512 model at 512x384 on 2 cores, the two graphs' sessions timed in turn:
    with ONNX's DepthToSpace after the conv (run in float between a dequantise and a quantise, the ReLU
    after it in float too) 32.7 ms per forward, this way 30.3 ms.
    """

    def __init__(
        self, up: nn.ConvTranspose2d, norm: nn.BatchNorm2d | None = None, relu: bool = False
    ) -> None:
        super().__init__()
        if not subpixel_convertible(up):
            raise ValueError(f"not a stride-2 4x4 transposed conv with padding 1: {up}")
        weight = up.weight.detach()  # [in, out, 4, 4]
        c_in, c_out = weight.shape[0], weight.shape[1]
        bias = up.bias.detach() if up.bias is not None else torch.zeros(c_out, dtype=weight.dtype)
        scale = torch.ones(c_out, dtype=weight.dtype)
        if norm is not None:
            assert norm.running_var is not None and norm.running_mean is not None
            scale = torch.rsqrt(norm.running_var + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight.detach()
            shift = -norm.running_mean * scale
            if norm.bias is not None:
                shift = shift + norm.bias.detach()
            bias = bias * scale + shift
        kernel = torch.zeros(4, c_out, c_in, 3, 3, dtype=weight.dtype)
        for phase_y in range(2):
            for phase_x in range(2):
                for dy in range(3):
                    for dx in range(3):
                        # Output row 2m + phase_y reads input row m + dy - 1 through kernel row ky.
                        ky, kx = phase_y + 3 - 2 * dy, phase_x + 3 - 2 * dx
                        if 0 <= ky < 4 and 0 <= kx < 4:
                            kernel[2 * phase_y + phase_x, :, :, dy, dx] = weight[:, :, ky, kx].T
        self.relu = relu
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_((kernel * scale.view(1, -1, 1, 1, 1)).reshape(4 * c_out, c_in, 3, 3))
            assert self.conv.bias is not None
            self.conv.bias.copy_(bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The sizes from the input and the conv, not from the conv's output: in ONNX Runtime a Shape of that
        # output kept an NCHW float copy of it (a transpose and a dequantise) for nothing but its sizes.
        b, _, h, w = x.shape
        c = self.conv.out_channels // 4
        y = self.conv(x)
        if self.relu:
            y = F.relu(y)
        # [B, H, W, (row parity, column parity, C)] -> [B, H, row parity, W, (column parity, C)]
        y = y.permute(0, 2, 3, 1).reshape(b, h, w, 2, 2 * c).transpose(2, 3)
        return y.reshape(b, 2 * h, 2 * w, c).permute(*TO_NCHW)


def subpixel_convertible(up: nn.Module) -> bool:
    """Whether ``up`` is a transposed conv that :class:`SubPixelUpsample` can stand in for."""
    return (
        isinstance(up, nn.ConvTranspose2d)
        and up.kernel_size == (4, 4) and up.stride == (2, 2) and up.padding == (1, 1)
        and up.output_padding == (0, 0) and up.dilation == (1, 1) and up.groups == 1
    )  # fmt: skip


def with_subpixel_upsampling(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose stride-2 transposed convs, with the BatchNorm and then the
    ReLU that follow one in an ``nn.Sequential``, are :class:`SubPixelUpsample` modules (``model``
    unchanged)."""
    converted = copy.deepcopy(model).eval()
    for sequence in [m for m in converted.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequence)
        for i, layer in enumerate(layers):
            if not subpixel_convertible(layer):
                continue
            after = i + 1
            norm = layers[after] if after < len(layers) else None
            if isinstance(norm, nn.BatchNorm2d):
                sequence[after] = nn.Identity()
                after += 1
            else:
                norm = None
            relu = after < len(layers) and type(layers[after]) is nn.ReLU
            if relu:
                sequence[after] = nn.Identity()
            sequence[i] = SubPixelUpsample(layer, norm, relu)  # type: ignore[arg-type]
    return converted


class SpaceToDepth(torch.autograd.Function):
    """Each 2x2 block of pixels of [B, C, H, W] (even H, W) as 4C channels of [B, 4C, H / 2, W / 2], channel
    (2 * row + column in the block) * C + c as ONNX's SpaceToDepth orders them; exported as that operator.
    ONNX Runtime runs it in one pass: written as reshapes and a 6-D transpose, the same move of the image
    took it 1.5 ms in int8 at 512x384 on 2 cores, against about 0.45 ms for the operator in float."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if not torch.jit.is_tracing() and (h % 2 or w % 2):  # traced: the export's operator checks
            raise ValueError(f"SpaceToDepth needs an even height and width, got {h}x{w}")
        blocks = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)
        return blocks.reshape(b, 4 * c, h // 2, w // 2)

    @staticmethod
    def symbolic(g: Any, x: Any) -> Any:
        return g.op("SpaceToDepth", x, blocksize_i=2)


class SpaceToDepthConv(nn.Module):
    """A stride-2 k x k conv (odd k, padding k // 2) as the same maths over 2x2 blocks of pixels:
    :class:`SpaceToDepth`, then a stride-1 conv over four times the channels with the kernel 2 * ceil(p / 2)
    + 1 blocks wide (p = k // 2) and that padding; its taps outside the original kernel are zeros.

    The network's first conv reads the image's 3 channels: ONNX Runtime's int8 conv runs slowly over so few
    channels (ResNet's 7x7 stem took 5.0 ms of a 29 ms forward at 512x384 on 2 cores, its other convs at
    several times the rate). Over 12 channels, as a 5x5 conv, it took 2.7 ms, the whole forward 2.1 ms less
    (the graphs' sessions timed in turn), though it does twice the multiply-adds. Its input's height and
    width must be even (the network's input is a multiple of 32)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not space_to_depth_convertible(conv):
            raise ValueError(f"not a stride-2 odd square conv with padding kernel // 2: {conv}")
        k, p = conv.kernel_size[0], conv.padding[0]
        assert isinstance(p, int)  # space_to_depth_convertible checked it
        half = (p + 1) // 2
        blocks = 2 * half + 1
        start = 2 * half - p  # where tap 0 of the original kernel falls in the blocks' pixel rows
        weight = conv.weight.detach()
        out_channels, in_channels = weight.shape[:2]
        padded = weight.new_zeros(out_channels, in_channels, 2 * blocks, 2 * blocks)
        padded[:, :, start : start + k, start : start + k] = weight
        # [O, C, block row, row in block, block column, column in block] -> channel (2 * row + column) * C + c
        taps = padded.view(out_channels, in_channels, blocks, 2, blocks, 2).permute(0, 3, 5, 1, 2, 4)
        self.conv = nn.Conv2d(4 * in_channels, out_channels, blocks, padding=half, bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(taps.reshape(out_channels, 4 * in_channels, blocks, blocks))
            if conv.bias is not None and self.conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(SpaceToDepth.apply(x))


#: Convs reading at most this many channels (the image) become :class:`SpaceToDepthConv` in int8, ...
SPACE_TO_DEPTH_MAX_CHANNELS = 4
#: ... where their kernel is at least this wide: the block conv does (2 * ceil(p / 2) + 1)^2 * 4 / k^2 times
#: the multiply-adds (7x7: 2.0, 5x5: 1.4, 3x3: 4.0; measured for ResNet's 7x7 only).
SPACE_TO_DEPTH_MIN_KERNEL = 5


def space_to_depth_convertible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain stride-2 conv with an odd square kernel and padding kernel // 2."""
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    k = conv.kernel_size[0]
    return (
        conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (2, 2) and conv.dilation == (1, 1)
        and conv.padding == (k // 2, k // 2)
    )  # fmt: skip


def with_space_to_depth_stem(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode; ``model`` unchanged) whose stride-2 convs over at most
    :data:`SPACE_TO_DEPTH_MAX_CHANNELS` channels, with kernels at least :data:`SPACE_TO_DEPTH_MIN_KERNEL`
    wide, are :class:`SpaceToDepthConv` modules. Call it after
    :func:`~mcn_ros.model.backends.fold_batch_norms`, which folds BatchNorms into plain convs only."""
    converted = copy.deepcopy(model).eval()
    for name, module in list(converted.named_modules()):
        if not (space_to_depth_convertible(module) and module.in_channels <= SPACE_TO_DEPTH_MAX_CHANNELS):
            continue
        if module.kernel_size[0] < SPACE_TO_DEPTH_MIN_KERNEL:
            continue
        parent_name, _, attribute = name.rpartition(".")
        setattr(converted.get_submodule(parent_name), attribute, SpaceToDepthConv(module))
    return converted


def quantize_graph(model: nn.Module, config: ModelConfig, files: Sequence[Path]) -> tuple[Any, int]:
    """The int8 ONNX model (a ModelProto) of ``model``'s forward for all its tasks, calibrated on ``files``;
    and how many of them were read. Its outputs are channels-last where the heads' last convs wrote them
    (:class:`ChannelsLastOutput`), named in its metadata (:data:`CHANNELS_LAST_OUTPUTS`), each from one
    MatMulIntegerToFloat with the bias (:func:`fuse_product_biases`). Its metadata says what it is
    (:func:`~mcn_ros.model.export.describe`'s keys, ``mcn_precision`` = int8, ``mcn_model_sha256``), so that
    :func:`check_int8_graph` checks it as it checks a written file; :func:`quantize` adds the calibration
    and the validation."""
    import onnx

    height, width = config.input_size
    converted = with_channels_last_outputs(with_subpixel_upsampling(model))
    data, _ = export_onnx(with_space_to_depth_stem(fold_batch_norms(converted)), config.tasks, height, width)
    unreadable: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="mcn_quantize_") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(data)
        try:
            quantize_onnx(fp32, int8, _calibration_feeds(files, config, unreadable))
        except ValueError as error:  # ORT: "No data is collected." when no image was read
            if len(unreadable) == len(files):
                raise QuantizeError(
                    f"none of the {len(files)} calibration images could be read (first: {files[0]})"
                ) from error
            raise
        graph = onnx.load(str(int8))
    channels_last = strip_output_transposes(graph)
    fuse_product_biases(graph)
    graph.metadata_props.add(key=CHANNELS_LAST_OUTPUTS, value=",".join(sorted(channels_last)))
    describe(graph, config, config.tasks, tuple(o.name for o in graph.graph.output))
    graph.metadata_props.add(key="mcn_precision", value="int8")
    graph.metadata_props.add(key="mcn_model_sha256", value=model_fingerprint(model))
    return graph, len(files) - len(unreadable)


#: The command that makes the int8 graph, named where one is missing.
MAKE_INT8_GRAPH = "`python -m mcn_ros.model.quantize --weights W.safetensors --images DIR` (camera frames)"


def load_int8_graph(path: str | Path, model: nn.Module, config: ModelConfig | None = None) -> Any:
    """The int8 graph at ``path`` (a ModelProto) after checking that it was calibrated from ``model``
    (:func:`check_int8_graph`; ``config``: the model's, default ``model.config``)."""
    import onnx

    if not str(path).strip():
        raise QuantizeError(
            "int8_graph is empty: name the graph file (Predictor.from_weights and the node read an empty "
            "int8_graph as the graph beside the weights, <name>.int8.onnx)"
        )
    path = Path(path)
    if path.is_dir():
        raise QuantizeError(
            f"int8 graph {path} is a directory: name the .int8.onnx file (an empty int8_graph means the "
            "one beside the weights)"
        )
    if not path.is_file():
        raise QuantizeError(f"int8 graph not found: {path}; make it from the weights with {MAKE_INT8_GRAPH}")
    try:
        graph = onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError and others for a file that is not a model
        raise QuantizeError(f"{path}: not a readable ONNX file: {error}") from error
    return check_int8_graph(graph, model, config, str(path))


def check_int8_graph(
    graph: Any, model: nn.Module, config: ModelConfig | None = None, name: str = "the int8 graph"
) -> Any:
    """``graph`` (a ModelProto) after checking that it is an int8 graph of this module calibrated from
    ``model``: ``mcn_precision`` = int8, the fingerprint of ``model``'s tensors (``mcn_model_sha256``) and
    the model config it recorded (``mcn_config``, written by every version of :func:`quantize`) equal to
    ``config`` (default ``model.config``) but for what the caller sets at run time (input size, decode
    settings, name: :data:`~mcn_ros.model.predictor.CALLER_CONFIG_FIELDS`). A file and a graph handed over
    in memory get the same checks; :func:`quantize_graph` writes these keys at once."""
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    if metadata.get("mcn_precision") != "int8":
        raise QuantizeError(f"{name}: not an int8 graph of mcn_ros.model.quantize (no mcn_precision=int8)")
    recorded = metadata.get("mcn_model_sha256")
    if recorded is None:
        raise QuantizeError(f"{name}: names no weights it was calibrated from (no mcn_model_sha256)")
    if recorded != model_fingerprint(model):
        raise QuantizeError(
            f"{name} was calibrated from other weights than the ones loaded: quantise these weights again"
        )
    own = config if config is not None else getattr(model, "config", None)
    if isinstance(own, ModelConfig):
        check_graph_config(metadata.get("mcn_config"), own, name)
    return graph


def check_graph_config(recorded: str | None, config: ModelConfig, name: str = "the int8 graph") -> None:
    """Refuse an int8 graph whose recorded model config (``recorded``: its ``mcn_config`` YAML) differs from
    ``config`` in more than :data:`~mcn_ros.model.predictor.CALLER_CONFIG_FIELDS`, naming every differing
    field: the same tensors under another config (a segmentation output stride, class names) compute or
    read other outputs."""
    import yaml

    from mcn_ros.model.config import ConfigError
    from mcn_ros.model.predictor import with_caller_fields
    from mcn_ros.model.weights import differences

    if recorded is None:
        raise QuantizeError(
            f"{name} records no model config (no mcn_config): not a graph of mcn_ros.model.quantize; "
            "quantise these weights again"
        )
    try:
        data = yaml.safe_load(recorded)
        if not isinstance(data, dict):
            raise ConfigError(f"a mapping expected, got {type(data).__name__}")
        theirs = ModelConfig.from_dict(data)
    except (yaml.YAMLError, ConfigError) as error:
        raise QuantizeError(
            f"{name}: its recorded model config (mcn_config) cannot be read ({error}): quantise these "
            "weights again"
        ) from error
    found = differences(with_caller_fields(theirs, config).to_dict(), config.to_dict())
    if found:
        described = "; ".join(
            f"{key}: {a!r} in the graph, {b!r} in the weights" if len(repr(a)) + len(repr(b)) <= 80 else key
            for key, a, b in found
        )
        raise QuantizeError(
            f"{name} was calibrated from these weights under another model config ({described}): quantise "
            "them again with their own config"
        )


def read_coco(annotations: Sequence[Path]) -> Any:
    """A pycocotools COCO of an instances file, with a person keypoints file merged in if one is given
    (:func:`mcn_ros.evaluation.load_coco`)."""
    from mcn_ros.evaluation import load_coco

    if not 1 <= len(annotations) <= 2:
        raise QuantizeError("validation takes an instances file and optionally a person keypoints file")
    try:
        coco, _ = load_coco(*annotations)
    except (OSError, ValueError) as error:
        raise QuantizeError(f"cannot read the validation annotations: {error}") from error
    return coco


def validate(
    model: nn.Module, config: ModelConfig, graph: Any, annotations: Sequence[Path], images: Path
) -> dict[str, dict[str, float | None]]:
    """COCO metrics (percent) of the fp32 and the int8 ONNX Runtime forward on a COCO-format set
    (``annotations``: an instances file, optionally a person keypoints file)."""
    from mcn_ros.evaluation import METRICS, evaluate
    from mcn_ros.model.predictor import Predictor

    coco = read_coco(annotations)
    predictors = {
        "fp32": Predictor(model, config, backend="onnxruntime"),
        "int8": Predictor(model, config, backend="onnxruntime", precision="int8", int8_graph=graph),
    }
    found: dict[str, dict[int, Any]] = {name: {} for name in predictors}
    for image_id, info in sorted(coco.imgs.items()):
        image = cv2.imread(str(images / info["file_name"]), cv2.IMREAD_COLOR)
        if image is None:
            raise QuantizeError(f"validation image {images / info['file_name']} cannot be read")
        for name, predictor in predictors.items():
            found[name][int(image_id)] = predictor.predict(
                image,
                color_order="bgr",
                score_threshold=VALIDATION_SCORE,
                pose_score_threshold=VALIDATION_SCORE,
            )
    det = list(config.detection.classes) if config.detection is not None else None
    seg = list(config.segmentation.classes) if config.segmentation is not None else None
    out: dict[str, dict[str, float | None]] = {}
    for name, predictions in found.items():
        report = evaluate(coco, predictions, det, seg)
        out[name] = {
            key: None if value is None else round(100 * value, 1)
            for key, value in report.to_dict().items()
            if key in METRICS
        }
    return out


def check_validation_inputs(annotations: Sequence[Path], images: Path) -> None:
    """Refuse validation annotations that are not files, or an image folder that is not a folder: checked
    before calibrating, and where validation is skipped (a CPU without int8 dot products) too."""
    for path in annotations:
        if not Path(path).is_file():
            raise QuantizeError(f"validation annotations not found: {path}")
    if not Path(images).is_dir():
        raise QuantizeError(f"validation image folder not found: {images}")


def quantize(
    weights: str | Path,
    images: str | Path,
    output: str | Path | None = None,
    count: int = 100,
    validation: tuple[Sequence[Path], Path] | None = None,
) -> dict[str, Any]:
    """Write the int8 graph of ``weights`` calibrated on ``images`` (see the module); a summary."""
    import onnx

    if output is not None and same_file(output, weights):
        raise QuantizeError(f"--output {output} is the weights file itself: name another file")
    if validation is not None:
        check_validation_inputs(*validation)
    model, config, _ = load_weights(weights, device="cpu")
    files = image_files(images, count)
    graph, read = quantize_graph(model, config, files)
    native = cpu_int8_native()
    summary: dict[str, Any] = {
        "output": str(default_int8_path(weights) if output is None else output),
        "calibration_images": read,
        "unreadable_images": len(files) - read,
        "int8_native_here": native,
    }
    if validation is not None:
        if not native:
            summary["validation"] = "skipped: this CPU has no int8 dot products (validate on the target CPU)"
        else:
            summary["validation"] = validate(model, config, graph, *validation)
    for key, value in {
        "mcn_calibration": json.dumps({"images": read, "folder": str(Path(images).resolve())}),
        "mcn_validation": json.dumps(summary.get("validation")),
    }.items():
        graph.metadata_props.add(key=key, value=value)
    destination = Path(summary["output"])
    try:
        write_atomically(destination, lambda tmp: onnx.save(graph, str(tmp)))
    except OSError as error:
        raise QuantizeError(f"cannot write {destination}: {error}") from error
    summary["bytes"] = destination.stat().st_size
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mcn_ros.model.quantize``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--weights", required=True, help="the .safetensors weights file")
    parser.add_argument("--images", required=True, help="folder of calibration images (camera frames)")
    parser.add_argument("--count", type=int, default=100, help="most calibration images used (default 100)")
    parser.add_argument(
        "--output", default=None, help="destination (default: beside the weights, .int8.onnx)"
    )
    parser.add_argument(
        "--val-annotations",
        type=Path,
        nargs="+",
        default=None,
        help="COCO instances file to score on, optionally followed by its person keypoints file",
    )
    parser.add_argument("--val-images", type=Path, default=None, help="folder of those annotations' images")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad weights, images or destination)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if (args.val_annotations is None) != (args.val_images is None):
        parser.error("--val-annotations and --val-images go together")
    if args.count < 1:
        parser.error("--count must be at least 1")
    validation = None if args.val_annotations is None else (args.val_annotations, args.val_images)
    try:
        summary = quantize(args.weights, args.images, args.output, args.count, validation)
    except (QuantizeError, WeightsError, OnnxExportError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['output']} ({summary['bytes'] / 1e6:.1f} MB), calibrated on "
        f"{summary['calibration_images']} images ({summary['unreadable_images']} unreadable, skipped)"
    )
    if not summary["int8_native_here"]:
        print("note: this CPU has no int8 dot products (VNNI/AMX); the node runs the graph on CPUs that have")
    checked = summary.get("validation")
    if isinstance(checked, dict):
        print("| metric (%) | fp32 | int8 |\n|---|---:|---:|")
        for key, value in checked["fp32"].items():
            if value is not None:
                print(f"| {key} | {value} | {checked['int8'][key]} |")
    elif checked is not None:
        print(f"validation {checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
