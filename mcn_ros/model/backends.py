"""Where the forward runs: eager PyTorch (the default) or ONNX Runtime on the CPU.

ONNX Runtime is an optional dependency (``pip install onnxruntime onnx``; pinned in
``requirements/dev.txt``).
:class:`OnnxRuntimeForward` exports the model's forward for the tasks asked (backbone, up-path and only those
heads) to ONNX with dynamic batch, height and width, once per task set, and runs it with the CPU execution
provider. Decoding stays in the same torch code for both backends, so they differ only by the forward's
floating-point rounding (tested within 1e-4 of the outputs' scale). Given an int8 graph made by
:mod:`mcn_ros.model.quantize`, it runs that graph instead, cut down to the heads of the tasks asked. The
graphs it exports write their outputs channels-last, as int8 graphs made since 2026-12-05 do (their metadata
says which), and decoding gets channels-last views of those, as from the torch backend.
"""

from __future__ import annotations

import copy
import io
import threading
import warnings
from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor, nn

from mcn_ros.model.config import OUTPUT_STRIDE
from mcn_ros.model.mcn import check_input_batch, resolve_tasks

#: Backend names accepted by :class:`~mcn_ros.model.predictor.Predictor`.
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")
#: ONNX opset of the export.
ONNX_OPSET = 17
#: Metadata key of an int8 graph: its outputs written channels-last ([B, H, W, C]), comma-separated.
CHANNELS_LAST_OUTPUTS = "mcn_channels_last_outputs"
#: The permutation of a channels-last map [B, H, W, C] to NCHW.
TO_NCHW = (0, 3, 1, 2)


def channels_last_outputs(graph: Any) -> frozenset[str]:
    """The outputs of ``graph`` (a ModelProto) that :data:`CHANNELS_LAST_OUTPUTS` names."""
    for prop in graph.metadata_props:
        if prop.key == CHANNELS_LAST_OUTPUTS:
            return frozenset(name for name in prop.value.split(",") if name)
    return frozenset()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An inference copy of a :class:`~mcn_ros.model.mcn.MultitaskCenterNet` whose backbone and up-path
    have each conv's BatchNorm folded into the conv's weights (the same maths, one pass less over each
    feature map: 2-6 % of a ResNet-18 forward on a 2-core AVX2 CPU). Parts that torch.fx cannot trace stay
    as they are. The copy's parameter names differ from the model's; save weights from the original. A
    model without ``backbone`` and ``neck`` is returned as it is."""
    from torch.fx.experimental.optimization import fuse

    if not (isinstance(getattr(model, "backbone", None), nn.Module) and hasattr(model, "neck")):
        return model  # not a MultitaskCenterNet: nothing known to fold
    folded = copy.deepcopy(model).eval()
    for name in ("backbone", "neck"):
        part = getattr(folded, name, None)
        inner = getattr(part, "body", None) if name == "backbone" else part
        if not isinstance(inner, nn.Module):
            continue
        try:
            fused = fuse(inner)
        except Exception:  # an untraceable part (custom control flow, ...) keeps its BatchNorms
            continue
        if name == "backbone":
            part.body = fused  # type: ignore[union-attr]
        else:
            setattr(folded, name, fused)
    return folded


class OnnxExportError(ValueError):
    """The model has no ONNX form (deformable convolutions); the message says what would."""


def check_exportable(config: Any) -> None:
    """Raise :class:`OnnxExportError` for a config whose forward has no ONNX form."""
    if getattr(config, "use_dcn", False):
        raise OnnxExportError(
            f"model {getattr(config, 'name', '?')} uses deformable convolutions (use_dcn: true), which have "
            "no ONNX operator: the onnxruntime backend, ONNX export and int8 need a model with use_dcn: false"
        )


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an ImportError saying how to install it."""
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError as error:
        raise ImportError(
            "backend 'onnxruntime' needs the optional packages onnxruntime and onnx "
            "(pip install -r requirements/bench.txt, or pip install onnxruntime onnx); "
            "backend 'torch' needs neither"
        ) from error
    return onnxruntime


