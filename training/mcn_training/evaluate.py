"""Evaluate a weights file on a COCO-format dataset: COCO bbox AP, keypoint AP and mIoU.

    python -m mcn_training.evaluate --weights runs/x/best.safetensors --data DIR --split val \
        [--out report.json]

Training's periodic validation runs the same functions (:func:`evaluate_model`): images are letterboxed by
the dataset (no augmentation), the model runs batched, :func:`mcn_ros.model.decode.decode_batch` decodes
exactly as the node's Predictor does, and :func:`mcn_ros.evaluation.evaluate` scores the results.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from torch import nn
from torch.utils.data import DataLoader, Subset

from mcn_ros.cli_types import integer_at_least
from mcn_ros.evaluation import EvalReport, evaluate
from mcn_ros.model.config import ConfigError, ModelConfig
from mcn_ros.model.decode import DecodeOptions, decode_batch
from mcn_ros.model.preprocess import Letterbox
from mcn_ros.model.results import Results
from mcn_ros.model.weights import WeightsError, load_weights
from mcn_training.config import DataConfig, EvalConfig, TrainConfigError, check_device_name, resolve_split
from mcn_training.distributed import select_device
from mcn_training.errors import TrainError, one_line

LOG = logging.getLogger("mcn_training")


def decode_options(eval_config: EvalConfig, model_config: ModelConfig) -> DecodeOptions:
    """Decoding for COCO evaluation: low thresholds (AP integrates over scores), the model's peak settings."""
    return DecodeOptions.from_config(
        model_config.decode,
        score_threshold=eval_config.score_threshold,
        pose_score_threshold=eval_config.pose_score_threshold,
        max_detections=eval_config.max_detections,
    )


