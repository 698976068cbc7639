"""One training run's pieces, built from its config (and checkpoint), and what a run does besides the loop:
evaluate, save checkpoints, export weights for the node, summarize. :class:`~mcn_training.trainer.Trainer`
adds the training loop."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mcn_ros import typed_config
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.weights import save_weights
from mcn_training.builders import (
    build_datasets,
    build_model,
    build_optimizer,
    lr_factor,
    optimizer_settings,
    resolve_amp,
    select_metric,
)
from mcn_training.checkpoints import (
    BEST_WEIGHTS_NAME,
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    LAST_WEIGHTS_NAME,
    TrainState,
    atomic_torch_save,
    git_info,
    restore_training,
    rng_state,
    state_digest,
    to_builtin_types,
)
from mcn_training.cli import command_line
from mcn_training.config import OptimConfig, TrainConfig, TrainConfigError
from mcn_training.distributed import broadcast_buffers, init_distributed
from mcn_training.errors import TrainError
from mcn_training.evaluate import decode_options, evaluate_model
from mcn_training.losses import MCNLoss
from mcn_training.sampling import ResumableSampler, SeededSamples, eval_loader

LOG = logging.getLogger("mcn_training")


def determinism_state() -> tuple[bool, bool, bool, bool]:
    """torch's deterministic-algorithms setting (on, warn-only) and cuDNN's (deterministic, benchmark)."""
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )


def deterministic_kernels() -> None:
    """What ``runtime.deterministic`` turns on (see :class:`~mcn_training.config.RuntimeConfig`)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable matmuls
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def restore_determinism(state: tuple[bool, bool, bool, bool]) -> None:
    """Set back what :func:`determinism_state` read."""
    enabled, warn_only, cudnn_deterministic, benchmark = state
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_deterministic
    torch.backends.cudnn.benchmark = benchmark


def changed_optim_settings(saved: Mapping[str, Any], optim: OptimConfig) -> dict[str, tuple[Any, Any]]:
    """The optimizer settings of ``optim`` that differ from a checkpoint's (``saved``, its config's optim
    section): {field: (checkpoint's value, this run's)}; betas only for Adam(W), momentum only for SGD."""
    current = typed_config.to_dict(optim)
    ignored = {"betas", "momentum"} - set(optimizer_settings(optim))  # the other optimizer kind's
    return {
        key: (saved[key], value)
        for key, value in current.items()
        if key in saved and key not in ignored and saved[key] != value
    }


#: Config settings that change what a resumed run trains (beside ``optim``, see
#: :func:`changed_optim_settings`): dotted keys, a section name covering all its keys. Paths, evaluation,
#: checkpointing and logging settings change no step; a longer or shorter schedule (``schedule.epochs``,
#: ``schedule.max_steps``) only where it moves the learning rate, which the resumed run checks itself.
TRAJECTORY_SETTINGS = (
    "model", "model_overrides", "loss", "schedule.lr_drops", "schedule.lr_drop_unit", "schedule.lr_gamma",
    "schedule.warmup_steps", "schedule.warmup_factor", "data.train_split", "data.max_objects",
    "data.keypoint_min_radius", "data.heatmap_radius", "data.augment", "runtime.seed", "runtime.amp",
    "runtime.sync_bn", "runtime.channels_last", "runtime.deterministic",
)  # fmt: skip


def _differences(old: Any, new: Any, key: str, out: dict[str, tuple[Any, Any]]) -> None:
    """Add to ``out`` each dotted key under ``key`` whose value differs between ``old`` and ``new`` (nested
    mappings compared field by field; a section that became null, or appeared, as a whole). A field the
    checkpoint's config does not have (written before the field existed) is not a change."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for name in sorted(old.keys() & new.keys()):
            _differences(old[name], new[name], f"{key}.{name}" if key else str(name), out)
    elif old != new:
        out[key] = (old, new)


def changed_training_settings(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """The :data:`TRAJECTORY_SETTINGS` of this run's config (``current``, as ``TrainConfig.to_dict`` gives
    it) that differ from a checkpoint's (``saved``): {dotted key: (checkpoint's value, this run's)}."""
    found: dict[str, tuple[Any, Any]] = {}
    _differences(saved, current, "", found)
    return {
        key: values
        for key, values in found.items()
        if any(key == t or key.startswith(f"{t}.") for t in TRAJECTORY_SETTINGS)
    }


