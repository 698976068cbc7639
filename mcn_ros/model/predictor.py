"""Predictor: the single inference entry point (images in, :class:`Results` out, original pixels)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import threading
import warnings
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, cast, overload

import numpy as np
import torch
from torch import Tensor, nn

from mcn_ros.model.backends import BACKENDS, OnnxRuntimeForward, fold_batch_norms
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.cuda_graphs import GraphedCalls, graph_unsafe_reason
from mcn_ros.model.decode import (
    DecodedTensors,
    DecodeOptions,
    decode_batch,
    decode_to_tensors,
    unpack_results,
)
from mcn_ros.model.device import resolve_device
from mcn_ros.model.labels import flip_permutation
from mcn_ros.model.mcn import resolve_tasks
from mcn_ros.model.precision import Precision, parse_precision
from mcn_ros.model.preprocess import Letterbox, check_image, preprocess, rect_input_size
from mcn_ros.model.results import Results
from mcn_ros.model.weights import first_difference, load_weights

_EPS = 1e-4


def _logit(p: Tensor) -> Tensor:
    return torch.logit(p.clamp(_EPS, 1 - _EPS))


def merge_flipped(outputs: dict[str, Tensor], batch: int) -> dict[str, Tensor]:
    """Merge outputs of ``[images; flipped images]`` (2B) into B outputs of the original images.

    Heatmaps are averaged as probabilities (keypoint channels swapped left/right), sizes averaged,
    keypoint offsets averaged after mirroring (x -> 1 - x relative to the mirrored cell, joints swapped),
    segmentation logits averaged; the sub-pixel offsets of the unflipped image are kept (as CenterNet).
    """
    perm = flip_permutation()
    merged: dict[str, Tensor] = {}
    for key, value in outputs.items():
        direct, mirrored = value[:batch].float(), value[batch:].float().flip(-1)
        if key == "heatmap":
            merged[key] = _logit((direct.sigmoid() + mirrored.sigmoid()) / 2)
        elif key == "kp_heatmap":
            merged[key] = _logit((direct.sigmoid() + mirrored[:, perm].sigmoid()) / 2)
        elif key in ("size", "segmentation"):
            merged[key] = (direct + mirrored) / 2
        elif key == "kp_offsets":
            # Continuous x mirrors as W - x, so an offset d from a cell becomes 1 - d from the mirrored cell.
            pairs = mirrored.unflatten(1, (-1, 2))[:, perm]
            pairs = torch.stack((1 - pairs[:, :, 0], pairs[:, :, 1]), dim=2)
            merged[key] = (direct + pairs.flatten(1, 2)) / 2
        else:  # offset, kp_subpixel
            merged[key] = direct
    return merged


def run_module(
    module: nn.Module,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    batch: Tensor,
    tasks: frozenset[str],
) -> dict[str, Tensor]:
    """``module(batch, tasks)`` in inference mode (under autocast to ``autocast_dtype`` when given), its
    outputs as float32."""
    autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if autocast_dtype is not None:
        autocast = torch.autocast(device_type=device.type, dtype=autocast_dtype)
    with torch.inference_mode(), autocast:
        outputs = module(batch, tasks)
    return {k: v.float() for k, v in outputs.items()}


def forward_and_decode(
    forward: Callable[[Tensor, frozenset[str]], dict[str, Tensor]],
    config: ModelConfig,
    batch: Tensor,
    tasks: frozenset[str],
    letterboxes: tuple[Letterbox, ...],
    image_sizes: tuple[tuple[int, int], ...],
    options: DecodeOptions,
) -> DecodedTensors:
    """``forward(batch, tasks)``, then decoding on the device
    (:func:`~mcn_ros.model.decode.decode_to_tensors`): the part of a prediction one CUDA graph can hold."""
    return decode_to_tensors(forward(batch, tasks), letterboxes, image_sizes, config, tasks, options)


def _int8_graph(source: str | Path | Any | None, model: nn.Module, config: ModelConfig | None = None) -> Any:
    """The int8 ModelProto from ``source`` (a path or a ModelProto), checked against ``model``'s weights and
    ``config`` (:func:`~mcn_ros.model.quantize.check_int8_graph`: the same checks for both)."""
    from mcn_ros.model.quantize import check_int8_graph, load_int8_graph

    if source is None:
        raise ValueError(
            "precision int8 needs the calibrated graph (int8_graph=...): python -m mcn_ros.model.quantize"
        )
    if isinstance(source, (str, Path)):
        return load_int8_graph(source, model, config)
    if not hasattr(source, "metadata_props"):
        raise TypeError(
            f"int8_graph: expected a path or an onnx ModelProto (onnx.load), got {type(source).__name__}"
        )
    return check_int8_graph(source, model, config, "the int8 graph given")


def int8_fallback_note(source: str | Path | Any | None, model: nn.Module, config: ModelConfig) -> str:
    """What the fallback note of precision int8 run as fp32 adds about the int8 graph: whether it was found,
    after checking it as a CPU that runs it would (a graph of other weights or another config raises the
    same error here), so that a missing or wrong graph shows before deployment."""
    from mcn_ros.model.quantize import MAKE_INT8_GRAPH

    if source is None:
        return "; no int8 graph was given (int8_graph)"
    if isinstance(source, (str, Path)) and str(source).strip() and not Path(source).exists():
        return (
            f"; the int8 graph {source} was not found either: make it with {MAKE_INT8_GRAPH} for a CPU "
            "with int8 dot products"
        )
    _int8_graph(source, model, config)
    where = f" {source}" if isinstance(source, (str, Path)) else " given"
    return f"; the int8 graph{where} was found and matches these weights"


def backend_device(device: str | torch.device, backend: str) -> torch.device:
    """The device ``device`` means for ``backend``: as :func:`~mcn_ros.model.device.resolve_device`, except
    that "auto" is the CPU for ONNX Runtime (which runs only there) even where a GPU is present."""
    if backend == "onnxruntime" and str(device) == "auto":
        return torch.device("cpu")
    return resolve_device(device)


def check_backend(backend: str, device: torch.device) -> None:
    """Refuse an unknown ``backend``, or ONNX Runtime on another device than the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime" and device.type != "cpu":
        raise ValueError(
            f"backend 'onnxruntime' runs on the CPU only, not on {device}: use device 'cpu' (or "
            "'auto'), or backend 'torch' on the GPU"
        )


