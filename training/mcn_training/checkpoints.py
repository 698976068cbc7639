"""Checkpoint I/O: the training state, RNG states, atomic writes, reading checkpoints back, weight digests.

Checkpoints hold only plain python values and tensors, so that they load with
``torch.load(weights_only=True)`` (the only way this package loads them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mcn_ros.bag.provenance import git_state
from mcn_training.errors import TrainError

LOG = logging.getLogger("mcn_training")

#: File names inside the run directory.
CHECKPOINT_NAME = "checkpoint.pt"
BEST_WEIGHTS_NAME = "best.safetensors"
LAST_WEIGHTS_NAME = "last.safetensors"
HISTORY_NAME = "history.json"
#: Identifies our checkpoint files (the only files this package torch.loads, with weights_only=True).
CHECKPOINT_FORMAT = "mcn_training.checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """Where training stands; everything here is stored in checkpoints as plain python values."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in that epoch
    global_step: int = 0  # optimizer steps done in total
    train_time_s: float = 0.0  # training wall time (evaluation and checkpoints not counted)
    best_metric: float | None = None
    best_step: int | None = None
    best_epoch: float | None = None
    last_eval_step: int | None = None
    last_metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # every evaluation
    losses: list[dict[str, Any]] = field(default_factory=list)  # logged loss means (learning curve)

    def current_metrics(self) -> dict[str, Any] | None:
        """The metrics of the last evaluation if it evaluated the current weights, else None."""
        return self.last_metrics if self.last_eval_step == self.global_step else None

    def record_evaluation(self, metrics: dict[str, Any], metric: str, epoch: float) -> bool:
        """Add an evaluation of the current step to the history; True if ``metric`` is the best so far."""
        self.last_eval_step, self.last_metrics = self.global_step, metrics
        entry = {
            "epoch": epoch,
            "step": self.global_step,
            "train_time_s": round(self.train_time_s, 3),
            "metrics": metrics,
        }
        self.history.append(entry)
        value = metrics.get(metric)
        if value is not None and (self.best_metric is None or value > self.best_metric):
            self.best_metric, self.best_step, self.best_epoch = float(value), self.global_step, epoch
            return True
        return False


def to_builtin_types(value: Any) -> Any:
    """``value`` as dicts, lists, str, int, float, bool and None (tensors kept as they are): loadable with
    torch.load(weights_only=True), and JSON when it holds no tensors. Paths, numpy values and anything
    else unknown become strings or python numbers."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_builtin_types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin_types(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def rng_state() -> dict[str, Any]:
    """This process's RNG states in a weights_only-loadable form."""
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename (never a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file + os.replace)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read one of our checkpoint files with ``torch.load(weights_only=True)``; raises TrainError."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for torn or foreign files
        # Not torch's own text: it goes on for lines and suggests loading with weights_only=False.
        reason = type(exc).__name__
        raise TrainError(
            f"checkpoint {path} cannot be read (truncated or not a checkpoint; {reason})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"checkpoint {path} is not an mcn_training checkpoint")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise TrainError(f"checkpoint {path} has format version {ckpt['version']}, newer than this code")
    return ckpt


def restore_training(
    ckpt: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    world_size: int,
    steps_per_epoch: int,
) -> TrainState:
    """Put optimizer (unless None: a new one), scheduler, scaler and the RNGs back as ``ckpt`` holds them;
    returns its TrainState. The optimizer's hyperparameters and the scheduler's base rates are the
    checkpoint's: the caller sets those of its own config.

    Raises TrainError when the run stopped mid-epoch and this run's epochs have another number of steps.
    """
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    known = {f.name for f in dataclasses.fields(TrainState)}
    state = TrainState(**{k: v for k, v in ckpt["state"].items() if k in known})
    if ckpt.get("world_size", 1) != world_size:
        LOG.warning(
            "resuming a %d-process run with %d processes: the sample order of the interrupted epoch "
            "changes (exact resume needs the same number of processes)",
            ckpt.get("world_size", 1),
            world_size,
        )
    if ckpt.get("steps_per_epoch") != steps_per_epoch and state.step_in_epoch:
        raise TrainError(
            f"checkpoint was written with {ckpt.get('steps_per_epoch')} steps per epoch, this run has "
            f"{steps_per_epoch} (different data or batch size): cannot resume mid-epoch"
        )
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    LOG.info(
        "resumed at epoch %d, step %d of the epoch (global step %d)",
        state.epoch,
        state.step_in_epoch,
        state.global_step,
    )
    return state


def git_info() -> dict[str, Any]:
    """Commit and dirty flag of the source tree this package runs from (None outside git)."""
    commit, dirty = git_state(Path(__file__).resolve().parent)
    return {"commit": commit, "dirty": dirty}


def state_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, bytes): equal digests mean equal weights."""
    return _digest(model.state_dict().items())


def parameter_digest(model: nn.Module) -> str:
    """sha256 of the parameters only (names, dtypes, bytes), not the buffers: BatchNorm's running
    statistics change on every training forward, so only this digest shows whether a step learned."""
    return _digest(model.named_parameters())


def _digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
