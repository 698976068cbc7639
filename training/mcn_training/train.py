"""Train a Multitask-CenterNet on COCO-format data: one process, or DDP under torchrun (GPUs, nodes).

    python -m mcn_training.train --config config/train/X.yaml [--data DIR] [--out DIR] [--resume [CKPT]]
                                 [--test-only] [--amp] [key=value ...]
    torchrun --nproc_per_node 8 -m mcn_training.train --config config/train/X.yaml --data /data/coco

The run directory (``--out``, default ``runs/<name>``) receives ``checkpoint.pt`` (model, optimizer,
scheduler, scaler, config, epoch, step, RNG states, best metric; written atomically every
``checkpoint.every_steps`` steps, at epoch ends and when training stops), TensorBoard event files
(``tensorboard/``), ``history.json`` (every evaluation) and the weights for the node: ``best.safetensors``
(best validation metric, never the loss) and ``last.safetensors``. ``--resume`` continues a killed run
from its latest checkpoint: the batches of the interrupted epoch that were already trained are skipped and
augmentation is a function of (seed, epoch, sample), so a resumed run equals an uninterrupted one; with a
``--config`` and no checkpoint in the run directory yet, ``--resume`` starts the run (one command for a job
that a scheduler restarts). SIGTERM/SIGINT stop at the end of the current step and write a checkpoint
first (an evaluation is skipped, or in one process abandoned, and left to the resumed run); the command
then exits with 128 + the signal (143, 130), not 0, since the run has not finished. Settings given with
``--resume`` (``optim.lr=...``) take effect, with a warning that the run is no longer an exact continuation.

This module is the entry point (config from the command line or a checkpoint, then train or evaluate). The
parts live in modules of one job each: ``cli`` (the command line), ``distributed`` (ranks, devices,
stopping together), ``sampling`` (resumable sample order, seeded augmentation), ``builders`` (datasets,
model, optimizer, lr schedule), ``checkpoints`` (training state, RNG states, atomic files),
``reporting`` (log lines, TensorBoard, history), ``training_run`` (a run's pieces, evaluation, checkpoints
and exported weights) and ``trainer`` (the training loop).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped,unused-ignore]

from mcn_ros.model.backbones import BackboneWeightsError
from mcn_ros.model.config import ConfigError, ModelConfig
from mcn_ros.model.weights import WeightsError
from mcn_training.builders import select_metric
from mcn_training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
)
from mcn_training.cli import get_args_parser, parse_args
from mcn_training.config import (
    TrainConfig,
    TrainConfigError,
    apply_overrides,
    load_train_config,
    model_config_dict,
    resolve_split,
)
from mcn_training.errors import TrainError, one_line
from mcn_training.trainer import Trainer

# The entry point, and names its callers (the tests) import from here though they live in other modules.
__all__ = [
    "CHECKPOINT_FORMAT",
    "USER_ERRORS",
    "TrainError",
    "Trainer",
    "atomic_torch_save",
    "get_args_parser",
    "load_checkpoint",
    "main",
    "parse_args",
    "prepare",
    "run",
    "setup_logging",
]

LOG = logging.getLogger("mcn_training")

#: Errors reported as one line by the command-line entry points (no traceback).
USER_ERRORS: tuple[type[Exception], ...] = (
    TrainError, TrainConfigError, ConfigError, WeightsError, BackboneWeightsError
)  # fmt: skip


def prepare(
    args: argparse.Namespace,
) -> tuple[TrainConfig, ModelConfig, dict[str, Any] | None]:
    """Config (file or checkpoint), command-line overrides and model config, validated before any work."""
    checkpoint = _checkpoint_to_resume(args)
    cfg, model_config = _load_configs(args, checkpoint)
    _check_inputs(args, cfg, model_config, checkpoint)
    return cfg, model_config, checkpoint


def _checkpoint_to_resume(args: argparse.Namespace) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` names (None without --resume)."""
    if args.resume not in (None, "auto") and "=" in str(args.resume) and not Path(args.resume).exists():
        # `--resume key=value`: argparse gave the first override to --resume's optional value.
        args.overrides = [str(args.resume), *(args.overrides or [])]
        args.resume = "auto"
    if args.resume is None:
        return None
    if args.resume == "auto":
        if args.out is None and args.config is None:
            raise TrainError("--resume without a checkpoint path needs --out or --config to find the run")
        if args.out is not None:
            path = Path(args.out) / CHECKPOINT_NAME
        else:
            path = load_train_config(args.config, args.overrides).output_dir / CHECKPOINT_NAME
        if not path.exists() and args.config is not None:
            # One command for a job that a scheduler restarts: the first start has nothing to resume.
            LOG.warning("--resume: no checkpoint at %s yet: starting the run from the beginning", path)
            return None
    else:
        path = Path(args.resume)
    return load_checkpoint(path)


