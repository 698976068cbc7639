"""Raw forward on the CPU: the MCN against its single-task networks (STN) and three YOLO nano networks.

    python bench/model_cpu.py [--threads 2] [--rounds 10] [--quick] [--out bench/results]

For every shipped model config (``config/models/*_512.yaml``) and the single-task composites of the paper's
Table 4 / Figure 7 (ResNet-18 and DLA-34: Only Det 80 + Only Seg 80 + Det 1 & Pose), and for YOLO26n x3
and YOLO11n x3 built from ultralytics' own model YAMLs with the MCN's class counts (detect 80, pose 1,
segmentation 81 or 80 instance classes; random init, Conv+BN fused and in the memory layout their
predictor runs them in):
parameters, GFLOPs, forward latency (median, p95) at 512x512 and at the camera-shaped 384x512 input (a
640x480 image letterboxed at scale 0.8), and the achieved GFLOP/s against a 2048 matrix product's in the
same run. Batch 1, float32, ``--threads`` torch threads, random weights,
interleaved rounds. The MCN runs as ``Predictor`` runs it (BatchNorms folded, channels_last; ONNX Runtime
too when installed).

Headlines: ``mcn_vs_stn_speedup`` (ResNet-18, sum of the three STN forwards / the MCN's),
``mcn_vs_yolo26n_speedup`` and ``mcn_vs_yolo11n_speedup`` (the three YOLO forwards / the ResNet-18 MCN's),
at 512x512 and at the camera shape. ``--quick`` (a check of the script, not a result): ResNet-18 only, YOLO26n
only, 2 rounds, written to a temporary folder unless ``--out`` is given.

Writes ``model_cpu.json`` (command, machine with CPU flags, versions, git commit, every figure) and
``model_cpu.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import PACKAGES, git_commit, machine, provenance_opening, versions
from _timing import (
    gflops,
    interleaved,
    matmul_gflops_per_s,
    onnxruntime_version,
    stats,
    yolo_forward_module,
    yolo_models,
)

from mcn_ros.model.backends import fold_batch_norms
from mcn_ros.model.config import DetectionConfig, ModelConfig
from mcn_ros.model.heads import count_parameters
from mcn_ros.model.mcn import MultitaskCenterNet

ROOT = Path(__file__).resolve().parents[1]
SHAPES: dict[str, tuple[int, int]] = {"square": (512, 512), "camera": (384, 512)}
#: The three-task MCN of each backbone and its single-task networks (Table 4's STN composite).
MCN: dict[str, str] = {"resnet18": "resnet18_det80_seg80_pose_512", "dla34": "dla34_det80_seg80_pose_512"}
#: The lighter ResNet-18 variant (not the paper's: one head conv per task, a narrower up-path).
LIGHT = "resnet18_det80_seg80_pose_light_512"
STN_OF = ("det80", "seg80", "det1_pose")


def single_task(config: ModelConfig, part: str) -> ModelConfig:
    """A single-task network of a three-task config, named as the shipped configs (a shipped config of that
    name is used instead): only detection, only segmentation, or person + pose."""
    name = f"{config.backbone}_{part}_512"
    if part == "det80":
        return dataclasses.replace(config, name=name, pose=None, segmentation=None)
    if part == "seg80":
        return dataclasses.replace(config, name=name, detection=None, pose=None)
    return dataclasses.replace(config, name=name, detection=DetectionConfig(("person",)), segmentation=None)


def mcn_networks(quick: bool) -> dict[str, ModelConfig]:
    """Shipped 512 configs plus the single-task composites (ResNet-18 only with ``quick``)."""
    configs = {}
    for path in sorted((ROOT / "config" / "models").glob("*_512.yaml")):
        config = ModelConfig.from_yaml(path)
        if not quick or config.backbone == "resnet18":
            configs[config.name] = config
    for backbone, name in MCN.items():
        if quick and backbone != "resnet18":
            continue
        for part in STN_OF:
            stn = single_task(configs[name], part)
            configs.setdefault(stn.name, stn)
    return configs


def mcn_forward(config: ModelConfig, shape: tuple[int, int]) -> tuple[Callable[[], object], int]:
    """A forward call of a random-init MCN as Predictor runs it (eval, BatchNorms folded, channels_last)
    and its parameters."""
    model = MultitaskCenterNet(config).eval()
    params = count_parameters(model)
    folded = fold_batch_norms(model).to(memory_format=torch.channels_last)
    batch = torch.randn(1, 3, *shape).contiguous(memory_format=torch.channels_last)
    tasks = config.tasks

    def run() -> object:
        with torch.inference_mode():
            return folded(batch, tasks)

    return run, params


def onnx_forward(config: ModelConfig, shape: tuple[int, int]) -> Callable[[], object]:
    """The same forward in ONNX Runtime (mcn_ros.model.backends)."""
    from mcn_ros.model.backends import OnnxRuntimeForward

    model = MultitaskCenterNet(config).eval()
    runner = OnnxRuntimeForward(model, config)
    batch = torch.randn(1, 3, *shape)
    runner.session(config.tasks)
    return lambda: runner(batch, config.tasks)


def yolo_forward(yolo: Any, shape: tuple[int, int]) -> Callable[[], object]:
    """A forward call of a YOLO network as its predictor runs it (Conv+BN fused, eval, its predictor's
    memory layout; the input as its predictor passes it), on its own copy: one module timed at two
    interleaved shapes would rebuild its head's anchors at every call (a camera's fixed shape never does)."""
    module = copy.deepcopy(yolo_forward_module(yolo))
    batch = torch.randn(1, 3, *shape)

    def run() -> object:
        with torch.inference_mode():
            return module(batch)

    return run


def build(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, Callable[[], object]]]:
    """Every network's facts and its forward calls keyed ``name@shape``."""
    nets: dict[str, dict[str, Any]] = {}
    calls: dict[str, Callable[[], object]] = {}
    torch.manual_seed(0)
    for name, config in mcn_networks(args.quick).items():
        nets[name] = {"kind": "mcn", "backbone": config.backbone, "tasks": sorted(config.tasks)}
        for shape_name, shape in SHAPES.items():
            run, params = mcn_forward(config, shape)
            nets[name]["params"] = params
            nets[name].setdefault("gflops", {})[shape_name] = round(gflops(run), 3)
            calls[f"{name}@{shape_name}"] = run
    if onnxruntime_version() is not None:
        config = mcn_networks(True)[MCN["resnet18"]]
        name = f"{config.name}+onnxruntime"
        nets[name] = {"kind": "mcn_onnxruntime", "backbone": "resnet18", "tasks": sorted(config.tasks)}
        nets[name]["gflops"] = nets[config.name]["gflops"]
        nets[name]["params"] = nets[config.name]["params"]
        for shape_name, shape in SHAPES.items():
            calls[f"{name}@{shape_name}"] = onnx_forward(config, shape)
    for family in ["yolo26n"] if args.quick else ["yolo26n", "yolo11n"]:
        for yolo in yolo_models(family):
            name = Path(str(yolo.model.yaml.get("yaml_file", yolo.task))).stem or yolo.task
            params = sum(p.numel() for p in yolo.model.parameters())  # before fusing, as ours
            nets[name] = {"kind": family, "task": yolo.task, "params": params}
            for shape_name, shape in SHAPES.items():
                run = yolo_forward(yolo, shape)
                nets[name].setdefault("gflops", {})[shape_name] = round(gflops(run), 3)
                calls[f"{name}@{shape_name}"] = run
    return nets, calls


