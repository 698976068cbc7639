"""Make the demo weights that `make demo` runs: the project's own training command on its own synthetic data.

    python bench/demo_weights.py              # generate data, train 2700 steps, export, evaluate, record
    make demo TRAIN=1                         # the same, from the Makefile

Steps, each skipped when its output is already there (so a killed run continues where it stopped):
1. the synthetic COCO-format dataset of the training benchmark (``--train-images`` + ``--val-images``
   128x128 images, seed ``--seed``; bench/train_synthetic.py's generator spec);
2. ``python -m mcn_training.train`` with config/train/resnet18_det80_seg80_pose_128_synthetic.yaml (the
   three-task ResNet-18 MCN) for ``--steps`` steps into ``--work-dir`` (``--resume`` when a checkpoint
   exists; progress bar on a terminal);
3. the run's best weights (by validation bbox AP) converted to fp16 and written to ``--out``
   (default demo/mcn_demo.safetensors; its metadata keeps the training provenance);
4. both the fp32 best weights and the fp16 file evaluated on the held-out split, written to
   bench/results/demo_weights.json (figures, both commands, file size and hash, machine, versions, git)
   and bench/results/demo_weights.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import git_commit, machine, pct, repo_path, repo_relative, versions
from train_synthetic import ensure_dataset

REPO = Path(__file__).resolve().parent.parent
TRAIN_CONFIG = REPO / "config" / "train" / "resnet18_det80_seg80_pose_128_synthetic.yaml"
DEFAULT_OUT = REPO / "demo" / "mcn_demo.safetensors"
#: What a person must see in the demo (fractions, on the synthetic validation split): issue #16.
TARGETS = {"bbox_AP": 0.40, "mIoU": 0.60}
METRICS = ("bbox_AP", "bbox_AP50", "kp_AP", "kp_AP50", "mIoU", "person_IoU")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=2700, help="optimizer steps (default 2700)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "synthetic_bench", help="dataset folder")
    parser.add_argument("--train-images", type=int, default=4000, help="training images (default 4000)")
    parser.add_argument("--val-images", type=int, default=200, help="held-out images (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "demo", help="training run folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fp16 weights file to write")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results", help="results folder")
    return parser.parse_args(argv)


def train_command(args: argparse.Namespace) -> list[str]:
    """The training command line (options, then overrides); ``--resume`` is added when resuming."""
    every = max(1, args.steps // 6)
    return [
        sys.executable,
        "-m",
        "mcn_training.train",
        "--config",
        repo_path(TRAIN_CONFIG),
        "--data",
        repo_path(args.data),
        "--out",
        repo_path(args.work_dir),
        f"schedule.max_steps={args.steps}",
        f"eval.every_steps={every}",
        "checkpoint.every_steps=150",
        f"runtime.progress={'true' if sys.stderr.isatty() else 'false'}",
    ]


def finished_step(weights: Path) -> int | None:
    """The training step recorded in a weights file's provenance (None if there is no such file)."""
    if not weights.is_file():
        return None
    from mcn_ros.model.weights import read_metadata

    _, provenance = read_metadata(weights)
    step = provenance.get("global_step")
    return int(step) if step is not None else None