def subset_coco(coco: COCO, image_ids: Sequence[int]) -> COCO:
    """A COCO ground truth restricted to ``image_ids`` (so unevaluated images do not count as misses)."""
    keep = set(int(i) for i in image_ids)
    data = {k: v for k, v in coco.dataset.items() if k not in ("images", "annotations")}
    data["images"] = [im for im in coco.dataset["images"] if im["id"] in keep]
    data["annotations"] = [a for a in coco.dataset.get("annotations", []) if a["image_id"] in keep]
    subset = COCO()
    subset.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        subset.createIndex()
    return subset


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    model_config: ModelConfig,
    loader: DataLoader[Any],
    device: torch.device,
    options: DecodeOptions,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[int, Results]:
    """Run every batch of an evaluation loader (dataset samples: image, image_id, letterbox, orig_size)."""
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    was_training = model.training
    model.eval()
    predictions: dict[int, Results] = {}
    tasks = model_config.tasks
    try:
        for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True, leave=False):
            images = batch["image"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            autocast = (
                torch.autocast(device.type, dtype=amp_dtype)
                if amp_dtype is not None
                else contextlib.nullcontext()
            )
            with autocast:
                outputs = model(images)
            outputs = {k: v.float() for k, v in outputs.items()}
            letterboxes = [Letterbox.from_array(row) for row in batch["letterbox"].numpy()]
            sizes = [(int(h), int(w)) for h, w in batch["orig_size"].tolist()]
            results = decode_batch(outputs, letterboxes, sizes, model_config, tasks, options)
            for image_id, result in zip(batch["image_id"].tolist(), results, strict=True):
                predictions[int(image_id)] = result
    finally:
        model.train(was_training)
    return predictions


def evaluate_model(
    model: nn.Module,
    model_config: ModelConfig,
    loader: DataLoader[Any],
    coco_gt: COCO,
    device: torch.device,
    options: DecodeOptions,
    *,
    rank: int = 0,
    world_size: int = 1,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> EvalReport | None:
    """Predict (each rank its shard of the loader), gather on rank 0 and score there.

    Returns the report on rank 0 and None on the other ranks.
    """
    predictions = predict_loader(
        model,
        model_config,
        loader,
        device,
        options,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        progress=progress,
    )
    if world_size > 1:
        gathered: list[Any] | None = [None] * world_size if rank == 0 else None
        dist.gather_object(predictions, gathered, dst=0)
        if rank != 0:
            return None
        assert gathered is not None
        predictions = {}
        for part in gathered:
            predictions.update(part)
    det_classes = model_config.detection.classes if model_config.detection is not None else None
    seg_classes = model_config.segmentation.classes if model_config.segmentation is not None else None
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval's summaries; the report has the numbers
        return evaluate(coco_gt, predictions, det_classes, seg_classes)


# ------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command-line interface of ``python -m mcn_training.evaluate``."""
    parser = argparse.ArgumentParser(
        prog="python -m mcn_training.evaluate",
        description="Evaluate an mcn_ros weights file on a COCO-format dataset (bbox AP, keypoint AP, mIoU).",
        add_help=add_help,
    )
    parser.add_argument("--weights", type=Path, required=True, help="weights file (.safetensors)")
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset directory (COCO or synthetic layout)"
    )
    parser.add_argument("--split", default="val2017", help="split name (default val2017; synthetic: val)")
    parser.add_argument("--out", type=Path, help="write the report here as JSON (and a .md table beside it)")
    parser.add_argument(
        "--batch-size", type=integer_at_least(1), default=EvalConfig.batch_size, help="images per batch"
    )
    parser.add_argument(
        "--workers", type=integer_at_least(0), default=2, help="DataLoader workers (default 2)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--max-images", type=integer_at_least(1), help="evaluate the first N images only")
    parser.add_argument(
        "--score-threshold", type=float, default=EvalConfig.score_threshold, help="detection score threshold"
    )
    parser.add_argument(
        "--pose-score-threshold",
        type=float,
        default=EvalConfig.pose_score_threshold,
        help="person score threshold for keypoint AP",
    )
    parser.add_argument(
        "--max-detections", type=integer_at_least(1), default=EvalConfig.max_detections, help="per image"
    )
    parser.add_argument("--image-dir", default="auto", help="image folder template under --data ({split})")
    parser.add_argument("--instances", default=DataConfig.instances, help="instances json template")
    parser.add_argument("--keypoints", default=DataConfig.keypoints, help="keypoints json template")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as ``args`` say; returns the JSON report (also written to ``--out``). Raises on errors."""
    from mcn_training.data import CocoMultitaskDataset

    try:
        setting = check_device_name(args.device)
    except ValueError as exc:
        raise TrainConfigError(f"--device {exc}") from exc
    device = select_device(setting, 0, "--device")  # TrainError where CUDA or that GPU is missing
    if args.out is not None and args.out.suffix == ".md":
        raise TrainConfigError(f"--out {args.out}: name the JSON report (its .md table goes beside it)")
    eval_cfg = EvalConfig(
        batch_size=args.batch_size,
        max_images=args.max_images,
        score_threshold=args.score_threshold,
        pose_score_threshold=args.pose_score_threshold,
        max_detections=args.max_detections,
    )
    eval_cfg.validate()
    data_cfg = DataConfig(
        root=str(args.data), image_dir=args.image_dir, instances=args.instances, keypoints=args.keypoints
    )
    data_cfg.validate()
    model, model_config, provenance = load_weights(args.weights, device=str(device))
    files = resolve_split(data_cfg, args.data, args.split, "pose" in model_config.tasks)
    try:
        dataset = CocoMultitaskDataset(
            str(files.image_dir),
            str(files.instances),
            None if files.keypoints is None else str(files.keypoints),
            model_config,
            None,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainConfigError(
            f"data: cannot load split {args.split!r} from {files.instances}: {exc}"
        ) from exc
    coco = dataset.coco
    evaluated: Any = dataset
    if args.max_images is not None and args.max_images < len(dataset):
        keep = list(range(args.max_images))
        evaluated = Subset(dataset, keep)
        coco = subset_coco(dataset.coco, [int(dataset.image_ids[i]) for i in keep])
    loader = DataLoader(evaluated, batch_size=args.batch_size, num_workers=args.workers)
    start = time.perf_counter()
    report = evaluate_model(
        model, model_config, loader, coco, device, decode_options(eval_cfg, model_config), progress=True
    )
    assert report is not None
    result = {
        "weights": str(args.weights),
        "model": model_config.name,
        "tasks": sorted(model_config.tasks),
        "data": str(Path(args.data).resolve()),
        "split": args.split,
        "images": len(evaluated),
        "metrics": report.to_dict(),
        "provenance": dict(provenance) if isinstance(provenance, Mapping) else provenance,
        "command": shlex.join(["python", "-m", "mcn_training.evaluate", *sys.argv[1:]]),
        "device": str(device),
        "host": platform.node(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    table = report.table()
    print(f"{model_config.name} on {args.split} ({len(evaluated)} images):\n{table}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=_json_default), encoding="utf-8")
        args.out.with_suffix(".md").write_text(
            f"# {model_config.name}: {args.weights} on {args.data} / {args.split}\n\n{table}\n",
            encoding="utf-8",
        )
    return result


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def main(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Entry point; from the command line (``args`` None) errors print one line and exit with status 2."""
    if args is not None:
        return run(args)
    parsed = get_args_parser().parse_args()
    try:
        return run(parsed)
    except (TrainConfigError, ConfigError, WeightsError, TrainError) as exc:  # TrainError: a bad image
        print(f"mcn_training.evaluate: error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
