"""The heads' 3x3 convs fused into one conv (the same maths): does it run faster on the CPU?

    python bench/head_fusion.py [--rounds 30] [--threads 2]

The paper's ResNet-18 three-task config (config/models/resnet18_det80_seg80_pose_512.yaml, random init,
seed 0) at the camera-shaped 512x384 input: its seven head branches (3x3 conv 64 -> 64 + ReLU + 1x1 conv)
all read the same stride-4 feature map [1, 64, 96, 128]. Fused, the seven 3x3 convs are one conv to
7 x 64 channels, and each 1x1 conv reads its branch's 64-channel slice: the same outputs up to float
rounding (the largest difference is recorded). Fused within each task's head instead (3 + 3 + 1 convs) is
what a forward that runs only the asked tasks' heads could use; timed in PyTorch too. The forms run on the
stored feature map in PyTorch (BatchNorm-free heads, channels_last, as the torch backend runs them) and
in ONNX Runtime (CPU provider, the backend's session options), interleaved rounds in one run, next to the
whole forward in PyTorch, so the heads' share of it is visible. Not shipped unless it wins here.

Writes bench/results/head_fusion.json and .md.
"""

from __future__ import annotations

import argparse
import io
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from _common import git_commit, machine, versions, write_record
from _timing import interleaved, onnxruntime_version, stats
from torch import Tensor, nn

from mcn_ros.model.backends import fold_batch_norms, import_onnxruntime, session_options
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.mcn import MultitaskCenterNet

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CONFIG = REPO / "config" / "models" / "resnet18_det80_seg80_pose_512.yaml"
#: Network input (height, width): a 640x480 camera at the config's 512 scale.
INPUT = (384, 512)


class SeparateHeads(nn.Module):
    """The model's heads as it runs them: each branch on the feature map, outputs in a fixed order."""

    def __init__(self, model: MultitaskCenterNet) -> None:
        super().__init__()
        self.heads = model.heads

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        outputs: dict[str, Tensor] = {}
        for head in self.heads.values():
            outputs.update(head(features))
        return tuple(outputs[name] for name in sorted(outputs))


class _FusedBranches(nn.Module):
    """Branches whose 3x3 convs are concatenated into one conv; each 1x1 conv reads its 64-channel slice."""

    def __init__(self, branches: list[nn.Sequential]) -> None:
        super().__init__()
        firsts: list[nn.Conv2d] = []
        for branch in branches:
            conv = branch[0]
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            firsts.append(conv)
        self.width = firsts[0].out_channels
        self.conv = nn.Conv2d(firsts[0].in_channels, self.width * len(firsts), 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([conv.weight for conv in firsts]))
            self.conv.bias.copy_(torch.cat([conv.bias for conv in firsts]))  # type: ignore[misc,union-attr]
        self.outputs = nn.ModuleList([branch[2] for branch in branches])

    def forward(self, features: Tensor) -> list[Tensor]:
        hidden = torch.relu(self.conv(features))
        return [conv(hidden[:, i * self.width : (i + 1) * self.width]) for i, conv in enumerate(self.outputs)]


class FusedHeads(nn.Module):
    """The model's head branches, fused all into one conv (``per_task`` False) or within each task's head
    (``per_task``: what a forward that runs only the asked tasks' heads could use); outputs in
    :class:`SeparateHeads`' order."""

    def __init__(self, model: MultitaskCenterNet, per_task: bool) -> None:
        super().__init__()
        groups: list[dict[str, nn.Sequential]] = []
        for head in model.heads.values():
            branches = {n: m for n, m in head.named_children() if isinstance(m, nn.Sequential)}
            if per_task or not groups:
                groups.append(branches)
            else:
                groups[0].update(branches)
        self.names = [name for group in groups for name in group]
        self.groups = nn.ModuleList([_FusedBranches(list(group.values())) for group in groups])
        self.order = [self.names.index(name) for name in sorted(self.names)]

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        outputs = [output for group in self.groups for output in group(features)]
        return tuple(outputs[i] for i in self.order)