def train(args: argparse.Namespace) -> None:
    """Run (or finish) the training run in a child process, so that its progress bar owns the terminal."""
    if finished_step(args.work_dir / "last.safetensors") == args.steps:
        print(f"training already finished: {args.work_dir / 'last.safetensors'} (step {args.steps})")
        return
    command = train_command(args)
    if (args.work_dir / "checkpoint.pt").is_file():
        command.append("--resume")
    print("training:", shlex.join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def export_fp16(source: Path, out: Path, command: str) -> dict[str, Any]:
    """Write ``source``'s model in fp16 to ``out`` (atomically) with its provenance; returns that."""
    from mcn_ros.model.weights import load_weights, save_weights

    model, config, provenance = load_weights(source)
    provenance = {
        **provenance,
        "dtype": "float16",
        "converted_from": repo_relative(source),
        "demo_weights_command": command,
    }
    save_weights(out, model.half(), config, provenance)
    return provenance


def evaluate(weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The validation metrics of ``weights`` (mcn_training.evaluate, the same path as training's)."""
    from mcn_training import evaluate as evaluation

    options = evaluation.get_args_parser().parse_args(
        ["--weights", str(weights), "--data", str(args.data), "--split", "val", "--workers", "0"]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        result = evaluation.run(options)
    return {key: result["metrics"].get(key) for key in (*METRICS, "per_class_IoU", "num_images")}


def training_seconds(checkpoint: Path) -> float | None:
    """Training time (evaluation excluded) recorded in the run's own checkpoint, a trusted file."""
    if not checkpoint.is_file():
        return None
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True).get("state", {})
    seconds = state.get("train_time_s")
    return None if seconds is None else float(seconds)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render(record: dict[str, Any]) -> str:
    """The Markdown table of bench/results/demo_weights.md."""
    fp16, fp32 = record["metrics_fp16"], record["metrics_fp32"]
    lines = [
        "# Demo weights (`make demo`)",
        "",
        f"`{record['file']}`: {record['model']}, fp16, {record['size_mb']} MB, "
        f"sha256 `{record['sha256'][:16]}`.",
        f"Trained by `{record['train_command']}` ({record['steps']} steps, {record['train_minutes']} "
        f"training minutes on {record['machine']['cpu']}); made by `{record['command']}`.",
        "",
        f"Synthetic validation split ({fp16.get('num_images')} images):",
        "",
        "| weights | bbox AP | AP50 | keypoint AP | mIoU | person IoU |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in (("fp32 (best of the run)", fp32), ("fp16 (shipped)", fp16)):
        lines.append(
            f"| {name} | {pct(m.get('bbox_AP'))} | {pct(m.get('bbox_AP50'))} | {pct(m.get('kp_AP'))} | "
            f"{pct(m.get('mIoU'))} | {pct(m.get('person_IoU'))} |"
        )
    lines += ["", "Targets (issue #16): " + "; ".join(record["targets"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/demo_weights.py", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    spec = ensure_dataset(args.data, args.train_images, args.val_images, args.seed)
    train(args)
    best = args.work_dir / "best.safetensors"
    if not best.is_file():
        print(f"error: the training run left no {best}", file=sys.stderr)
        return 1
    provenance = export_fp16(best, args.out, command)
    metrics_fp32, metrics_fp16 = evaluate(best, args), evaluate(args.out, args)
    from mcn_ros.model.weights import read_metadata

    config, _ = read_metadata(args.out)
    targets = []
    for key, goal in TARGETS.items():
        verdict = "met" if (metrics_fp16[key] or 0.0) >= goal else "NOT met"
        targets.append(f"{key} {pct(metrics_fp16[key])} (target >= {pct(goal)}: {verdict})")
    train_seconds = training_seconds(args.work_dir / "checkpoint.pt")
    record = {
        "command": command,
        "train_command": provenance.get("command"),
        "file": repo_relative(args.out),
        "model": config.name,
        "size_mb": round(args.out.stat().st_size / 1e6, 2),
        "sha256": sha256(args.out),
        "steps": finished_step(args.work_dir / "last.safetensors"),
        "best_step": provenance.get("global_step"),
        "train_minutes": None if train_seconds is None else round(train_seconds / 60, 2),
        "dataset": spec,
        "metrics_fp32": metrics_fp32,
        "metrics_fp16": metrics_fp16,
        "fp16_minus_fp32": {
            key: None if metrics_fp16[key] is None else round(metrics_fp16[key] - metrics_fp32[key], 4)
            for key in METRICS
        },
        "targets": targets,
        "wall_s": round(time.perf_counter() - start, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "demo_weights.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.results / "demo_weights.md").write_text(render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