class TrainingRun:
    """Holds the pieces of one run; :meth:`evaluate` runs the validation (all that ``--test-only`` does)."""

    def __init__(
        self,
        args: argparse.Namespace,
        cfg: TrainConfig,
        model_config: ModelConfig,
        checkpoint: dict[str, Any] | None,
    ) -> None:
        self.args = args
        self.cfg = cfg
        self.model_config = model_config
        self.out = cfg.output_dir
        self.command = command_line(args)
        self.dist, self.device, self._created_group = init_distributed(cfg.runtime.device)
        try:
            self._setup(checkpoint)
        except BaseException:
            self.close()
            raise

    def _setup(self, checkpoint: dict[str, Any] | None) -> None:
        cfg, rt = self.cfg, self.cfg.runtime
        if rt.threads:
            torch.set_num_threads(rt.threads)
        self._determinism_before: tuple[bool, bool, bool, bool] | None = determinism_state()
        if rt.deterministic:
            deterministic_kernels()
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = rt.cudnn_benchmark
        self.amp_dtype = resolve_amp(rt.amp, self.device)
        if cfg.optim.batch_size % self.dist.world_size:
            raise TrainConfigError(
                f"optim.batch_size: the global batch {cfg.optim.batch_size} must divide by the number of "
                f"processes ({self.dist.world_size})"
            )
        if rt.sync_bn and self.dist.distributed and self.device.type != "cuda":
            raise TrainConfigError("runtime.sync_bn: SyncBatchNorm needs CUDA")
        self.per_rank_batch = cfg.optim.batch_size // self.dist.world_size
        self.metric = select_metric(cfg.eval.metric, self.model_config)

        self.data = build_datasets(cfg, self.model_config, need_train=not self.args.test_only)

        random.seed(rt.seed)
        np.random.seed(rt.seed)
        torch.manual_seed(rt.seed)
        self.model_without_ddp, self.model = build_model(
            cfg, self.model_config, self.device, self.dist, fresh=checkpoint is None,
            evaluate_only=self.args.test_only,
        )  # fmt: skip
        self.criterion = MCNLoss(cfg.loss, self.model_config.tasks)
        self.optimizer = build_optimizer(cfg, self.model_without_ddp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        if self.data.train is not None:
            self.train_set = SeededSamples(self.data.train, rt.seed)
            self.sampler = ResumableSampler(self.train_set, self.dist, rt.seed)
            self.steps_per_epoch = self.sampler.num_samples // self.per_rank_batch
            if self.steps_per_epoch < 1:
                raise TrainError(
                    f"data: the training split has {len(self.data.train)} images, fewer than one global "
                    "batch "
                    f"of {cfg.optim.batch_size}; lower optim.batch_size"
                )
        else:
            self.steps_per_epoch = 1
        self.total_steps = cfg.schedule.epochs * self.steps_per_epoch
        if cfg.schedule.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.schedule.max_steps)
        self.lr_factor = lr_factor(cfg, self.steps_per_epoch, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.state = TrainState()
        self.git = git_info() if self.dist.is_main else {"commit": None, "dirty": None}
        if checkpoint is not None:
            self._restore(checkpoint)
        elif cfg.init_weights is None and self.args.test_only:
            raise TrainError("--test-only needs weights: --resume CKPT or init_weights in the config")
        self.writer: Any = None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.model_without_ddp.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise TrainError(f"checkpoint does not fit the model: {str(exc).splitlines()[0]}") from exc
        if self.args.test_only:
            return
        changed = changed_optim_settings(ckpt.get("config", {}).get("optim", {}), self.cfg.optim)
        new_optimizer = "name" in changed  # another optimizer's state does not fit (Adam's moments, SGD's)
        self.state = restore_training(
            ckpt,
            None if new_optimizer else self.optimizer,
            self.scheduler,
            self.scaler,
            self.dist.world_size,
            self.steps_per_epoch,
        )
        self._apply_optim_config()
        if not self.dist.is_main:
            return
        saved = ckpt.get("config", {})
        settings = {f"optim.{key}": values for key, values in changed.items()}
        settings.update(changed_training_settings(saved, self.cfg.to_dict()))
        saved_lr = [group.get("lr") for group in ckpt.get("optimizer", {}).get("param_groups", [])[:1]]
        lr = float(self.optimizer.param_groups[0]["lr"])
        if "optim.lr" not in settings and saved_lr and saved_lr[0] is not None and float(saved_lr[0]) != lr:
            # Another schedule (max_steps raised where lr_drops are fractions, new drops) moves the rate
            # at the restored step itself: say so, a jump back up is rarely what was meant.
            settings["learning rate at this step"] = (float(saved_lr[0]), lr)
        if settings:
            what = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in settings.items())
            LOG.warning(
                "resuming with settings other than the checkpoint's: %s%s; they apply from global step %d "
                "on, so the run is no longer an exact continuation",
                what,
                " (a new optimizer: its state, moments or momentum, starts afresh)" if new_optimizer else "",
                self.state.global_step + 1,
            )

    def _apply_optim_config(self) -> None:
        """Set the optimizer's hyperparameters and the scheduler's base rate from this run's config (a
        restored optimizer and scheduler hold the checkpoint's), the rate at the restored step included."""
        o = self.cfg.optim
        settings = optimizer_settings(o) | {"initial_lr": o.lr}
        # What LambdaLR computes after a step: the same float where nothing changed (an exact resume).
        settings["lr"] = o.lr * self.lr_factor(self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group.update(settings)
        self.scheduler.base_lrs = [o.lr for _ in self.optimizer.param_groups]

    def close(self) -> None:
        """Flush logs and leave the process group if this run created it."""
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
            self.writer = None
        if self._created_group and dist.is_initialized():
            dist.destroy_process_group()
            self._created_group = False
        before = getattr(self, "_determinism_before", None)
        if before is not None:  # the process as the run found it (runs in a test process, a notebook)
            restore_determinism(before)
            self._determinism_before = None

    def _epoch_float(self) -> float:
        return self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch

    def _schedule_done(self) -> bool:
        """Whether the run has made all its steps (max_steps) or epochs."""
        st = self.state
        return st.global_step >= self.total_steps or st.epoch >= self.cfg.schedule.epochs

    def provenance(self, metrics: Mapping[str, Any] | None) -> dict[str, Any]:
        """What the exported weights record about how they were made."""
        return to_builtin_types(
            {
                "command": self.command,
                "git": self.git,
                "dataset": self.data.info,
                "train_config": self.cfg.name,
                "epoch": round(self._epoch_float(), 4),
                "global_step": self.state.global_step,
                "world_size": self.dist.world_size,
                "metric": self.metric,
                "metrics": None if metrics is None else dict(metrics),
            }
        )

    def save_checkpoint(self, path: Path | None = None) -> None:
        """Write the full training state (rank 0) atomically."""
        broadcast_buffers(self.model_without_ddp, self.dist)
        if not self.dist.is_main:
            return
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model_without_ddp.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": to_builtin_types(self.scheduler.state_dict()),
            "scaler": to_builtin_types(self.scaler.state_dict()),
            "config": self.cfg.to_dict(),
            "model_config": self.model_config.to_dict(),
            "args": to_builtin_types(vars(self.args)),
            "command": self.command,
            "git": self.git,
            "dataset": to_builtin_types(self.data.info),
            "world_size": self.dist.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            "state": to_builtin_types(dataclasses.asdict(self.state)),
            "rng": rng_state(),
        }
        atomic_torch_save(ckpt, path or self.out / CHECKPOINT_NAME)

    def export(self, name: str, metrics: Mapping[str, Any] | None) -> Path:
        """Write node weights (safetensors + provenance) of the current model (rank 0)."""
        path = self.out / name
        if self.dist.is_main:
            save_weights(path, self.model_without_ddp, self.model_config, self.provenance(metrics))
        return path

    def evaluate(self) -> dict[str, Any]:
        """Run the validation split through the model and decode; metrics (the same on every rank)."""
        broadcast_buffers(self.model_without_ddp, self.dist)
        start = time.perf_counter()
        assert self.data.val is not None
        loader = eval_loader(
            self.data.val, self.dist, self.cfg.eval.batch_size, self.cfg.data.workers, self.device
        )
        report = evaluate_model(
            self.model_without_ddp,
            self.model_config,
            loader,
            self.data.val_coco,
            self.device,
            decode_options(self.cfg.eval, self.model_config),
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            amp_dtype=self.amp_dtype,
            channels_last=self.cfg.runtime.channels_last,
            progress=self.cfg.runtime.progress and self.dist.is_main,
        )
        metrics: list[Any] = [None if report is None else to_builtin_types(report.to_dict())]
        if self.dist.distributed:
            dist.broadcast_object_list(metrics, src=0)
        result: dict[str, Any] = metrics[0]
        if self.dist.is_main and report is not None:
            LOG.info("evaluation (%.1f s):\n%s", time.perf_counter() - start, report.table())
        return result

    def _best(self) -> dict[str, Any]:
        st = self.state
        return {"metric": self.metric, "value": st.best_metric, "step": st.best_step, "epoch": st.best_epoch}

    def summary(self, interrupted: bool = False) -> dict[str, Any]:
        """Plain description of the run's outcome (also what :func:`main` returns)."""
        st = self.state
        return {
            "out_dir": str(self.out),
            "global_step": st.global_step,
            "epoch": round(self._epoch_float(), 4),
            "steps_per_epoch": self.steps_per_epoch,
            "train_time_s": st.train_time_s,
            "interrupted": interrupted,
            "metric": self.metric,
            "best": self._best(),
            "last_metrics": st.current_metrics(),
            "history": st.history,
            "losses": st.losses,
            "best_weights": str(self.out / BEST_WEIGHTS_NAME) if st.best_step is not None else None,
            "last_weights": str(self.out / LAST_WEIGHTS_NAME),
            "checkpoint": str(self.out / CHECKPOINT_NAME),
            "state_digest": state_digest(self.model_without_ddp),
            "rank": self.dist.rank,
            "world_size": self.dist.world_size,
        }