def _config_overrides(args: argparse.Namespace) -> list[str]:
    """The command line's ``key=value`` overrides, then those that --data/--out/--device mean; --amp's
    before them, so that an explicit runtime.amp wins (``--amp runtime.amp=fp16``: fp16)."""
    overrides = [f"runtime.amp={args.amp}"] if args.amp is not None else []
    overrides += args.overrides or []
    if args.data is not None:
        overrides.append(f"data.root={json.dumps(str(args.data))}")
    if args.out is not None:
        overrides.append(f"out_dir={json.dumps(str(args.out))}")
    if args.device is not None:
        overrides.append(f"runtime.device={args.device}")
    return overrides


def _load_configs(
    args: argparse.Namespace, checkpoint: dict[str, Any] | None
) -> tuple[TrainConfig, ModelConfig]:
    """The training config (--config, else the checkpoint's) with the overrides, and its model config."""
    overrides = _config_overrides(args)
    if args.config is not None:
        cfg = load_train_config(args.config, overrides)
        model_dict = model_config_dict(cfg)
    elif checkpoint is not None:
        try:
            cfg = TrainConfig.from_dict(apply_overrides(checkpoint["config"], overrides))
        except TrainConfigError as exc:
            raise TrainConfigError(f"checkpoint config: {exc}") from exc
        model_dict = checkpoint["model_config"]
    else:
        raise TrainConfigError("--config: a training config is required (or --resume CKPT)")
    try:
        model_config = ModelConfig.from_dict(model_dict)
    except ConfigError as exc:
        raise TrainConfigError(f"model ({cfg.model}): {exc}") from exc
    if checkpoint is not None and checkpoint["model_config"] != model_config.to_dict():
        theirs = checkpoint["model_config"]
        ours = model_config.to_dict()
        differing = next(k for k in ours if ours.get(k) != theirs.get(k))
        raise TrainConfigError(
            f"model: the config's model differs from the checkpoint's in {differing!r} "
            f"({ours.get(differing)!r} vs {theirs.get(differing)!r}); resume without --config to use the "
            "checkpoint's"
        )
    return cfg, model_config


def _check_inputs(
    args: argparse.Namespace,
    cfg: TrainConfig,
    model_config: ModelConfig,
    checkpoint: dict[str, Any] | None,
) -> None:
    """Fail before any work: the metric, the data splits, weight files, a run that would be overwritten."""
    select_metric(cfg.eval.metric, model_config)
    if cfg.data.root is None:
        raise TrainConfigError("data.root: no dataset directory; pass --data DIR")
    with_keypoints = "pose" in model_config.tasks
    if not args.test_only:
        resolve_split(cfg.data, cfg.data.root, cfg.data.train_split, with_keypoints)
    resolve_split(cfg.data, cfg.data.root, cfg.data.val_split, with_keypoints)
    for name in ("backbone_weights", "init_weights"):
        path = getattr(cfg, name)
        if path and checkpoint is None and not Path(path).is_file():
            raise TrainConfigError(f"{name}: file {path} does not exist")
    if checkpoint is None and not args.test_only and (cfg.output_dir / CHECKPOINT_NAME).exists():
        raise TrainError(
            f"{cfg.output_dir} already holds a checkpoint; pass --resume to continue it or choose "
            "another --out"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or with ``--test-only`` evaluate) as ``args`` say; returns the run summary. Raises on errors."""
    cfg, model_config, checkpoint = prepare(args)
    trainer = Trainer(args, cfg, model_config, checkpoint)
    try:
        if args.test_only:
            metrics = trainer.evaluate()
            if trainer.dist.is_main:
                trainer.out.mkdir(parents=True, exist_ok=True)
                atomic_write_text(trainer.out / "eval_report.json", json.dumps(metrics, indent=1))
            return {"metrics": metrics, "out_dir": str(trainer.out)}
        # Log lines go above the progress bar (tqdm.write) instead of through it.
        with logging_redirect_tqdm(loggers=[LOG]):
            return trainer.fit()
    finally:
        trainer.close()


def setup_logging() -> None:
    """Console logging: INFO on rank 0, warnings elsewhere."""
    rank = int(os.environ.get("RANK", "0"))
    if not LOG.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
        )
        LOG.addHandler(handler)
        LOG.propagate = False
    LOG.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def main(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Entry point (torchvision style). With ``args`` errors raise; from the command line (``args`` None)
    configuration, data and checkpoint errors print one line and exit with status 2."""
    setup_logging()
    if args is not None:
        return run(args)
    parsed = parse_args()
    try:
        summary = run(parsed)
    except USER_ERRORS as exc:
        print(f"mcn_training.train: error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    if summary.get("interrupted"):
        # Stopped by a signal after its checkpoint: not finished, as a scheduler or torchrun must see it
        # (exit 0 read as done); the shell's convention, 128 + the signal (143 for SIGTERM).
        raise SystemExit(128 + int(summary["stop_signal"]))
    return summary


if __name__ == "__main__":
    main()