def session_options(ort: Any, threads: int) -> Any:
    """ONNX Runtime session options for one forward at a time on ``threads`` cores.

    The intra-op threads do not spin between calls: a spinning pool kept the cores busy after each forward
    and slowed the torch decoding that follows (measured at 640x480 on 2 cores: decode 18.6 -> 9.6 ms, the
    forward 1.8 ms slower)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def output_names(
    model: nn.Module, tasks: Collection[str], height: int = 64, width: int = 64
) -> tuple[str, ...]:
    """The raw output names of ``model``'s forward for ``tasks``, sorted (from a small forward)."""
    example = torch.zeros(1, 3, height, width, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return tuple(sorted(model(example, frozenset(tasks))))
    finally:
        model.train(was_training)


class _TaskForward(nn.Module):
    """The model for a fixed task set, returning its outputs as a tuple in ``names`` order (for export),
    each permuted to [B, H, W, C] where ``channels_last``."""

    def __init__(
        self, model: nn.Module, tasks: frozenset[str], names: tuple[str, ...], channels_last: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.tasks = tasks
        self.names = names
        self.channels_last = channels_last

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images, self.tasks)
        if self.channels_last:
            return tuple(outputs[name].permute(0, 2, 3, 1) for name in self.names)
        return tuple(outputs[name] for name in self.names)


#: torch.onnx.export keeps process-wide state (torch.onnx's GLOBALS): two exports at once, from any two
#: threads, break each other, so every export in this process takes this lock.
_EXPORTING = threading.Lock()


def export_onnx(
    model: nn.Module, tasks: Collection[str], height: int = 64, width: int = 64, channels_last: bool = False
) -> tuple[bytes, tuple[str, ...]]:
    """ONNX model bytes of ``model``'s forward for ``tasks`` (input ``images`` [B, 3, H, W], dynamic B, H,
    W; outputs named as the model's output keys, [B, C, H, W], or [B, H, W, C] where ``channels_last``)
    and the output names, in graph order.

    ``channels_last`` (the backend's own sessions): ONNX Runtime computes the heads in its blocked
    channels layout and reorders each output to NCHW; a transpose to [B, H, W, C] after that is folded
    into the reorder, so the forward costs the same and decoding reads channels-last maps, which it does
    faster (demo weights at 512x384 on 2 AVX2 cores, sessions in turn: forward 147.9 / 147.2 ms, decoding
    6.0 -> 4.6 ms; the same results)."""
    check_exportable(getattr(model, "config", None))
    asked = frozenset(tasks)
    names = output_names(model, asked, height, width)
    was_training = model.training
    model = model.eval()
    example = torch.zeros(1, 3, height, width, device=next(model.parameters()).device)
    wrapper = _TaskForward(model, asked, names, channels_last).eval()
    rows, columns = (1, 2) if channels_last else (2, 3)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch", rows: "out_height", columns: "out_width"} for name in names})
    segmentation = getattr(getattr(model, "config", None), "segmentation", None)
    if "segmentation" in axes and segmentation is not None and segmentation.output_stride != OUTPUT_STRIDE:
        axes["segmentation"] = {0: "batch", rows: "seg_height", columns: "seg_width"}  # not the heatmaps'
    buffer = io.BytesIO()
    try:
        with _EXPORTING, warnings.catch_warnings():
            # The tracer notes the model's shape checks (constant in the graph) and that this is the
            # TorchScript exporter, chosen because it needs no onnxscript and exports this model exactly.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
                input_names=["images"],
                output_names=list(names),
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return buffer.getvalue(), names


def extract_outputs(graph: Any, names: Collection[str]) -> Any:
    """The part of an ONNX ``graph`` (a ModelProto) that computes ``names`` from ``images``: the same nodes,
    without the heads nobody asked for (ONNX Runtime would run every node of a graph)."""
    import onnx.utils

    if {output.name for output in graph.graph.output} == set(names):
        return graph
    return onnx.utils.Extractor(graph).extract_model(["images"], list(names))


class OnnxRuntimeForward:
    """Runs a :class:`~mcn_ros.model.mcn.MultitaskCenterNet` forward in ONNX Runtime (CPU provider).

    One session per task set, made on first use: exported from a copy of ``model`` taken here (a few
    seconds; so every session has the weights of this moment, whatever the caller does to its module later,
    and the export never touches the caller's module) with its outputs channels-last (:func:`export_onnx`),
    or, given ``graph`` (an int8 ONNX model of all the config's tasks from :mod:`mcn_ros.model.quantize`),
    cut from it (its outputs channels-last where its metadata says so).
    ``threads``: intra-op threads (default: torch's thread count, so both backends use the same cores).
    Callable from several threads: each session is made once (exports take turns process-wide,
    :data:`_EXPORTING`), and ONNX Runtime sessions may run concurrently.
    """

    def __init__(
        self, model: nn.Module, config: Any, threads: int | None = None, graph: Any | None = None
    ) -> None:
        check_exportable(config)
        self._ort = import_onnxruntime()
        self.model = copy.deepcopy(model).eval() if graph is None else model
        self.config = config
        self.graph = graph
        #: The given graph's outputs written [B, H, W, C] (handed on as channels-last views); the graphs
        #: exported here write all of theirs so.
        self.channels_last = frozenset() if graph is None else channels_last_outputs(graph)
        self.threads = threads or torch.get_num_threads()
        self._sessions: dict[frozenset[str], tuple[Any, tuple[str, ...]]] = {}
        self._making = threading.Lock()

    def session(self, tasks: Collection[str] | None) -> tuple[Any, tuple[str, ...]]:
        """The session and output names for ``tasks`` (None = all configured), made on first use."""
        asked = resolve_tasks(self.config, tasks)
        made = self._sessions.get(asked)
        if made is not None:
            return made
        with self._making:
            if asked not in self._sessions:
                if self.graph is None:
                    data, names = export_onnx(self.model, asked, channels_last=True)
                else:
                    names = output_names(self.model, asked)
                    data = extract_outputs(self.graph, names).SerializeToString()
                options = session_options(self._ort, self.threads)
                session = self._ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
                self._sessions[asked] = (session, names)
            return self._sessions[asked]

    def __call__(self, images: Tensor, tasks: Collection[str] | None) -> dict[str, Tensor]:
        """Raw float32 outputs for a normalised CPU batch [B, 3, H, W] (H, W multiples of 32), [B, C, H, W]
        each (a channels-last view of an output the graph writes channels-last)."""
        check_input_batch(images)  # the exported graph no longer checks the shape
        session, names = self.session(tasks)
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = session.run(list(names), {"images": array})
        return {
            name: torch.from_numpy(value).permute(*TO_NCHW)
            if self.graph is None or name in self.channels_last
            else torch.from_numpy(value)
            for name, value in zip(names, outputs, strict=True)
        }
