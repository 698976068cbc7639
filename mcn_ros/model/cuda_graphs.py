"""Calls replayed from CUDA graphs: the forward (or the forward and decoding) captured once per input shape,
layout and arguments, then each call copies the batch into the captured input and replays every kernel at
once.

On a fast GPU the MCN's eager forward is bound by launching its kernels one by one from Python (an H200 ran
the ResNet-18 three-task forward in 4.0 ms eager and 0.8 ms replayed: bench/results/gpu_overheads.md).
torchvision's deformable convolution (DLA-34 with DCN) does not replay correctly in a graph, so models with
one are not captured (:func:`graph_unsafe_reason`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor, nn

from mcn_ros.model.backbones import ModulatedDeformConv2d

#: Graphs kept at once (least recently used dropped first): one per camera shape and batch size in use.
MAX_GRAPHS = 8
#: Eager calls on a side stream before a capture (lets lazy initialisation, e.g. cuBLAS workspaces, happen
#: outside the graph, as torch's documentation asks).
WARMUP_CALLS = 2

#: What a graphed function returns: tensors, in a dict or a (named) tuple.
Outputs = TypeVar("Outputs")


def graph_unsafe_reason(model: nn.Module, device: torch.device) -> str | None:
    """Why ``model`` on ``device`` cannot run from CUDA graphs, or None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device}"
    if any(isinstance(module, ModulatedDeformConv2d) for module in model.modules()):
        return (
            "CUDA graphs are not used with deformable convolutions (use_dcn): torchvision's deform_conv2d "
            "does not replay correctly in a graph"
        )
    return None


class CaptureError(RuntimeError):
    """The capture itself failed (an operation a CUDA graph cannot hold), not the eager warm-up before it."""


@dataclass
class _Captured(Generic[Outputs]):
    graph: torch.cuda.CUDAGraph
    batch: Tensor  # the captured input: each call copies its batch here
    outputs: Outputs  # the captured outputs, overwritten by each replay


class GraphedCalls(Generic[Outputs]):
    """``function(batch, *args)`` run from CUDA graphs, one captured per (batch shape, dtype, strides, args).

    ``args`` (hashable: task sets, letterboxes, options) are part of the key: the function must do the same
    work for the same key whatever the batch's values. The first call with a new key captures (a few eager
    calls, then the capture: slower once); later ones replay. A call returns the graph's own outputs, which
    the next replay of that graph overwrites: copy what must outlive it. The graph holds its outputs and
    nothing else the function made: a tensor it read from outside the capture (a cached constant) stays
    alive with the graph only if it is among the outputs. One caller at a time (the node runs all inference
    on one thread). Each graph keeps its own memory pool. A capture that fails (an operation that cannot run
    in a graph) warns once, says why and what now happens (``fallback``) in ``failure``, and every call from
    then on runs ``function`` eagerly; an error of the eager warm-up calls before it (out of memory, say) is
    the caller's, as it would be without graphs, and leaves graphs in use.
    """

    def __init__(
        self,
        function: Callable[..., Outputs],
        fallback: str = "the forward runs eagerly",
        max_graphs: int = MAX_GRAPHS,
    ) -> None:
        self._function = function
        self._fallback = fallback
        self._max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[object, ...], _Captured[Outputs]] = OrderedDict()
        self.failure: str | None = None

    @property
    def captured(self) -> int:
        """How many graphs are held."""
        return len(self._graphs)

    def __call__(self, batch: Tensor, *args: Hashable) -> Outputs:
        if self.failure is not None:
            return self._function(batch, *args)
        key = (tuple(batch.shape), batch.dtype, batch.stride(), *args)
        captured = self._graphs.get(key)
        if captured is None:
            try:
                captured = self._capture(batch, args)
            except CaptureError as error:
                self.failure = f"CUDA graph capture failed ({str(error).splitlines()[0]}); {self._fallback}"
                self._graphs.clear()
                warnings.warn(self.failure, stacklevel=2)
                return self._function(batch, *args)
            self._graphs[key] = captured
            while len(self._graphs) > self._max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        captured.batch.copy_(batch)
        captured.graph.replay()
        return captured.outputs

    def _capture(self, batch: Tensor, args: tuple[Hashable, ...]) -> _Captured[Outputs]:
        """Warm up, then capture on ``batch``'s device; :class:`CaptureError` where the capture fails."""
        device = batch.device
        with torch.inference_mode(False):  # a normal tensor: each call's copy into it may be in or out
            static = batch.clone()  # same shape, dtype and memory format
        # The current device is batch's throughout: torch.cuda.graph synchronizes and allocates on the current
        # device, and kernels launched on another device's stream would not be captured (an empty graph).
        with torch.cuda.device(device):
            caller = torch.cuda.current_stream(device)
            side = torch.cuda.Stream(device=device)
            side.wait_stream(caller)
            with torch.cuda.stream(side):  # warm-up also fills the callers' caches outside the graph
                for _ in range(WARMUP_CALLS):
                    self._function(static, *args)
            caller.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=side):
                    outputs = self._function(static, *args)
            except RuntimeError as error:
                # A failed capture's exit skips restoring the caller's stream; the first error says why (the
                # one raised is often "operation failed due to a previous error during capture").
                torch.cuda.set_stream(caller)
                cause = error.__context__ if isinstance(error.__context__, Exception) else error
                raise CaptureError(str(cause)) from error
        return _Captured(graph, static, outputs)
