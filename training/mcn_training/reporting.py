"""What a run reports while it trains: loss means per log interval (a log line or the progress bar, and
TensorBoard), evaluations (TensorBoard and ``history.json``) and its configuration (``config.yaml``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mcn_ros.model.config import ModelConfig
from mcn_training.checkpoints import HISTORY_NAME, atomic_write_text
from mcn_training.config import TrainConfig
from mcn_training.distributed import DistInfo

LOG = logging.getLogger("mcn_training")


class LossWindow:
    """The loss terms and images of the training steps since the last log line."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Start a new window (now)."""
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.images = 0
        self.start = time.perf_counter()

    def add(self, losses: Mapping[str, torch.Tensor], images: int) -> None:
        """Count one step that trained on ``images`` images (over all ranks)."""
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, torch.zeros((), device=self.device)) + value.float()
        self.count += 1
        self.images += images

    def rate(self) -> float:
        """Images per second since the window started."""
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def means(self, dist_info: DistInfo) -> dict[str, float]:
        """Each loss term's mean over the window's steps and all ranks (a collective call: every rank)."""
        names = sorted(self.sums)
        values = torch.stack([self.sums[n] for n in names]) / self.count
        if dist_info.distributed:
            dist.all_reduce(values)
            values /= dist_info.world_size
        return dict(zip(names, values.tolist(), strict=True))


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over an epoch's steps (disabled: it only counts)."""
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def report_losses(
    means: Mapping[str, float], lr: float, rate: float, step: int, epoch: float, writer: Any, bar: Any
) -> None:
    """Log the loss means (a line for the console and a job's log; the progress bar shows the total too) and
    add them to TensorBoard."""
    if writer is not None:
        for name, value in means.items():
            writer.add_scalar(f"loss/{name}", value, step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar("train/images_per_s", rate, step)
    text = " ".join(f"{k} {v:.4f}" for k, v in means.items())
    if bar is not None and not bar.disable:
        bar.set_postfix_str(f"loss {means.get('total', float('nan')):.3f} lr {lr:.2e}")
    LOG.info("step %d (epoch %.2f): %s lr %.3g, %.1f img/s", step, epoch, text, lr, rate)


def report_evaluation(
    out: Path, writer: Any, metrics: Mapping[str, Any], step: int, history: Mapping[str, Any]
) -> None:
    """Add an evaluation's numeric metrics to TensorBoard and rewrite ``history.json``."""
    if writer is not None:
        for key, val in metrics.items():
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                writer.add_scalar(f"val/{key}", val, step)
        writer.flush()
    atomic_write_text(out / HISTORY_NAME, json.dumps(history, indent=1))


def write_run_config(out: Path, cfg: TrainConfig, model_config: ModelConfig, command: str) -> None:
    """``config.yaml`` in the run directory: the training and model configs and the command."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(
        {"train": cfg.to_dict(), "model": model_config.to_dict(), "command": command}, sort_keys=False
    )
    atomic_write_text(out / "config.yaml", text)


def open_tensorboard(out: Path, global_step: int) -> Any:
    """A SummaryWriter on ``<out>/tensorboard``; a run starting at ``global_step`` (a checkpoint's) hides
    the events an earlier run logged after that step (TensorBoard purges steps >= purge_step).

    Not those at the step itself: its losses, and its evaluation where the checkpoint holds one, are never
    logged again (a resumed run logs from the next step; it evaluates the checkpoint's step only where that
    evaluation was not made, so not logged, before)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=global_step + 1)