def _batch_images(images: np.ndarray | Sequence[np.ndarray]) -> tuple[list[np.ndarray], bool]:
    """The images of :meth:`Predictor.predict`'s argument, each checked, and whether it was a single one."""
    if isinstance(images, np.ndarray):
        if images.ndim not in (2, 3, 4):
            raise ValueError(
                f"images: expected an HxWx3 uint8 array, a BxHxWx3 one or a sequence of HxWx3 arrays, got an "
                f"array of shape {images.shape}"
            )
        single = images.ndim in (2, 3)  # a 2-D array is one (grey) image, refused with the conversion to use
        batch = [images] if single else list(images)
    elif isinstance(images, Iterable) and not isinstance(images, (str, bytes)):
        single, batch = False, list(images)  # a list, a tuple, map(cv2.imread, paths), ...
    else:
        unread = " (cv2.imread returns None for a file it cannot read)" if images is None else ""
        raise TypeError(
            f"images: expected an HxWx3 uint8 numpy array or a sequence of them, got {type(images).__name__}"
            f"{unread}"
        )
    if not batch:
        raise ValueError("no images given")
    for i, image in enumerate(batch):
        check_image(image, i)
    return batch, single


#: Config fields the caller may set otherwise than the model's own (the input size, decode settings, the
#: name); an int8 graph may record them otherwise too (:func:`~mcn_ros.model.quantize.check_graph_config`).
CALLER_CONFIG_FIELDS = ("input_size", "decode", "name")


