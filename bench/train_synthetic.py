"""Train ResNet-18 MCNs on synthetic data on CPU, the same budget each, laid out like the paper's Tables 1-2.

    python bench/train_synthetic.py --steps 2700 --eval-points 6  # the recorded benchmark (about 2 h)
    python bench/train_synthetic.py --minutes 30            # 30 minutes each, calibrated to steps
    python bench/train_synthetic.py --render                # rewrite the .md from the .json only
    python bench/train_synthetic.py --minutes 0.5 --train-images 64 --val-images 16  # smoke run
    python bench/train_synthetic.py --steps 500 --networks mcn,mcn_light --eval-points 2 \
        --name light_variant --work-dir runs/light_variant   # the lighter variant against the paper's

Every network trains from random init with the recipe of
config/train/resnet18_det80_seg80_pose_128_synthetic.yaml (only the model differs) on ``--train-images``
synthetic 128x128 images (mcn_training.synthetic, seed ``--seed``) and is evaluated on a held-out synthetic
split (``--val-images``, generated with another split key) through the same path as training's validation
(mcn_ros.evaluation: COCO bbox AP, keypoint AP, mIoU).

Budget: ``--steps N`` gives every network N optimizer steps. ``--minutes M`` gives every network M minutes of
training on this machine: a short calibration run measures each network's seconds per step, sets
``schedule.max_steps`` to fit M minutes (so the lr drops at 70 % and 90 % of the run happen) and
``schedule.max_minutes`` = M as a hard stop. Evaluation time is not counted in the budget.

Writes bench/results/train_synthetic.json (``rows``: network, bbox_AP, bbox_AP50, kp_AP, mIoU, null where a
task is absent, plus learning curves; the budget, wall time, exact command, machine, versions and git
commit) and bench/results/train_synthetic.md (the tables); ``--name`` names the two files otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import git_commit, machine, pct, versions

REPO = Path(__file__).resolve().parent.parent
TRAIN_CONFIG = REPO / "config" / "train" / "resnet18_det80_seg80_pose_128_synthetic.yaml"
MODELS = REPO / "config" / "models"
IMAGE_SIZE = (128, 128)
#: Targets for the three-task MCN after 30 minutes on 2 cores (fractions).
TARGETS = {"bbox_AP": 0.40, "bbox_AP50": 0.70, "kp_AP": 0.30, "mIoU": 0.60}
METRIC_KEYS = ("bbox_AP", "bbox_AP50", "kp_AP", "kp_AP50", "mIoU", "person_IoU")


@dataclass(frozen=True)
class Network:
    """One row of the tables: a model config file (+ field overrides) and where the paper lists it."""

    title: str
    table: int  # 1 = all classes (paper Table 1), 2 = person only (paper Table 2)
    model_file: str
    overrides: dict[str, Any] = field(default_factory=dict)


#: The networks, by key. Models not shipped as a config file are a shipped file with fields replaced.
NETWORKS: dict[str, Network] = {
    "only_seg": Network("Only Seg", 1, "resnet18_seg80_128.yaml"),
    "only_det": Network("Only Det", 1, "resnet18_det80_128.yaml"),
    "seg_det": Network(
        "Seg + Det",
        1,
        "resnet18_det80_seg80_pose_128.yaml",
        {"name": "resnet18_det80_seg80_128", "pose": None},
    ),
    "mcn": Network("Seg + Det + Pose (MCN)", 1, "resnet18_det80_seg80_pose_128.yaml"),
    "mcn_light": Network(
        "Seg + Det + Pose, lighter variant (not the paper's)", 1, "resnet18_det80_seg80_pose_light_128.yaml"
    ),
    "person_only_seg": Network(
        "Only Seg",
        2,
        "resnet18_seg80_128.yaml",
        {"name": "resnet18_seg1_128", "segmentation": {"classes": "person"}},
    ),
    "person_only_det": Network(
        "Only Det",
        2,
        "resnet18_det80_128.yaml",
        {"name": "resnet18_det1_128", "detection": {"classes": "person"}},
    ),
    "person_seg_det": Network(
        "Seg + Det", 2, "resnet18_det1_seg1_pose_128.yaml", {"name": "resnet18_det1_seg1_128", "pose": None}
    ),
    "det_pose": Network("Det + Pose", 2, "resnet18_det1_pose_128.yaml"),
    "person_mcn": Network("Seg + Det + Pose", 2, "resnet18_det1_seg1_pose_128.yaml"),
}
#: The default set: the three-task MCN and the single-task networks it is compared with.
DEFAULT_NETWORKS = ("only_seg", "only_det", "det_pose", "mcn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="training minutes per network (calibrated to steps)")
    budget.add_argument("--steps", type=int, help="optimizer steps per network")
    parser.add_argument(
        "--networks",
        default=",".join(DEFAULT_NETWORKS),
        help=f"comma-separated keys or 'all' (keys: {', '.join(NETWORKS)}); default: %(default)s",
    )
    parser.add_argument("--data", type=Path, default=REPO / "data" / "synthetic_bench", help="dataset folder")
    parser.add_argument("--train-images", type=int, default=4000, help="training images (default 4000)")
    parser.add_argument("--val-images", type=int, default=200, help="held-out images (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--work-dir", type=Path, default=REPO / "runs" / "bench_synthetic", help="run folders"
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results", help="results folder")
    parser.add_argument(
        "--name", default="train_synthetic", help="results file names <name>.json / .md (default %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--eval-points", type=int, default=10, help="evaluations per run (learning curve)")
    parser.add_argument(
        "--calibration-steps", type=int, default=8, help="steps timed per network (--minutes)"
    )
    parser.add_argument("--reuse", action="store_true", help="keep finished rows of an earlier identical run")
    parser.add_argument("--render", action="store_true", help="only rewrite <name>.md from <name>.json")
    return parser.parse_args(argv)


def ensure_dataset(root: Path, train_images: int, val_images: int, seed: int) -> dict[str, Any]:
    """Generate the synthetic dataset unless the same one is already there."""
    from mcn_training import synthetic, synthetic_drawing

    sources = b"".join(Path(m.__file__).read_bytes() for m in (synthetic, synthetic_drawing) if m.__file__)
    generator = hashlib.sha256(sources).hexdigest()[:16]
    spec = {
        "generator_sha256": generator,  # a changed generator means a new dataset
        "seed": seed,
        "train_images": train_images,
        "val_images": val_images,
        "image_size": list(IMAGE_SIZE),
    }
    marker = root / "bench_dataset.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return spec
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    synthetic.generate_dataset(root, train_images, seed, IMAGE_SIZE, split="train", first_id=1)
    synthetic.generate_dataset(root, val_images, seed, IMAGE_SIZE, split="val", first_id=train_images + 1)
    marker.write_text(json.dumps(spec))
    print(f"generated {train_images} + {val_images} synthetic images in {time.perf_counter() - start:.0f} s")
    return spec


def train_args(network: Network, out: Path, data: Path, threads: int, extra: list[str]) -> list[str]:
    """The mcn_training.train command line of one network."""
    overrides = [
        f"name=bench_{out.name}",
        f"model={MODELS / network.model_file}",
        f"model_overrides={json.dumps(network.overrides)}",
        f"runtime.threads={threads}",
        "runtime.progress=false",
    ]
    return ["--config", str(TRAIN_CONFIG), "--data", str(data), "--out", str(out), *overrides, *extra]


def run_training(argv: list[str]) -> dict[str, Any]:
    from mcn_training import train

    return train.main(train.parse_args(argv))


def calibrate(network: Network, key: str, args: argparse.Namespace) -> float:
    """Seconds per training step of ``network`` here (median of the logged steps after two warm-up steps)."""
    out = args.work_dir / f"calibrate_{key}"
    shutil.rmtree(out, ignore_errors=True)
    steps = max(args.calibration_steps, 4)
    extra = [
        f"schedule.max_steps={steps}",
        "eval.every_steps=0",
        "eval.at_end=false",
        "checkpoint.every_steps=0",
        "runtime.log_every_steps=1",
        "runtime.tensorboard=false",
    ]
    summary = run_training(train_args(network, out, args.data, args.threads, extra))
    times = [entry["train_time_s"] for entry in summary["losses"]]
    deltas = sorted(b - a for a, b in itertools.pairwise(times[1:]))
    shutil.rmtree(out, ignore_errors=True)
    return deltas[len(deltas) // 2]


def run_network(
    key: str, network: Network, args: argparse.Namespace, budget: dict[str, Any]
) -> dict[str, Any]:
    """Train and evaluate one network; returns its row."""
    out = args.work_dir / key
    cached = out / "bench_row.json"
    if args.reuse and cached.is_file():
        previous: dict[str, Any] = json.loads(cached.read_text())
        if previous.get("budget") == budget and previous.get("dataset") == args.dataset_spec:
            print(f"[{key}] reusing {cached}")
            return previous
    shutil.rmtree(out, ignore_errors=True)
    seconds_per_step = None
    if args.minutes is not None:
        seconds_per_step = calibrate(network, key, args)
        max_steps = max(1, int(args.minutes * 60 / seconds_per_step))
        extra = [f"schedule.max_steps={max_steps}", f"schedule.max_minutes={args.minutes}"]
        print(f"[{key}] {seconds_per_step:.3f} s/step -> {max_steps} steps in {args.minutes} min")
    else:
        max_steps = args.steps
        extra = [f"schedule.max_steps={max_steps}"]
    every = max(1, max_steps // max(args.eval_points, 1))
    extra += [f"eval.every_steps={every}", f"checkpoint.every_steps={every}"]
    argv = train_args(network, out, args.data, args.threads, extra)
    start = time.perf_counter()
    summary = run_training(argv)
    wall = time.perf_counter() - start
    final = summary["last_metrics"] or {}
    from mcn_ros.model.weights import read_metadata

    model_config, _ = read_metadata(summary["last_weights"])
    row: dict[str, Any] = {
        "key": key,
        "network": network.title,
        "table": network.table,
        "model": model_config.name,
        "tasks": sorted(model_config.tasks),
        "classes": "all 80 COCO" if network.table == 1 else "person",
        **{name: final.get(name) for name in METRIC_KEYS},
        "per_class_IoU": final.get("per_class_IoU"),
        "best": summary["best"],
        "steps": summary["global_step"],
        "epochs": summary["epoch"],
        "seconds_per_step": seconds_per_step,
        "train_minutes": round(summary["train_time_s"] / 60, 2),
        "wall_minutes": round(wall / 60, 2),
        "curve": [
            {
                "step": e["step"],
                "train_time_s": e["train_time_s"],
                **{k: e["metrics"].get(k) for k in METRIC_KEYS},
            }
            for e in summary["history"]
        ],
        "loss_curve": summary["losses"],
        "weights": summary["last_weights"],
        "train_command": shlex.join(["python", "-m", "mcn_training.train", *argv]),
        "budget": budget,
        "dataset": args.dataset_spec,
    }
    cached.write_text(json.dumps(row, indent=1))
    return row


def markdown(result: dict[str, Any]) -> str:
    budget = result["budget"]
    amount = f"{budget['value']} min" if budget["kind"] == "minutes" else f"{budget['value']} steps"
    lines = [
        "# Synthetic-data training benchmark (ResNet-18, 128x128, CPU)",
        "",
        f"Same budget per network: **{amount}** of training from random init; metrics of the final "
        f"weights on {result['dataset']['val_images']} held-out synthetic images (COCO bbox AP, keypoint AP, "
        "mIoU with background, in %). Generated by:",
        "",
        f"    {result['command']}",
        "",
        f"Machine: {result['machine']['cpu']} ({result['machine']['affinity']} cores usable), "
        f"torch {result['versions']['torch']}; total wall time {result['wall_time_s'] / 60:.1f} min.",
        "",
    ]
    titles = {
        1: "Synthetic, after the paper's Table 1: all 80 COCO classes (5 occur in the synthetic data)",
        2: "Synthetic, after the paper's Table 2: person only",
    }
    for table in (1, 2):
        rows = [r for r in result["rows"] if r["table"] == table]
        if not rows:
            continue
        lines += [
            f"## {titles[table]}",
            "",
            "| Network | Segmentation mIoU | person IoU | Detection AP | AP50 | Pose AP | steps "
            "| train min |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r['network']} | {pct(r['mIoU'])} | {pct(r['person_IoU'])} | {pct(r['bbox_AP'])} | "
                f"{pct(r['bbox_AP50'])} | {pct(r['kp_AP'])} | {r['steps']} | {r['train_minutes']} |"
            )
        lines.append("")
    mcn = next((r for r in result["rows"] if r["key"] == "mcn"), None)
    if mcn is not None and result["benchmark"] == "train_synthetic":  # the targets are for that run's budget
        checks = []
        for name, target in TARGETS.items():
            verdict = "met" if (mcn[name] or 0.0) >= target else "NOT met"
            checks.append(f"{name} {pct(mcn[name])} (target >= {pct(target)}: {verdict})")
        lines += ["Three-task MCN targets (30 min on 2 cores): " + "; ".join(checks) + ".", ""]
    lines += [
        "## Learning curves (held-out split, every evaluation)",
        "",
        "| Network | step | train min | Detection AP | AP50 | Pose AP | Pose AP50 | mIoU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        for point in r["curve"]:
            lines.append(
                f"| {r['network']} | {point['step']} | {point['train_time_s'] / 60:.1f} | "
                f"{pct(point['bbox_AP'])} | {pct(point['bbox_AP50'])} | {pct(point['kp_AP'])} | "
                f"{pct(point['kp_AP50'])} | {pct(point['mIoU'])} |"
            )
    lines += ["", f"Loss terms every 20 steps: `loss_curve` of each row in {result['benchmark']}.json.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        result = json.loads((args.results / f"{args.name}.json").read_text())
        (args.results / f"{args.name}.md").write_text(markdown(result))
        return dict(result)
    if args.minutes is None and args.steps is None:
        raise SystemExit("give the budget: --minutes M or --steps N")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    keys = (
        list(NETWORKS)
        if args.networks == "all"
        else [k.strip() for k in args.networks.split(",") if k.strip()]
    )
    unknown = [k for k in keys if k not in NETWORKS]
    if unknown:
        raise SystemExit(f"unknown network(s) {', '.join(unknown)}; known: {', '.join(NETWORKS)}")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.dataset_spec = ensure_dataset(args.data, args.train_images, args.val_images, args.seed)
    budget = (
        {"kind": "minutes", "value": args.minutes}
        if args.minutes is not None
        else {"kind": "steps", "value": args.steps}
    )
    rows = []
    for key in keys:
        print(f"=== {key}: {NETWORKS[key].title} (table {NETWORKS[key].table}) ===", flush=True)
        rows.append(run_network(key, NETWORKS[key], args, budget))
    result = {
        "benchmark": args.name,
        "command": shlex.join(
            ["python", "bench/train_synthetic.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "started": started,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "budget": budget,
        "dataset": {**args.dataset_spec, "generator": "mcn_training.synthetic", "root": str(args.data)},
        "train_config": str(TRAIN_CONFIG.relative_to(REPO)),
        "threads": args.threads,
        "targets": {"network": "mcn", "minutes": 30, "cores": 2, **TARGETS},
        "machine": machine(),
        "versions": versions(),
        "git_commit": git_commit(),
        "rows": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (args.results / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
