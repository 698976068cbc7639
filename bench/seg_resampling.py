"""Segmentation back to image pixels: nearest against bilinear resampling, accuracy and time.

    python bench/seg_resampling.py [--rounds 10]

Three measurements, each for both ``DecodeOptions.segmentation_resampling`` values:
1. the oracle round trip (bench/oracle.py) with one-hot logits at output stride 4: what the decoding itself
   loses when the logits are perfect;
2. the demo weights (demo/mcn_demo.safetensors, 128x128 input, stride-4 logits) on the 200 held-out images
   of the demo's synthetic set (128x128, seed 0): mIoU and person IoU of a trained model;
3. time of the segmentation decoding (``decode_batch``: argmax, then resampling to the image) on the stored
   outputs of the demo weights for 640x480 synthetic images at a 384x512 network input (the node's default
   scale for a VGA camera), interleaved rounds, next to the forward's time; and the share of pixels whose
   class bilinear resampling changes.

Writes bench/results/seg_resampling.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from _common import git_commit, machine, read_image, versions
from oracle import oracle_config, run_oracle
from torch import nn
from torch.utils.data import DataLoader

from mcn_ros.model.config import ModelConfig
from mcn_ros.model.decode import SEGMENTATION_RESAMPLING, DecodeOptions, decode_batch
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.preprocess import preprocess
from mcn_ros.model.weights import load_weights
from mcn_training.config import EvalConfig
from mcn_training.data import CocoMultitaskDataset
from mcn_training.evaluate import decode_options, evaluate_model
from mcn_training.synthetic import generate_dataset

REPO = Path(__file__).resolve().parent.parent
DEMO_WEIGHTS = REPO / "demo" / "mcn_demo.safetensors"
RESULTS = REPO / "bench" / "results"


class DemoSplit(NamedTuple):
    """How the demo's held-out split is generated (``mcn_training.synthetic.generate_dataset`` arguments)."""

    images: int
    seed: int
    size: tuple[int, int]
    first_id: int


#: The demo's held-out split: bench/demo_weights.py's dataset (4000 training images come first).
DEMO_VAL = DemoSplit(images=200, seed=0, size=(128, 128), first_id=4001)


def oracle_miou(folder: Path, resampling: str) -> float:
    """mIoU of the oracle round trip at output stride 4 (one-hot logits) with ``resampling``."""
    config = oracle_config((160, 256), 4)
    options = DecodeOptions.from_config(config.decode, segmentation_resampling=resampling)
    miou = run_oracle(folder, "val", config, options).mIoU
    if miou is None:
        raise RuntimeError("the oracle round trip scored no segmentation")
    return float(miou)


def generate_demo_val(folder: Path) -> Path:
    """Write the demo's held-out split (:data:`DEMO_VAL`) into ``folder``; returns ``folder``."""
    generate_dataset(folder, DEMO_VAL.images, DEMO_VAL.seed, DEMO_VAL.size, "val", DEMO_VAL.first_id)
    return folder


def demo_val_dataset(folder: Path, config: ModelConfig) -> CocoMultitaskDataset:
    """The held-out split written by :func:`generate_demo_val`, as training's validation reads it."""
    return CocoMultitaskDataset(
        str(folder / "images" / "val"),
        str(folder / "annotations" / "instances_val.json"),
        str(folder / "annotations" / "person_keypoints_val.json"),
        config,
        None,
    )


def demo_report(
    model: nn.Module,
    config: ModelConfig,
    folder: Path,
    options: DecodeOptions | None = None,
    channels_last: bool = False,
) -> Any:
    """``model``'s outputs on the held-out split in ``folder`` decoded (training's validation options unless
    ``options``) and scored as training's validation does, quietly; the EvalReport."""
    dataset = demo_val_dataset(folder, config)
    loader = DataLoader(dataset, batch_size=16, num_workers=0)
    options = options or decode_options(EvalConfig(), config)
    with contextlib.redirect_stdout(io.StringIO()):
        report = evaluate_model(
            model, config, loader, dataset.coco, torch.device("cpu"), options, channels_last=channels_last
        )
    assert report is not None
    return report


def demo_accuracy(folder: Path, resampling: str) -> dict[str, float]:
    """mIoU and person IoU of the demo weights on the held-out split with ``resampling``."""
    model, config, _ = load_weights(DEMO_WEIGHTS, device="cpu")
    options = dataclasses.replace(decode_options(EvalConfig(), config), segmentation_resampling=resampling)
    report = demo_report(model, config, folder, options)
    return {"mIoU": float(report.mIoU), "person_IoU": float(report.person_IoU or 0.0)}


