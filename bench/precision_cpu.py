"""Reduced precision on the CPU: bf16 against fp32, accuracy and speed, with YOLO26n x3 given the same.

    python bench/precision_cpu.py [--rounds 30] [--threads 2] [--name precision_cpu]

Only meaningful on a CPU with native bf16 (``avx512_bf16`` or ``amx_bf16``: :mod:`mcn_ros.model.precision`);
elsewhere ``Predictor`` refuses bf16 and this script says so and exits 2 without writing anything.

1. Accuracy: the demo weights (demo/mcn_demo.safetensors) on the demo's 200 held-out synthetic images, run
   through ``Predictor.forward`` at fp32 and at bf16 (the node's own forward: BN folded, channels_last, the
   bfloat16 copy), decoded and scored as training's validation does (``mcn_training.evaluate``).
2. Forward at 384x512 (a 640x480 camera at the 512 scale), random init, interleaved rounds: the paper's
   ResNet-18 three-task MCN (BN folded) and YOLO26n detect + pose + semantic segmentation (ultralytics'
   fused modules), both channels_last, each in fp32 and with weights and input converted to bfloat16:
   the like-for-like comparison.
3. End to end, a 640x480 image in: ``Predictor.predict`` fp32 / bf16 against YOLO26n x3 ``predict`` fp32 /
   bf16 (ultralytics has no CPU bf16 switch of its own: the module its predictor runs is replaced by a
   bfloat16 copy, and ``torch.autocast`` casts its float32 input).

Writes bench/results/<name>.json and .md (``--name``, default precision_cpu): CPUs with native bf16 differ
a lot here (AVX-512 BF16 dot products alone, or AMX tiles), so each kind's record keeps its own name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from _common import PACKAGES, git_commit, machine, pct, versions
from _timing import bf16_copy, interleaved, stats, yolo_forward_module, yolo_in_bf16, yolo_models
from e2e_cpu import MAX_DETECTIONS, SCORE_THRESHOLD, camera_image
from seg_resampling import DEMO_WEIGHTS, demo_report, generate_demo_val
from torch import Tensor, nn

from mcn_ros.evaluation import METRICS
from mcn_ros.model.backends import fold_batch_norms
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.precision import cpu_bf16_native
from mcn_ros.model.predictor import Predictor

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PAPER_CONFIG = REPO / "config" / "models" / "resnet18_det80_seg80_pose_512.yaml"
CAMERA = (480, 640)
FORWARD_INPUT = (384, 512)


class PredictorForward(nn.Module):
    """``Predictor.forward`` as a module, so that training's evaluation loop (on the CPU) runs the node's
    forward: the batch goes to the predictor's device, the outputs come back to the CPU."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        outputs = self.predictor.forward(images.to(self.predictor.device), self.predictor.tasks)
        return {name: value.cpu() for name, value in outputs.items()}