def headline(
    nets: dict[str, dict[str, Any]], shape: str, backbone: str = "resnet18"
) -> dict[str, float | None]:
    """Speed-ups of the three-task MCN: against its STN composite and against each YOLO family x3."""

    def median(name: str) -> float | None:
        return nets.get(name, {}).get("latency", {}).get(shape, {}).get("median_ms")

    mcn = median(MCN[backbone])
    out: dict[str, float | None] = {}
    stn = [median(f"{backbone}_{part}_512") for part in STN_OF]
    out["mcn_vs_stn_speedup"] = round(sum(stn) / mcn, 3) if mcn and None not in stn else None  # type: ignore[arg-type]
    for family in ("yolo26n", "yolo11n"):
        yolo = [v["latency"][shape]["median_ms"] for v in nets.values() if v["kind"] == family]
        out[f"mcn_vs_{family}_speedup"] = round(sum(yolo) / mcn, 3) if mcn and len(yolo) == 3 else None
    light = median(LIGHT) if backbone == "resnet18" else None
    yolo26n = [v["latency"][shape]["median_ms"] for v in nets.values() if v["kind"] == "yolo26n"]
    out["light_vs_yolo26n_speedup"] = round(sum(yolo26n) / light, 3) if light and len(yolo26n) == 3 else None
    return out