def timing(images: list[np.ndarray], rounds: int) -> dict[str, Any]:
    """Forward and segmentation-decoding ms (median, p95) per resampling, on each image's stored outputs."""
    predictor = Predictor.from_weights(DEMO_WEIGHTS, device="cpu")
    config = dataclasses.replace(predictor.config, input_size=(512, 512))
    predictor.config = config
    tasks = frozenset({"segmentation"})
    stored = []
    forward: list[float] = []
    for image in images:
        size = (int(image.shape[0]), int(image.shape[1]))
        batch, letterboxes = preprocess(
            [image], predictor.input_size([size]), config.mean, config.std, channels_last=True
        )
        for _ in range(3):
            start = time.perf_counter()
            outputs = predictor.forward(batch, tasks)
            forward.append((time.perf_counter() - start) * 1000)
        stored.append((outputs, letterboxes, [size]))
    times: dict[str, list[float]] = {mode: [] for mode in SEGMENTATION_RESAMPLING}
    options = {mode: DecodeOptions(segmentation_resampling=mode) for mode in SEGMENTATION_RESAMPLING}
    changed = []  # share of each image's pixels whose class bilinear changes (next to class boundaries)
    for outputs, letterboxes, sizes in stored:
        maps = [
            decode_batch(outputs, letterboxes, sizes, config, tasks, options[mode])[0].segmentation
            for mode in SEGMENTATION_RESAMPLING
        ]
        changed.append(float(np.mean(maps[0] != maps[1])))
    for round_index in range(rounds + 1):  # the first round warms up
        for outputs, letterboxes, sizes in stored:
            for mode in SEGMENTATION_RESAMPLING:
                start = time.perf_counter()
                decode_batch(outputs, letterboxes, sizes, config, tasks, options[mode])
                if round_index:
                    times[mode].append((time.perf_counter() - start) * 1000)

    def stats(samples: list[float]) -> dict[str, float]:
        return {
            "median": round(float(np.median(samples)), 2),
            "p95": round(float(np.percentile(samples, 95)), 2),
        }

    return {
        "input_size": list(predictor.input_size([images[0].shape[:2]])),
        "forward_ms": stats(forward),
        "segmentation_decode_ms": {mode: stats(t) for mode, t in times.items()},
        "pixels_changed_by_bilinear": round(float(np.mean(changed)), 4),
    }


def render(record: dict[str, Any]) -> str:
    """The .md table beside the JSON."""
    rows = [
        "# Segmentation resampling: nearest vs bilinear",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git']}; {record['machine']['cpu']}, "
        f"{record['threads']} threads).",
        "",
        "| measurement | nearest | bilinear |",
        "|---|---:|---:|",
    ]
    oracle, demo, speed = record["oracle_stride4"], record["demo_weights"], record["timing"]
    rows.append(
        f"| oracle mIoU, stride-4 one-hot logits | {oracle['nearest']:.3f} | {oracle['bilinear']:.3f} |"
    )
    for key in ("mIoU", "person_IoU"):
        rows.append(
            f"| demo weights {key} (200 held-out images) | {demo['nearest'][key]:.3f} | "
            f"{demo['bilinear'][key]:.3f} |"
        )
    size = "x".join(str(v) for v in speed["input_size"])
    decode = speed["segmentation_decode_ms"]
    for stat in ("median", "p95"):
        rows.append(
            f"| segmentation decoding ms, 640x480 image, {size} input ({stat}) | "
            f"{decode['nearest'][stat]:.2f} | {decode['bilinear'][stat]:.2f} |"
        )
    forward = speed["forward_ms"]["median"]
    rows += [
        "",
        f"Segmentation decoding = argmax over the classes + resampling to the 640x480 image, on stored "
        f"outputs "
        f"(median forward of the segmentation-only network at {size}: {forward:.1f} ms; bilinear adds "
        f"{100 * (decode['bilinear']['median'] - decode['nearest']['median']) / forward:.1f} % of it). "
        f"Bilinear changed {100 * speed['pixels_changed_by_bilinear']:.1f} % of the pixels of the timed "
        "images (those next to class boundaries).",
        "",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds over the images (default 10)")
    parser.add_argument("--images", type=int, default=8, help="640x480 images timed (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "oracle", 64, 7, (120, 200), split="val")
        generate_demo_val(root / "demo")
        files = generate_dataset(root / "vga", args.images, 11, (480, 640), split="val")
        paths = sorted(files["images"].iterdir())
        images = [cv2.cvtColor(read_image(p), cv2.COLOR_BGR2RGB) for p in paths]
        oracle = {mode: round(oracle_miou(root / "oracle", mode), 4) for mode in SEGMENTATION_RESAMPLING}
        demo = {mode: demo_accuracy(root / "demo", mode) for mode in SEGMENTATION_RESAMPLING}
        speed = timing(images, args.rounds)
    arguments = sys.argv[1:] if argv is None else list(argv)
    record = {
        "oracle_stride4": oracle,
        "demo_weights": {mode: {k: round(v, 4) for k, v in values.items()} for mode, values in demo.items()},
        "timing": speed,
        "threads": args.threads,
        "command": shlex.join(["python", "bench/seg_resampling.py", *arguments]),
        "wall_s": round(time.perf_counter() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seg_resampling.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "seg_resampling.md").write_text(render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