def onnx_session(module: nn.Module, example: Tensor, threads: int) -> Any:
    """An ONNX Runtime session of ``module`` (input ``features``) with the backend's options."""
    ort = import_onnxruntime()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            input_names=["features"],
            opset_version=17,
            dynamo=False,
        )
    return ort.InferenceSession(
        buffer.getvalue(), session_options(ort, threads), providers=["CPUExecutionProvider"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    torch.manual_seed(0)
    config = ModelConfig.from_yaml(CONFIG)
    folded = fold_batch_norms(MultitaskCenterNet(config).eval()).to(memory_format=torch.channels_last)
    model = cast(MultitaskCenterNet, folded)  # the same class, its backbone and up-path folded
    images = torch.randn(1, 3, *INPUT).contiguous(memory_format=torch.channels_last)
    separate = SeparateHeads(model).eval()
    fused = FusedHeads(model, per_task=False).eval()
    per_task = FusedHeads(model, per_task=True).eval()
    with torch.no_grad():  # not inference mode: the ONNX export below traces with these features
        features = model.features(images).contiguous(memory_format=torch.channels_last)
        expected = separate(features)
        scale = max(float(t.abs().max()) for t in expected)
        difference = max(
            float((a - b).abs().max())
            for candidate in (fused, per_task)
            for a, b in zip(expected, candidate(features), strict=True)
        )
    feed = {"features": features.contiguous().numpy()}
    sessions = {
        name: onnx_session(module, features, args.threads)
        for name, module in (("sep", separate), ("fused", fused))
    }
    ort_outputs = [sessions[name].run(None, feed) for name in ("sep", "fused")]
    ort_difference = max(
        float(np.abs(a - b).max()) for a, b in zip(ort_outputs[0], ort_outputs[1], strict=True)
    )

    def torch_call(module: nn.Module, x: Tensor) -> Any:
        def call() -> object:
            with torch.inference_mode():
                return module(x)

        return call

    contenders = {
        "torch_forward": torch_call(model, images),
        "torch_heads_separate": torch_call(separate, features),
        "torch_heads_fused": torch_call(fused, features),
        "torch_heads_fused_per_task": torch_call(per_task, features),
        "onnxruntime_heads_separate": lambda: sessions["sep"].run(None, feed),
        "onnxruntime_heads_fused": lambda: sessions["fused"].run(None, feed),
    }
    times = interleaved(contenders, args.rounds, warmup=2, threads=args.threads, settle=1)
    timing = {name: stats(samples) for name, samples in times.items()}
    median = {name: value["median_ms"] for name, value in timing.items()}
    arguments = sys.argv[1:] if argv is None else list(argv)
    record = {
        "benchmark": "head_fusion",
        "config": str(CONFIG.relative_to(REPO)),
        "input": list(INPUT),
        "features": list(features.shape),
        "branches": sorted(fused.names),
        "timing": timing,
        "fused_vs_separate_speedup": {
            "torch": round(median["torch_heads_separate"] / median["torch_heads_fused"], 3),
            "torch_per_task": round(median["torch_heads_separate"] / median["torch_heads_fused_per_task"], 3),
            "onnxruntime": round(median["onnxruntime_heads_separate"] / median["onnxruntime_heads_fused"], 3),
        },
        "heads_share_of_torch_forward": round(median["torch_heads_separate"] / median["torch_forward"], 3),
        "max_abs_difference": {"torch": difference, "onnxruntime": ort_difference, "output_scale": scale},
        "threads": args.threads,
        "command": shlex.join(["python", "bench/head_fusion.py", *arguments]),
        "wall_s": round(time.perf_counter() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": {**versions(), "onnxruntime": onnxruntime_version()},
        "git": git_commit(),
    }
    write_record(args.out, "head_fusion", record, render(record))
    return 0


def render(record: dict[str, Any]) -> str:
    """The .md table beside the JSON."""
    timing, speedup = record["timing"], record["fused_vs_separate_speedup"]
    height, width = record["input"]
    rows = [
        "# Head branches' 3x3 convs fused into one conv (CPU)",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git']}; {record['machine']['cpu']}, "
        f"{record['threads']} threads). Paper config ResNet-18 three tasks at {height}x{width}: "
        f"{len(record['branches'])} branches on the feature map {record['features']}; interleaved rounds.",
        "",
        "| run | median ms | p95 ms |",
        "|---|---:|---:|",
    ]
    for name, value in timing.items():
        rows.append(f"| {name.replace('_', ' ')} | {value['median_ms']:.1f} | {value['p95_ms']:.1f} |")
    difference = record["max_abs_difference"]
    rows += [
        "",
        f"Fused against separate: **{speedup['torch']:.2f}x** in PyTorch, **{speedup['onnxruntime']:.2f}x** "
        f"in ONNX Runtime, fused within each task's head {speedup['torch_per_task']:.2f}x in PyTorch "
        "(above 1 = fused faster). The heads take "
        f"{100 * record['heads_share_of_torch_forward']:.0f} % of the PyTorch forward. Largest output "
        f"difference fused vs separate: {difference['torch']:.2e} (PyTorch), {difference['onnxruntime']:.2e} "
        f"(ONNX Runtime), outputs up to {difference['output_scale']:.2f}.",
        "",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