def per_round(
    nets: dict[str, dict[str, Any]], times: dict[str, list[float]], shape: str, rounds: int
) -> dict[str, list[float]]:
    """Each headline of ``shape`` from every round alone (each round times every network once, so a
    round's ratios share that minute's machine): min, median and max over the rounds."""
    values: dict[str, list[float]] = {}
    for index in range(rounds):
        one = {
            name: {**meta, "latency": {shape: {"median_ms": times[f"{name}@{shape}"][index]}}}
            for name, meta in nets.items()
            if f"{name}@{shape}" in times
        }
        for key, value in headline(one, shape).items():
            if value is not None:
                values.setdefault(key, []).append(value)
    return {
        key: [round(min(v), 3), round(float(np.median(v)), 3), round(max(v), 3)] for key, v in values.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Build, time interleaved, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch (and ONNX Runtime) threads; default 2")
    parser.add_argument(
        "--rounds", type=int, default=10, help="interleaved rounds; default 10 (2 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="ResNet-18 and YOLO26n only, 2 rounds: a check")
    parser.add_argument(
        "--out", default=None, help="output folder (default bench/results; a temp folder with --quick)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = 2 if args.quick and args.rounds == 10 else args.rounds
    nets, calls = build(args)
    print(f"{len(calls)} forward calls, {rounds} rounds", flush=True)
    matmul = matmul_gflops_per_s()
    # ONNX Runtime's thread pool spins for a while after a call and slowed the torch call that came next
    # (bench/int8_onnxruntime.py): its contenders are timed among themselves, each after an untimed call.
    in_ort = {key: call for key, call in calls.items() if "+onnxruntime@" in key}
    times = interleaved({k: c for k, c in calls.items() if k not in in_ort}, rounds, threads=args.threads)
    if in_ort:
        times |= interleaved(in_ort, rounds, threads=args.threads, settle=1)
    matmul = max(matmul, matmul_gflops_per_s())  # before and after: the better of the two
    for key, samples in times.items():
        name, shape = key.split("@")
        figures = stats(samples)
        rate = nets[name]["gflops"][shape] / (figures["median_ms"] / 1000)
        figures["gflops_per_s"] = round(rate, 2)
        figures["efficiency_vs_matmul"] = round(rate / matmul, 4)
        nets[name].setdefault("latency", {})[shape] = figures
        print(f"{key:48s} {figures['median_ms']:9.1f} ms (p95 {figures['p95_ms']:.1f})", flush=True)
    report: dict[str, Any] = {
        "command": shlex.join(["python", *(sys.argv if argv is None else ["bench/model_cpu.py", *argv])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions((*PACKAGES, "ultralytics", "onnxruntime", "onnx")),
        "git_commit": git_commit(),
        "threads": args.threads,
        "rounds": rounds,
        "shapes": {k: list(v) for k, v in SHAPES.items()},
        "matmul_gflops_per_s": round(matmul, 2),
        "headline": {shape: headline(nets, shape) for shape in SHAPES},
        "headline_per_round_min_median_max": {
            shape: per_round(nets, times, shape, rounds) for shape in SHAPES
        },
        "headline_dla34": {shape: headline(nets, shape, "dla34") for shape in SHAPES},
        "networks": nets,
    }
    report.update(report["headline"]["square"])
    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.mkdtemp()) if args.quick else ROOT / "bench" / "results")
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "model_cpu.md").write_text(markdown(report))
    print(json.dumps(report["headline"], indent=1))
    print(f"wrote {out / 'model_cpu.json'}")
    return 0


def markdown(report: dict[str, Any]) -> str:
    """The report as tables."""
    lines = [
        "# Raw forward on the CPU: MCN, its single-task networks, YOLO nano x3",
        "",
        provenance_opening(report)
        + f"{report['threads']} threads, {report['rounds']} interleaved rounds, batch 1, fp32, random init)."
        + (" **--quick: a check of the script, not a result.**" if report["quick"] else ""),
        "",
        f"A {2048} float32 matrix product runs at {report['matmul_gflops_per_s']} GFLOP/s here.",
        "",
        "| headline | 512x512 | 384x512 (camera) | each round alone, min / median / max (512x512; 384x512) |",
        "|---|---:|---:|---|",
    ]
    spread = report.get("headline_per_round_min_median_max", {})
    for key in (
        "mcn_vs_stn_speedup",
        "mcn_vs_yolo26n_speedup",
        "mcn_vs_yolo11n_speedup",
        "light_vs_yolo26n_speedup",
    ):
        row = [report["headline"][s].get(key) for s in ("square", "camera")]
        rounds = "; ".join(
            " / ".join(f"{v:.2f}" for v in spread[s][key])
            for s in ("square", "camera")
            if key in spread.get(s, {})
        )
        lines.append(
            f"| {key} | " + " | ".join("n/a" if v is None else f"{v:.2f}x" for v in row) + f" | {rounds} |"
        )
    lines += [
        "",
        "| network | kind | params (M) | GFLOPs 512² | median ms 512² | p95 | GFLOP/s (% of matmul) "
        "| median ms 384x512 | p95 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, net in report["networks"].items():
        sq, cam = net["latency"]["square"], net["latency"]["camera"]
        lines.append(
            f"| {name} | {net['kind']} | {net['params'] / 1e6:.2f} | {net['gflops']['square']:.1f} | "
            f"{sq['median_ms']:.1f} | {sq['p95_ms']:.1f} | {sq['gflops_per_s']:.1f} "
            f"({100 * sq['efficiency_vs_matmul']:.0f} %) | {cam['median_ms']:.1f} | {cam['p95_ms']:.1f} |"
        )
    lines += [
        "",
        "STN composite = Only Det (80 classes) + Only Seg (80 classes) + Det (person) & Pose, each a full",
        "network (Table 4's composite). All networks run with Conv+BN fused, as their predictors run them.",
        "GFLOPs from torch's FLOP counter (2 per multiply-add); it does not count torchvision's deformable",
        "convolution (DLA-34 with DCN), so those rows understate work and efficiency.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
