"""The forward replayed from CUDA graphs: captured once per input shape, layout and task set, then each call
copies the batch into the captured input and replays every kernel at once.

On a fast GPU the MCN's eager forward is bound by launching its kernels one by one from Python (an H200 ran
the ResNet-18 three-task forward in 4.0 ms eager and 0.8 ms replayed: bench/results/gpu_overheads.md).
torchvision's deformable convolution (DLA-34 with DCN) does not replay correctly in a graph, so models with
one are not captured (:func:`graph_unsafe_reason`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mcn_ros.model.backbones import ModulatedDeformConv2d

#: Graphs kept at once (least recently used dropped first): one per camera shape and batch size in use.
MAX_GRAPHS = 8
#: Eager calls on a side stream before a capture (lets lazy initialisation, e.g. cuBLAS workspaces, happen
#: outside the graph, as torch's documentation asks).
WARMUP_CALLS = 2

Forward = Callable[[Tensor, frozenset[str]], dict[str, Tensor]]


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


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    batch: Tensor  # the captured input: each call copies its batch here
    outputs: dict[str, Tensor]  # the captured outputs, overwritten by each replay


class GraphedForward:
    """``forward(batch, tasks)`` run from CUDA graphs, one captured per (shape, dtype, strides, tasks).

    The first call with a new key captures (a few eager calls, then the capture: slower once); later ones
    replay. Outputs are copies, so they stay valid after the next call. A capture that fails (an operation
    that cannot run in a graph) warns once, says why in ``failure``, and every call from then on runs the
    forward eagerly.
    """

    def __init__(self, forward: Forward, max_graphs: int = MAX_GRAPHS) -> None:
        self._forward = forward
        self._max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[object, ...], _Captured] = OrderedDict()
        self.failure: str | None = None

    @property
    def captured(self) -> int:
        """How many graphs are held."""
        return len(self._graphs)

    def __call__(self, batch: Tensor, tasks: frozenset[str]) -> dict[str, Tensor]:
        if self.failure is not None:
            return self._forward(batch, tasks)
        key = (tuple(batch.shape), batch.dtype, batch.stride(), tasks)
        captured = self._graphs.get(key)
        if captured is None:
            try:
                captured = self._capture(batch, tasks)
            except RuntimeError as error:
                self.failure = (
                    f"CUDA graph capture failed ({str(error).splitlines()[0]}); the forward runs eagerly"
                )
                self._graphs.clear()
                warnings.warn(self.failure, stacklevel=2)
                return self._forward(batch, tasks)
            self._graphs[key] = captured
            while len(self._graphs) > self._max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        captured.batch.copy_(batch)
        captured.graph.replay()
        return {name: value.clone() for name, value in captured.outputs.items()}

    def _capture(self, batch: Tensor, tasks: frozenset[str]) -> _Captured:
        with torch.inference_mode(False):  # a normal tensor: each call's copy into it may be in or out
            static = batch.clone()  # same shape, dtype and memory format
        side = torch.cuda.Stream(device=batch.device)
        side.wait_stream(torch.cuda.current_stream(batch.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._forward(static, tasks)
        torch.cuda.current_stream(batch.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self._forward(static, tasks)
        return _Captured(graph, static, outputs)