def with_caller_fields(other: ModelConfig, config: ModelConfig) -> ModelConfig:
    """``other`` with ``config``'s :data:`CALLER_CONFIG_FIELDS`: equal to ``config`` where both describe one
    network."""
    return dataclasses.replace(other, **{field: getattr(config, field) for field in CALLER_CONFIG_FIELDS})


def check_config_matches(model: nn.Module, config: ModelConfig) -> None:
    """Refuse a ``config`` that describes another network than ``model`` (its ``config``): classes, heads,
    normalisation and architecture must agree; the input size and decode settings are the caller's to set.
    Otherwise classes would be named wrongly, or images normalised as the network was not trained."""
    built = getattr(model, "config", None)
    if not isinstance(built, ModelConfig):
        return
    own = with_caller_fields(built, config)
    if own != config:
        found = first_difference(dataclasses.asdict(config), dataclasses.asdict(own))
        where = (
            f" (first difference: {found[0]}: {found[1]!r} given, the model's is {found[2]!r})"
            if found
            else ""
        )
        raise ValueError(
            f"the config given does not describe this model{where}: pass the model's own config "
            "(model.config), changing only input_size or decode"
        )


class Predictor:
    """Runs a :class:`MultitaskCenterNet` on numpy images: letterbox, forward, decode, map back.

    ``precision``: "fp32" (default), "fp16" or "bf16" (:class:`~mcn_ros.model.precision.Precision`: autocast
    on CUDA; bf16 also on a CPU with native bf16, as a bfloat16 copy of the model; where the request cannot
    be used it warns, runs fp32 and says why in ``precision.note``). ``channels_last`` uses the NHWC memory
    format (faster convs on GPUs and CPUs).
    ``rect`` (default True): letterbox into a camera-shaped input, the smallest multiples of 32 that hold the
    image at the scale of ``config.input_size`` (:func:`~mcn_ros.model.preprocess.rect_input_size`; a
    640x480 image in a 512x512 model runs at 512x384, a quarter less work); False: always
    ``config.input_size``. Results are in original pixels either way. ``backend``: "torch" (eager PyTorch,
    any device) or "onnxruntime" (CPU only, the optional onnxruntime package: :mod:`mcn_ros.model.backends`;
    the forward exported once per task set, decoding unchanged). ``fold_bn`` (torch backend, default True):
    run an inference copy with the BatchNorms folded into the convs
    (:func:`~mcn_ros.model.backends.fold_batch_norms`); ``model`` stays the module given, and weights
    loaded into it later are not seen by the folded copy, nor by ONNX Runtime's sessions (make a new
    Predictor). The module given is moved to the device, put in eval mode and, with ``channels_last``, into
    that memory format: pass a copy (``copy.deepcopy``) of a module that goes on training.
    ``precision="int8"`` (backend "onnxruntime", a CPU with VNNI or AMX) runs ``int8_graph``: the path of
    the graph :mod:`mcn_ros.model.quantize` calibrated from this model's weights, or that graph itself as
    an ONNX ModelProto, checked alike (the weights' fingerprint, the config it was made under);
    :meth:`from_weights` looks beside the weights file by default. Where int8 falls back to fp32 (a CPU
    without int8 dot products), the graph is still checked when there and the note says whether it was
    found.
    ``cuda_graphs`` (torch backend on CUDA, default False): replay the forward from CUDA graphs, one
    captured per input shape and task set (:mod:`mcn_ros.model.cuda_graphs`; the first frame of each shape
    is slower); where it cannot be used (no CUDA, deformable convolutions) it warns, runs eager and says why
    in ``cuda_graphs_note``. ``graph_decoding`` (with ``cuda_graphs``, default False): :meth:`predict`
    replays the forward and decoding together, one graph per batch of image sizes, task set and decode
    settings (for camera streams: images of ever new sizes would capture again and again); not with
    ``flip_test`` or bilinear segmentation resampling, which run the forward's graph and decode eagerly. A
    capture that fails warns and leaves decoding outside the graph. Tested for equal results on
    the CPU, not yet run on a GPU: off by default until it has been.
    ``torch_compile`` (torch backend, default False): the forward compiled by ``torch.compile`` (inductor,
    the weights frozen into each input shape's compiled code at its first call: give the Predictor its
    weights before it runs, as with ``fold_bn``). Each new input shape, batch size or task set compiles first
    (seconds; past torch's recompile limit, 8, new ones run eagerly, said in ``torch_compile_note``); on the
    CPU inductor needs a C++ compiler. On a 2-core Xeon with AMX it ran the forward 1.13-1.16x faster in bf16,
    1.04x in fp32 (bench/results/e2e_cpu.md, the forward step). Where it cannot be used (backend
    onnxruntime, with ``cuda_graphs``) it warns and says why in ``torch_compile_note``; a compilation that
    fails warns, says why there and leaves the eager forward serving.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ModelConfig,
        device: str | torch.device = "cpu",
        precision: bool | str = "fp32",
        channels_last: bool = True,
        rect: bool = True,
        backend: str = "torch",
        fold_bn: bool = True,
        int8_graph: str | Path | Any | None = None,
        cuda_graphs: bool = False,
        graph_decoding: bool = False,
        torch_compile: bool = False,
    ) -> None:
        if graph_decoding and not cuda_graphs:
            raise ValueError("graph_decoding puts decoding in the forward's CUDA graphs: needs cuda_graphs")
        self.config = config
        self.rect = rect
        self.backend = backend
        self.device = backend_device(device, backend)
        check_backend(backend, self.device)
        check_config_matches(model, config)
        self.precision = Precision.resolve(precision, self.device, backend)
        graph = None
        if backend == "onnxruntime" and parse_precision(precision) == "int8":
            if self.precision.name == "int8":
                graph = _int8_graph(int8_graph, model, config)
            elif self.precision.note is not None:  # fp32 here: the graph still checked, found or not said
                note = self.precision.note + int8_fallback_note(int8_graph, model, config)
                self.precision = dataclasses.replace(self.precision, note=note)
        if self.precision.note is not None:
            warnings.warn(self.precision.note, stacklevel=2)
        model = model.to(self.device).eval()
        self._onnx: OnnxRuntimeForward | None = None
        if backend == "onnxruntime":
            self._onnx = OnnxRuntimeForward(model, config, graph=graph)
            channels_last = False  # ONNX Runtime takes contiguous NCHW arrays
        self.channels_last = channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._run_model = model
        if fold_bn and self._onnx is None:
            self._run_model = fold_batch_norms(model)
        if self.precision.model_dtype != torch.float32 and self._onnx is None:
            if self._run_model is model:  # the caller's module keeps its float32 weights
                self._run_model = copy.deepcopy(model)
            self._run_model = self._run_model.to(self.precision.model_dtype)
        if self._run_model is not model and channels_last:
            self._run_model = self._run_model.to(memory_format=torch.channels_last)
        # A replayed graph's inputs and outputs are shared buffers, and a capture fails when another thread
        # uses the GPU meanwhile: with CUDA graphs, calls take turns, each whole (re-entered by predict's
        # forward, hence re-entrant).
        self._graph_turns = threading.RLock()
        self._graphed: GraphedCalls[dict[str, Tensor]] | None = None
        self._graphed_decoding: GraphedCalls[DecodedTensors] | None = None
        self._cuda_graphs_refused: str | None = None
        reason = graph_unsafe_reason(self._run_model, self.device)  # onnxruntime runs on the CPU only
        #: Whether ``cuda_graphs=True`` would replay graphs here (a speed hint where it is off).
        self.cuda_graphs_possible = reason is None
        if cuda_graphs:
            if reason is None:  # the graphs hold the module, not this Predictor (no reference cycle)
                forward = functools.partial(
                    run_module, self._run_model, self.device, self.precision.autocast_dtype
                )
                self._graphed = GraphedCalls(forward)
                if graph_decoding:
                    self._graphed_decoding = GraphedCalls(
                        functools.partial(forward_and_decode, forward, config),
                        "decoding runs after the forward's graph",
                    )
            else:
                self._cuda_graphs_refused = f"{reason}; the forward runs eagerly"
                warnings.warn(self._cuda_graphs_refused, stacklevel=2)
        self._compiled: nn.Module | None = None
        #: Why ``torch_compile`` asked for is not used (refused here, or the compilation failed), or not for
        #: every input (past the recompile limit); else None.
        self.torch_compile_note: str | None = None
        if torch_compile:
            if self._onnx is not None or self._graphed is not None:
                where = "backend onnxruntime" if self._onnx is not None else "cuda_graphs"
                self.torch_compile_note = f"torch_compile compiles the torch forward, not {where}: not used"
                warnings.warn(self.torch_compile_note, stacklevel=2)
            else:
                # isolate_recompiles: this Predictor's compilations count against its own recompile limit,
                # not against those of every compiled module in the process (a node configured anew).
                # torch 2.14's typing overloads of torch.compile lack the argument its signature has.
                compile_module = cast(Any, torch.compile)
                compiled = compile_module(
                    self._run_model, options={"freezing": True}, dynamic=False, isolate_recompiles=True
                )
                self._compiled = cast(nn.Module, compiled)
        #: The (input shape, dtype, tasks) the compiled forward has been called with: each compiled its own.
        self._compiled_inputs: set[tuple[tuple[int, ...], tuple[int, ...], torch.dtype, frozenset[str]]] = (
            set()
        )
        self._compile_turns = threading.Lock()

    @classmethod
    def from_weights(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        precision: bool | str = "fp32",
        channels_last: bool = True,
        rect: bool = True,
        backend: str = "torch",
        fold_bn: bool = True,
        int8_graph: str | Path | None = None,
        cuda_graphs: bool = False,
        graph_decoding: bool = False,
        torch_compile: bool = False,
    ) -> Predictor:
        """Load a weights file (:mod:`mcn_ros.model.weights`); ``device="auto"`` picks CUDA if present.
        ``int8_graph`` defaults to the weights' own (``<name>.int8.onnx`` beside them); None or "" (the node's
        empty parameter) means that one."""
        from mcn_ros.model.quantize import default_int8_path

        resolved = backend_device(device, backend)
        check_backend(backend, resolved)  # before the weights go to a device the backend cannot use
        model, config, _ = load_weights(path, device=resolved)
        return cls(
            model, config, device, precision, channels_last, rect=rect, backend=backend, fold_bn=fold_bn,
            int8_graph=int8_graph if int8_graph is not None and str(int8_graph).strip() else
            default_int8_path(path), cuda_graphs=cuda_graphs,
            graph_decoding=graph_decoding, torch_compile=torch_compile,
        )  # fmt: skip

    @property
    def cuda_graphs(self) -> bool:
        """Whether the forward replays CUDA graphs (asked, possible here, and no capture has failed)."""
        return self._graphed is not None and self._graphed.failure is None

    @property
    def graph_decoding(self) -> bool:
        """Whether :meth:`predict` replays the forward and decoding from one graph (asked, and no capture of
        either has failed)."""
        graphs = self._graphed_decoding
        return self.cuda_graphs and graphs is not None and graphs.failure is None

    @property
    def cuda_graphs_note(self) -> str | None:
        """Why CUDA graphs asked for are not used, or not for decoding (refused here, or a capture failed);
        None otherwise."""
        if self._graphed is not None:
            decoding = self._graphed_decoding
            return self._graphed.failure or (decoding.failure if decoding is not None else None)
        return self._cuda_graphs_refused

    @property
    def tasks(self) -> frozenset[str]:
        """The tasks this model can run."""
        return self.config.tasks

    def input_size(self, image_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """The network input (H, W) for images of ``image_sizes`` (h, w): camera-shaped with ``rect``."""
        if self.rect:
            return rect_input_size(image_sizes, self.config.input_size)
        return self.config.input_size

    def forward(self, batch: Tensor, tasks: Collection[str], flip_test: bool = False) -> dict[str, Tensor]:
        """Raw outputs (float32) for a preprocessed batch, optionally merged with the flipped batch."""
        asked = resolve_tasks(self.config, tasks)
        if flip_test:
            batch = torch.cat((batch, batch.flip(-1)), dim=0)
        if batch.dtype != self.precision.model_dtype and self._onnx is None:
            batch = batch.to(self.precision.model_dtype)
        if self._onnx is not None:
            outputs = {k: v.float() for k, v in self._onnx(batch, asked).items()}
        elif self._graphed is not None:  # copies: the next replay overwrites the graph's outputs
            with self._graph_turns:
                outputs = {k: v.clone() for k, v in self._graphed(batch, asked).items()}
        else:
            outputs = self._eager_forward(batch, asked)
        if flip_test:
            outputs = merge_flipped(outputs, batch.shape[0] // 2)
        return outputs

    @property
    def torch_compile(self) -> bool:
        """Whether the forward runs compiled by ``torch.compile`` (asked, possible, not failed)."""
        return self._compiled is not None

    def _may_compile(self, batch: Tensor, tasks: frozenset[str]) -> bool:
        """Whether ``batch`` and ``tasks`` go to the compiled forward: those it has seen, and new ones while
        torch's recompile limit allows. Past the limit dynamo would run them eagerly with only a log line:
        here they run eagerly too, and ``torch_compile_note`` says so (warned once)."""
        key = (tuple(batch.shape), batch.stride(), batch.dtype, tasks)  # dynamo guards on strides too
        if key in self._compiled_inputs:
            return True
        limit = int(torch._dynamo.config.recompile_limit)
        with self._compile_turns:  # two threads with new inputs must not both take the last place
            if key in self._compiled_inputs or len(self._compiled_inputs) < limit:
                self._compiled_inputs.add(key)
                return True
        if self.torch_compile_note is None:
            self.torch_compile_note = (
                f"torch.compile has compiled the forward for {limit} input shapes, memory layouts, batch "
                "sizes or task sets, torch's recompile limit (torch._dynamo.config.recompile_limit): new "
                "ones run eagerly"
            )
            warnings.warn(self.torch_compile_note, stacklevel=3)
        return False

    def _eager_forward(self, batch: Tensor, tasks: frozenset[str]) -> dict[str, Tensor]:
        """The torch module's outputs (float32) for ``batch``, under autocast where the precision asks
        (compiled by ``torch.compile`` where asked)."""
        compiled = self._compiled
        if compiled is not None and self._may_compile(batch, tasks):
            try:
                return run_module(compiled, self.device, self.precision.autocast_dtype, batch, tasks)
            except Exception as error:
                # The eager forward tells the compiler's failures (no C++ compiler, an op inductor cannot
                # lower) from the batch's: where it fails too, the error is the caller's, as uncompiled.
                eager = self._run_model
                outputs = run_module(eager, self.device, self.precision.autocast_dtype, batch, tasks)
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                self._compiled = None  # before the note: a reader of both never sees "on" with this note
                self.torch_compile_note = f"torch.compile failed ({first}); the forward runs eagerly"
                warnings.warn(self.torch_compile_note, stacklevel=2)
                return outputs
        return run_module(self._run_model, self.device, self.precision.autocast_dtype, batch, tasks)

    @overload
    def predict(
        self,
        images: np.ndarray,
        tasks: Collection[str] | None = ...,
        color_order: str = ...,
        score_threshold: float = ...,
        pose_score_threshold: float = ...,
        kp_snap_score: float | None = ...,
        max_detections: int = ...,
        flip_test: bool = ...,
        segmentation_resampling: str = ...,
    ) -> Results | list[Results]: ...

    @overload
    def predict(
        self,
        images: Sequence[np.ndarray],
        tasks: Collection[str] | None = ...,
        color_order: str = ...,
        score_threshold: float = ...,
        pose_score_threshold: float = ...,
        kp_snap_score: float | None = ...,
        max_detections: int = ...,
        flip_test: bool = ...,
        segmentation_resampling: str = ...,
    ) -> list[Results]: ...

    def predict(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        tasks: Collection[str] | None = None,
        color_order: str = "rgb",
        score_threshold: float = 0.3,
        pose_score_threshold: float = 0.3,
        kp_snap_score: float | None = None,
        max_detections: int = 100,
        flip_test: bool = False,
        segmentation_resampling: str = "nearest",
    ) -> Results | list[Results]:
        """Detect / estimate poses / segment ``images`` (HxWx3 uint8, any sizes, ``color_order`` rgb or bgr).

        A single HxWx3 array gives one :class:`Results`; a sequence (or a BxHxWx3 array) gives a list. With
        ``rect``, images whose camera-shaped inputs differ run in separate forwards, one per input shape, so
        that an image's results never depend on the others in the batch. May be called from several threads
        (with CUDA graphs the calls take turns; threads sharing one CUDA stream, as by default).
        ``tasks`` (None = all configured) selects the heads that run. ``kp_snap_score`` overrides the
        config's ``decode.kp_snap_score`` (minimum keypoint-heatmap peak score used for snapping; it does not
        filter keypoints): every keypoint keeps its slot with its score, so consumers compare scores to their
        own threshold. Up to ``max_detections`` boxes and poses per image (the config's ``decode.top_k``
        peaks are taken, or ``max_detections`` if that is larger). ``segmentation_resampling`` "nearest"
        or "bilinear" (:attr:`~mcn_ros.model.decode.DecodeOptions.segmentation_resampling`).
        """
        batch_images, single = _batch_images(images)
        asked = resolve_tasks(self.config, tasks)
        if not asked:
            raise ValueError(f"no task asked: tasks must name at least one of {sorted(self.config.tasks)}")
        options = DecodeOptions.from_config(
            self.config.decode,
            score_threshold=score_threshold,
            pose_score_threshold=pose_score_threshold,
            max_detections=max_detections,
            kp_snap_score=kp_snap_score,
            segmentation_resampling=segmentation_resampling,
        )
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in batch_images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(self.input_size([size]), []).append(i)
        found: dict[int, Results] = {}
        turns = self._graph_turns if self._graphed is not None else contextlib.nullcontext()
        with turns:
            for input_hw, members in groups.items():
                group = self._predict_group(
                    [batch_images[i] for i in members], [sizes[i] for i in members], input_hw, asked,
                    color_order, options, flip_test,
                )  # fmt: skip
                found.update(zip(members, group, strict=True))
        results = [found[i] for i in range(len(sizes))]
        return results[0] if single else results

    def _predict_group(
        self,
        images: list[np.ndarray],
        sizes: list[tuple[int, int]],
        input_hw: tuple[int, int],
        tasks: frozenset[str],
        color_order: str,
        options: DecodeOptions,
        flip_test: bool,
    ) -> list[Results]:
        """:meth:`predict` for images that share the network input ``input_hw``."""
        batch, letterboxes = preprocess(
            images,
            input_hw,
            self.config.mean,
            self.config.std,
            device=self.device,
            color_order=color_order,
            channels_last=self.channels_last,
        )
        graphs = self._graphed_decoding if self.graph_decoding else None
        # Not with flip_test, nor bilinear resampling, which reads the class map: not in a graph.
        if graphs is not None and not flip_test and options.segmentation_resampling == "nearest":
            decoded = graphs(  # predict holds the turn: the next replay overwrites these outputs
                batch.to(self.precision.model_dtype), tasks, tuple(letterboxes), tuple(sizes), options
            )
            return unpack_results(decoded, sizes, tasks)
        outputs = self.forward(batch, tasks, flip_test=flip_test)
        return decode_batch(outputs, letterboxes, sizes, self.config, tasks, options)