def accuracy(folder: Path, precision: str, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The demo weights' validation metrics with the forward at ``precision`` on ``device``."""
    predictor = Predictor.from_weights(DEMO_WEIGHTS, device=device, precision=precision)
    assert predictor.precision.name == precision, predictor.precision.note
    report = demo_report(PredictorForward(predictor), predictor.config, folder, channels_last=True)
    return {key: getattr(report, key) for key in (*METRICS, "num_images")}


def forward_contenders() -> dict[str, Callable[[], object]]:
    """Raw forwards at 384x512 of the MCN and of YOLO26n x3, fp32 and bf16."""
    torch.manual_seed(0)
    config = ModelConfig.from_yaml(PAPER_CONFIG)
    mcn = fold_batch_norms(MultitaskCenterNet(config).eval()).to(memory_format=torch.channels_last)
    yolos = [yolo_forward_module(y).to(memory_format=torch.channels_last) for y in yolo_models("yolo26n")]
    image = torch.randn(1, 3, *FORWARD_INPUT).contiguous(memory_format=torch.channels_last)
    mcn_bf16, yolos_bf16, image_bf16 = bf16_copy(mcn), [bf16_copy(y) for y in yolos], image.to(torch.bfloat16)

    def run(modules: list[nn.Module], x: Tensor) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return [module(x) for module in modules]

        return call

    return {
        "forward:mcn@fp32": run([mcn], image),
        "forward:mcn@bf16": run([mcn_bf16], image_bf16),
        "forward:yolo26n_x3@fp32": run(yolos, image),
        "forward:yolo26n_x3@bf16": run(yolos_bf16, image_bf16),
    }


def e2e_contenders() -> dict[str, Callable[[], object]]:
    """A 640x480 image in, results out: MCN ``predict`` and YOLO26n x3 ``predict``, fp32 and bf16."""
    torch.manual_seed(0)
    config = ModelConfig.from_yaml(PAPER_CONFIG)
    model = MultitaskCenterNet(config)
    image = camera_image(CAMERA)
    mcn = {name: Predictor(model, config, precision=name) for name in ("fp32", "bf16")}
    size = config.input_size[1]
    yolos = {"fp32": yolo_models("yolo26n"), "bf16": yolo_models("yolo26n")}
    yolo_in_bf16(yolos["bf16"], image, size, SCORE_THRESHOLD)

    def mcn_call(predictor: Predictor) -> Callable[[], object]:
        return lambda: predictor.predict(image, color_order="bgr", score_threshold=SCORE_THRESHOLD)

    def yolo_call(precision: str) -> Callable[[], object]:
        def call() -> object:
            # autocast casts ultralytics' float32 input for the bf16 module's first conv
            bf16 = precision == "bf16"
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                return [
                    y.predict(
                        image,
                        imgsz=size,
                        conf=SCORE_THRESHOLD,
                        max_det=MAX_DETECTIONS,
                        device="cpu",
                        verbose=False,
                    )
                    for y in yolos[precision]
                ]

        return call

    return {
        "e2e:mcn@fp32": mcn_call(mcn["fp32"]),
        "e2e:mcn@bf16": mcn_call(mcn["bf16"]),
        "e2e:yolo26n_x3@fp32": yolo_call("fp32"),
        "e2e:yolo26n_x3@bf16": yolo_call("bf16"),
    }


def ratios(rows: dict[str, Any], kind: str) -> dict[str, float]:
    """bf16 speed-ups of each network and MCN-vs-YOLO ratios at each precision (median against median)."""
    ms = {key.split(":")[1]: row["median_ms"] for key, row in rows.items() if key.startswith(f"{kind}:")}
    return {
        "mcn_bf16_speedup": round(ms["mcn@fp32"] / ms["mcn@bf16"], 3),
        "yolo26n_x3_bf16_speedup": round(ms["yolo26n_x3@fp32"] / ms["yolo26n_x3@bf16"], 3),
        "mcn_vs_yolo26n_fp32": round(ms["yolo26n_x3@fp32"] / ms["mcn@fp32"], 3),
        "mcn_vs_yolo26n_bf16": round(ms["yolo26n_x3@bf16"] / ms["mcn@bf16"], 3),
        "mcn_bf16_vs_yolo26n_fp32": round(ms["yolo26n_x3@fp32"] / ms["mcn@bf16"], 3),
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a short Markdown page."""
    m = report["machine"]
    acc = report["accuracy"]
    lines = [
        "# Reduced precision on the CPU: bf16 against fp32",
        "",
        f"`{report['command']}` ({report['date']}, commit {report['git_commit']}; {m['cpu']} "
        f"{', '.join(m['cpu_flags'])}, {report['threads']} threads, {report['rounds']} interleaved rounds).",
        "",
        f"Accuracy: the demo weights on the demo's {acc['fp32']['num_images']} held-out synthetic images, "
        "the node's forward at each precision:",
        "",
        "| precision | bbox AP | AP50 | keypoint AP | mIoU | person IoU |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    shown = [k for k in METRICS if k != "kp_AP50"]
    for name in ("fp32", "bf16"):
        lines.append(f"| {name} | " + " | ".join(pct(acc[name][k]) for k in shown) + " |")
    lines.append("| change (points) | " + " | ".join(f"{100 * acc['change'][k]:+.1f}" for k in shown) + " |")
    lines += [
        "",
        "Speed (milliseconds, median; random init): forward at 384x512, and end to end for a 640x480 image.",
        "",
        "| run | MCN fp32 | MCN bf16 | YOLO26n x3 fp32 | YOLO26n x3 bf16 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("forward", "e2e"):
        cells = [
            f"{report['runs'][f'{kind}:{net}@{p}']['median_ms']:.1f}"
            for net in ("mcn", "yolo26n_x3")
            for p in ("fp32", "bf16")
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | forward | end to end |", "| --- | ---: | ---: |"]
    forward, e2e = report["ratios"]["forward"], report["ratios"]["e2e"]
    lines += [f"| {key} | {forward[key]:.2f}x | {e2e[key]:.2f}x |" for key in forward]
    lines += [
        "",
        "`mcn_vs_yolo26n_bf16` is the like-for-like figure (both networks in bf16); "
        "`mcn_bf16_vs_yolo26n_fp32` puts our bf16 against the peers as ultralytics runs them on a CPU. "
        "YOLO's bf16 has its weights converted as ours (end to end: the module inside ultralytics' "
        "predictor, its float32 input cast by `torch.autocast`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure accuracy and speed at fp32 and bf16, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", default="precision_cpu", help="results file name (default precision_cpu)")
    args = parser.parse_args(argv)
    if not cpu_bf16_native():
        print("this CPU has no native bf16 (avx512_bf16 / amx_bf16): nothing to measure", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        folder = generate_demo_val(Path(root) / "demo")
        measured = {name: accuracy(folder, name) for name in ("fp32", "bf16")}
    measured["change"] = {
        key: (measured["bf16"][key] or 0.0) - (measured["fp32"][key] or 0.0) for key in METRICS
    }
    print(json.dumps(measured, indent=1), flush=True)
    rows: dict[str, Any] = {}
    for group in (forward_contenders(), e2e_contenders()):
        times = interleaved(group, args.rounds, threads=args.threads)
        for key, samples in times.items():
            rows[key] = stats(samples)
            print(f"{key:28s} {rows[key]['median_ms']:8.1f} ms (p95 {rows[key]['p95_ms']:.1f})", flush=True)
    report: dict[str, Any] = {
        "command": shlex.join(["python", *(sys.argv if argv is None else ["bench/precision_cpu.py", *argv])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions((*PACKAGES, "ultralytics")),
        "git_commit": git_commit(),
        "threads": args.threads,
        "rounds": args.rounds,
        "demo_weights": str(DEMO_WEIGHTS.relative_to(REPO)),
        "accuracy": measured,
        "ratios": {kind: ratios(rows, kind) for kind in ("forward", "e2e")},
        "runs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(json.dumps(report["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
