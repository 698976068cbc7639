"""Static int8 quantisation in ONNX Runtime: what it would give on this CPU (a probe, not a shipped backend).

    python bench/int8_onnxruntime.py [--rounds 15] [--calibration 64]

The MCN's forward exported to ONNX as ``Predictor(backend="onnxruntime")`` exports it (BatchNorm folded),
then quantised by ONNX Runtime's own ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations,
MinMax calibration) on ``--calibration`` images of the demo's training set:

1. accuracy: the demo weights (128x128) on the demo's 200 held-out images, the fp32 graph against the int8
   one in ONNX Runtime, decoded and scored as training's validation does (``mcn_training.evaluate``);
2. speed: the ResNet-18 three-task 512 model (random init, seed 0) at 512x384 (a 640x480 camera's
   network input), fp32 against int8 in ONNX Runtime and PyTorch fp32 (the default backend), each in
   blocks of its own, 2 threads; calibrated on 16 synthetic 384x512 scenes.

Int8 convolutions are fast only where the CPU has VNNI (avx512_vnni, avx_vnni) or AMX; the CPU's flags are
recorded. Writes bench/results/int8_onnxruntime.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import torch
from _common import git_commit, machine, versions, write_record
from multicamera_cpu import make_weights
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from precision_cpu import METRICS
from seg_resampling import DEMO_WEIGHTS, demo_report, generate_demo_val
from torch import Tensor, nn

from mcn_ros.model.backends import export_onnx, fold_batch_norms
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.preprocess import preprocess
from mcn_ros.model.weights import load_weights
from mcn_training.synthetic import generate_dataset

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SPEED_CONFIG = REPO / "config" / "models" / "resnet18_det80_seg80_pose_512.yaml"
CAMERA_INPUT = (384, 512)
THREADS = 2


class Graphs:
    """The fp32 ONNX forward of a model and its int8 quantisation, as ONNX Runtime sessions."""

    def __init__(self, model: nn.Module, config: ModelConfig, calibration: list[np.ndarray], folder: Path):
        data, self.names = export_onnx(fold_batch_norms(model.eval()), config.tasks)
        fp32, prepared, int8 = folder / "fp32.onnx", folder / "prepared.onnx", folder / "int8.onnx"
        fp32.write_bytes(data)
        quant_pre_process(str(fp32), str(prepared))
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared), str(int8), _Batches(calibration), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )  # fmt: skip
        self.sessions = {"fp32": _session(fp32), "int8": _session(int8)}

    def run(self, kind: str, images: np.ndarray) -> dict[str, Tensor]:
        outputs = self.sessions[kind].run(list(self.names), {"images": images})
        return {name: torch.from_numpy(value) for name, value in zip(self.names, outputs, strict=True)}


class _Batches(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


class GraphForward(nn.Module):
    """One of :class:`Graphs`' sessions as a module, so that training's evaluation loop runs it."""

    def __init__(self, graphs: Graphs, kind: str) -> None:
        super().__init__()
        self.graphs, self.kind = graphs, kind

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.graphs.run(self.kind, images.contiguous().numpy())


def _session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def calibration_batches(folder: Path, count: int, size: tuple[int, int], config: ModelConfig) -> list[Any]:
    """``count`` training scenes of the synthetic generator (seed 0: the demo's first training images) at
    ``size`` (h, w), letterboxed and normalised for ``config``, one [1, 3, H, W] array each."""
    written = generate_dataset(folder, count, 0, size, "train")
    batches = []
    for path in sorted(written["images"].glob("*.jpg")):
        image = cv2.imread(str(path))
        batch, _ = preprocess([image], config.input_size, config.mean, config.std, "cpu", "bgr", False)
        batches.append(batch.numpy())
    return batches


def accuracy(graphs: Graphs, config: ModelConfig, folder: Path) -> dict[str, dict[str, float]]:
    """The demo's validation metrics through each of ``graphs``' sessions."""
    out = {}
    for kind in graphs.sessions:
        report = demo_report(GraphForward(graphs, kind), config, folder)
        out[kind] = {key: round(100 * float(getattr(report, key)), 1) for key in METRICS}  # percent
    return out


def speed(graphs: Graphs, weights: Path, images: np.ndarray, rounds: int) -> dict[str, float]:
    """Median forward milliseconds at ``images``' shape: ONNX Runtime fp32 and int8, PyTorch fp32.

    Each in blocks of its own (``rounds`` calls after a warm-up), the three blocks twice in turn: a
    runtime's threads spin for a while after a call, and in call-by-call interleaving they slowed whichever
    runtime (or other ONNX Runtime session, with its own thread pool) came next: int8 took 78.8 ms
    interleaved with the fp32 session against 49.1 in blocks here."""
    predictor = Predictor.from_weights(weights, device="cpu")
    batch = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
    calls: dict[str, Callable[[], object]] = {
        "onnxruntime_fp32": lambda: graphs.run("fp32", images),
        "onnxruntime_int8": lambda: graphs.run("int8", images),
        "torch_fp32": lambda: predictor.forward(batch, predictor.tasks),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(2):
        for name, call in calls.items():
            torch.set_num_threads(THREADS)
            call()  # warm-up
            for _ in range(rounds):
                start = time.perf_counter()
                call()
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: round(float(np.median(values)), 1) for name, values in times.items()}


def render(record: dict[str, Any]) -> str:
    host, acc, ms = record["machine"], record["accuracy"], record["forward_ms"]
    vnni = ", ".join(f for f in host.get("cpu_flags", []) if "vnni" in f or "amx" in f) or "none"
    lines = [
        "# Static int8 in ONNX Runtime (a probe, not a shipped backend)",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git']}; {host.get('cpu')}, "
        f"{host.get('affinity')} CPUs, {THREADS} threads; VNNI/AMX flags: {vnni}). QDQ, per-channel int8 "
        f"weights, uint8 activations, MinMax calibration on {record['calibration_images']} training scenes.",
        "",
        "| demo weights, 200 held-out images (%) | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for kind in ("fp32", "int8"):
        lines.append(f"| ONNX Runtime {kind} | " + " | ".join(str(acc[kind][m]) for m in METRICS) + " |")
    lines += [
        "",
        f"| forward, {SPEED_CONFIG.stem} at 512x384 | median ms |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in ms.items()),
        "",
        f"int8 / fp32 in ONNX Runtime: **{record['int8_speedup_onnxruntime']}x**; int8 ONNX Runtime against "
        f"PyTorch fp32 (the default backend): **{record['int8_vs_torch_fp32']}x**.",
        "",
    ]
    return "\n".join(lines)


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="calls per timing block (two blocks each)")
    parser.add_argument(
        "--calibration", type=int, default=64, help="training scenes for the demo's calibration"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, config, _ = load_weights(DEMO_WEIGHTS, device="cpu")
        calibration = calibration_batches(folder / "calib", args.calibration, config.input_size, config)
        demo = Graphs(model, config, calibration, _fresh(folder / "demo"))
        metrics = accuracy(demo, config, generate_demo_val(folder / "val"))

        weights = make_weights(SPEED_CONFIG, folder / "speed.safetensors")
        model, config, _ = load_weights(weights, device="cpu")
        config = dataclasses.replace(config, input_size=CAMERA_INPUT)
        scenes = calibration_batches(folder / "calib512", 16, CAMERA_INPUT, config)
        speed_graphs = Graphs(model, config, scenes, _fresh(folder / "speed"))
        forward_ms = speed(speed_graphs, weights, scenes[0], args.rounds)
    record: dict[str, Any] = {
        "command": shlex.join(
            ["python", "bench/int8_onnxruntime.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "calibration_images": args.calibration,
        "rounds": args.rounds,
        "accuracy": metrics,
        "forward_ms": forward_ms,
        "int8_speedup_onnxruntime": round(forward_ms["onnxruntime_fp32"] / forward_ms["onnxruntime_int8"], 2),
        "int8_vs_torch_fp32": round(forward_ms["torch_fp32"] / forward_ms["onnxruntime_int8"], 2),
        "machine": machine(),
        "versions": versions() | {"onnxruntime": ort.__version__},
        "git": git_commit(),
    }
    write_record(args.results, "int8_onnxruntime", record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
