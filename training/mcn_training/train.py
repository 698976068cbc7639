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
augmentation is a function of (seed, epoch, sample), so a resumed run equals an uninterrupted one.
SIGTERM/SIGINT stop at the end of the current step and write a checkpoint first.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from mcn_ros.model.config import ConfigError, ModelConfig
from mcn_ros.model.device import resolve_device
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.weights import WeightsError, load_weights, save_weights
from mcn_training.config import (
    METRIC_TASK,
    TrainConfig,
    TrainConfigError,
    apply_overrides,
    load_train_config,
    model_config_dict,
    resolve_split,
)
from mcn_training.data import CocoMultitaskDataset
from mcn_training.evaluate import decode_options, evaluate_model, subset_coco
from mcn_training.losses import MCNLoss

LOG = logging.getLogger("mcn_training")

#: File names inside the run directory.
CHECKPOINT_NAME = "checkpoint.pt"
BEST_WEIGHTS_NAME = "best.safetensors"
LAST_WEIGHTS_NAME = "last.safetensors"
HISTORY_NAME = "history.json"
#: Identifies our checkpoint files (the only files this package torch.loads, with weights_only=True).
CHECKPOINT_FORMAT = "mcn_training.checkpoint"
CHECKPOINT_VERSION = 1
#: Consecutive non-finite losses tolerated with fp16 (the GradScaler skips those steps) before stopping.
MAX_SKIPPED_FP16_STEPS = 20
#: Batch entries that are not loss targets.
NON_TARGET_KEYS = frozenset({"image", "image_id", "letterbox", "orig_size"})


class TrainError(RuntimeError):
    """A training run cannot start or continue (data, checkpoint, devices); the message says why."""


#: Errors reported as one line by the command-line entry points (no traceback).
USER_ERRORS: tuple[type[Exception], ...] = (TrainError, TrainConfigError, ConfigError, WeightsError)


# ------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command-line interface of ``python -m mcn_training.train``."""
    parser = argparse.ArgumentParser(
        prog="python -m mcn_training.train",
        description="Train a Multitask-CenterNet (detection, human pose, segmentation) on COCO-format data.",
        add_help=add_help,
        epilog="Overrides: dotted keys of the training config with YAML values, e.g. optim.lr=1e-3 "
        "schedule.max_steps=200 data.workers=2 model_overrides.input_size=[64,64].",
    )
    parser.add_argument("--config", type=Path, help="training config (config/train/*.yaml)")
    parser.add_argument("--data", type=Path, help="dataset directory (overrides data.root)")
    parser.add_argument("--out", type=Path, help="run directory (overrides out_dir; default runs/<name>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="continue from CKPT, or without a value from <out>/checkpoint.pt; without --config the "
        "checkpoint's own config is used",
    )
    parser.add_argument(
        "--test-only", action="store_true", help="only evaluate (the --resume checkpoint or init_weights)"
    )
    parser.add_argument(
        "--amp",
        action="store_const",
        const="bf16",
        help="mixed precision: bf16 autocast (fp16 + GradScaler on GPUs without bf16); "
        "runtime.amp=fp16 forces fp16",
    )
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides runtime.device)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line; options and ``key=value`` overrides may come in any order."""
    return get_args_parser().parse_intermixed_args(argv)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args`` (recorded in checkpoints and weights provenance)."""
    parts = ["python", "-m", "mcn_training.train"]
    for flag in ("config", "data", "out"):
        if getattr(args, flag, None) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    if getattr(args, "resume", None) is not None:
        parts += ["--resume"] + ([] if args.resume == "auto" else [str(args.resume)])
    if getattr(args, "test_only", False):
        parts.append("--test-only")
    if getattr(args, "amp", None):
        parts.append("--amp")
    if getattr(args, "device", None):
        parts += ["--device", args.device]
    parts += list(getattr(args, "overrides", None) or [])
    return shlex.join(parts)


# ------------------------------------------------------------------------------------------------------------
# Distributed set-up


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def _select_device(setting: str, local_rank: int) -> torch.device:
    device = resolve_device(setting, local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"runtime.device: {device} asked for but CUDA is not available")
    return device


def init_distributed(device_setting: str) -> tuple[DistInfo, torch.device, bool]:
    """Join the torchrun job if there is one (env:// rendezvous; nccl on CUDA, gloo on CPU).

    Returns (dist info, this rank's device, whether this call created the process group).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _select_device(device_setting, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        created = True
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank), device, created
    return DistInfo(), device, created


# ------------------------------------------------------------------------------------------------------------
# Data: deterministic, resumable sampling


@contextlib.contextmanager
def _seeded_rng(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch (CPU) global RNGs for a block, then put their states back."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededSamples(Dataset[dict[str, torch.Tensor]]):
    """Dataset indexed by (epoch, index): each sample's augmentation is seeded from (seed, epoch, index).

    The random draws of a sample then depend neither on the worker process that loads it nor on what was
    loaded before, which makes step-level resume exact and runs reproducible for any number of workers.
    """

    def __init__(self, dataset: Dataset[dict[str, torch.Tensor]], seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2, np.uint64)
        with _seeded_rng(int(state[0]) & (2**63 - 1)):
            return self.dataset[index]


class ResumableSampler(DistributedSampler[Any]):
    """DistributedSampler (also for one process) that yields (epoch, index) and can skip a prefix.

    ``skip`` samples of this rank's order for the current epoch are left out: the batches a resumed run
    already trained. The order itself is torch's (seed + epoch), independent of the skip.
    """

    def __init__(self, dataset: Dataset[Any], dist_info: DistInfo, seed: int) -> None:
        super().__init__(
            dataset,
            num_replicas=dist_info.world_size,
            rank=dist_info.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = itertools.islice(super().__iter__(), self.skip, None)
        return ((self.epoch, int(i)) for i in indices)

    def __len__(self) -> int:
        return self.num_samples - self.skip


@dataclass
class Datasets:
    """The training and validation datasets with the files they came from."""

    train: CocoMultitaskDataset | None
    val: Dataset[dict[str, torch.Tensor]] | None
    val_coco: Any  # pycocotools COCO of the (possibly truncated) validation split
    info: dict[str, Any]  # plain description for provenance


def build_datasets(cfg: TrainConfig, model_config: ModelConfig, need_train: bool) -> Datasets:
    """Check the data files and build the datasets; raises TrainConfigError/TrainError with one message."""
    root = cfg.data.root
    if root is None:
        raise TrainConfigError("data.root: no dataset directory; pass --data DIR")
    with_keypoints = "pose" in model_config.tasks
    train_files = resolve_split(cfg.data, root, cfg.data.train_split, with_keypoints) if need_train else None
    val_files = resolve_split(cfg.data, root, cfg.data.val_split, with_keypoints)
    info: dict[str, Any] = {"root": str(Path(root).resolve())}

    def make(files: Any, augment: Any) -> CocoMultitaskDataset:
        try:
            return CocoMultitaskDataset(
                str(files.image_dir),
                str(files.instances),
                None if files.keypoints is None else str(files.keypoints),
                model_config,
                augment,
                max_objects=cfg.data.max_objects,
                keypoint_min_radius=cfg.data.keypoint_min_radius,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrainError(
                f"data: cannot load split {files.split!r} from {files.instances}: {exc}"
            ) from exc

    train = None
    if train_files is not None:
        train = make(train_files, cfg.data.augment)
        info["train"] = {
            "split": train_files.split,
            "images": len(train),
            "instances": str(train_files.instances),
        }
    val_full = make(val_files, None)
    val: Dataset[dict[str, torch.Tensor]] = val_full
    val_coco = val_full.coco
    if cfg.eval.max_images is not None and cfg.eval.max_images < len(val_full):
        keep = list(range(cfg.eval.max_images))
        val = Subset(val_full, keep)
        val_coco = subset_coco(val_full.coco, [int(val_full.image_ids[i]) for i in keep])
    info["val"] = {"split": val_files.split, "images": len(val), "instances": str(val_files.instances)}  # type: ignore[arg-type]
    return Datasets(train, val, val_coco, info)


# ------------------------------------------------------------------------------------------------------------
# Model, optimizer, schedule


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """The lr multiplier after ``step`` optimizer steps: warm-up, then x gamma at every drop passed."""
    s = cfg.schedule
    scale = steps_per_epoch if s.lr_drop_unit == "epoch" else total_steps
    drops = [round(d * scale) for d in s.lr_drops]

    def factor(step: int) -> float:
        value = s.lr_gamma ** sum(step >= d for d in drops)
        if step < s.warmup_steps:
            value *= s.warmup_factor + (1.0 - s.warmup_factor) * step / s.warmup_steps
        return float(value)

    return factor


def init_from_weights(model: nn.Module, path: str) -> None:
    """Copy the tensors of an mcn_ros weights file whose names and shapes match (the rest keep their init)."""
    source, _, _ = load_weights(path)
    own = model.state_dict()
    matched = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    LOG.info("init_weights %s: %d of %d tensors loaded", path, len(matched), len(own))


def resolve_amp(setting: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``runtime.amp`` on ``device`` (None = full precision)."""
    if setting in (None, "off"):
        return None
    if device.type == "cuda":
        if setting == "bf16" and not torch.cuda.is_bf16_supported():
            LOG.warning("runtime.amp: this GPU has no bf16; using fp16 with a GradScaler")
            return torch.float16
        return torch.bfloat16 if setting == "bf16" else torch.float16
    if setting == "bf16":
        return torch.bfloat16
    raise TrainConfigError(f"runtime.amp: {setting} needs CUDA; use bf16 or off on {device.type}")


# ------------------------------------------------------------------------------------------------------------
# Checkpoints


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


def _plain(value: Any) -> Any:
    """Make ``value`` loadable with torch.load(weights_only=True): plain python, lists, tensors."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
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
        raise TrainError(f"checkpoint {path} cannot be read (truncated or not a checkpoint): {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"checkpoint {path} is not an mcn_training checkpoint")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise TrainError(f"checkpoint {path} has format version {ckpt['version']}, newer than this code")
    return ckpt


def _git_info() -> dict[str, Any]:
    """Commit and dirty flag of the source tree this package runs from (None outside git)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


def state_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, bytes): equal digests mean equal weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------------
# The run


class _StopRequest:
    """SIGTERM/SIGINT handler: ask the loop to checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        LOG.warning("signal %d: stopping after this step (checkpoint first); Ctrl-C again to abort", signum)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Holds the pieces of one run; :meth:`fit` trains, :meth:`evaluate` runs the validation."""

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

    # -- set-up ----------------------------------------------------------------------------------------------

    def _setup(self, checkpoint: dict[str, Any] | None) -> None:
        cfg, rt = self.cfg, self.cfg.runtime
        if rt.threads:
            torch.set_num_threads(rt.threads)
        if self.device.type == "cuda":
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
        fresh = checkpoint is None
        model = MultitaskCenterNet(self.model_config, cfg.backbone_weights if fresh else None)
        if cfg.init_weights and fresh:
            init_from_weights(model, cfg.init_weights)
        model.to(self.device)
        if rt.channels_last:
            model.to(memory_format=torch.channels_last)
        if rt.sync_bn and self.dist.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model_without_ddp = model
        self.model: nn.Module = model
        if self.dist.distributed:
            self.model = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=rt.find_unused_parameters,
            )
        self.criterion = MCNLoss(cfg.loss, self.model_config.tasks)
        self.optimizer = build_optimizer(cfg, model)
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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg, self.steps_per_epoch, self.total_steps)
        )
        self.state = TrainState()
        self.git = _git_info() if self.dist.is_main else {"commit": None, "dirty": None}
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
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        known = {f.name for f in dataclasses.fields(TrainState)}
        self.state = TrainState(**{k: v for k, v in ckpt["state"].items() if k in known})
        if ckpt.get("world_size", 1) != self.dist.world_size:
            LOG.warning(
                "resuming a %d-process run with %d processes: the sample order of the interrupted epoch "
                "changes (exact resume needs the same number of processes)",
                ckpt.get("world_size", 1),
                self.dist.world_size,
            )
        if ckpt.get("steps_per_epoch") != self.steps_per_epoch and self.state.step_in_epoch:
            raise TrainError(
                f"checkpoint was written with {ckpt.get('steps_per_epoch')} steps per epoch, this run has "
                f"{self.steps_per_epoch} (different data or batch size): cannot resume mid-epoch"
            )
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        LOG.info(
            "resumed at epoch %d, step %d of the epoch (global step %d)",
            self.state.epoch,
            self.state.step_in_epoch,
            self.state.global_step,
        )

    # -- helpers ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush logs and leave the process group if this run created it."""
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
            self.writer = None
        if self._created_group and dist.is_initialized():
            dist.destroy_process_group()
            self._created_group = False

    def _barrier(self) -> None:
        if self.dist.distributed:
            dist.barrier()

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm statistics (what checkpoints and exported weights hold)."""
        if self.dist.distributed:
            for buffer in self.model_without_ddp.buffers():
                dist.broadcast(buffer, 0)

    def _epoch_float(self) -> float:
        return self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch

    def _make_loader(self) -> DataLoader[Any]:
        workers = self.cfg.data.workers
        return DataLoader(
            self.train_set,
            batch_size=self.per_rank_batch,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(self.cfg.runtime.seed),
        )

    def _eval_loader(self) -> DataLoader[Any]:
        assert self.data.val is not None
        dataset = self.data.val
        sampler = (
            DistributedSampler[int](dataset, self.dist.world_size, self.dist.rank, shuffle=False)
            if self.dist.distributed
            else None
        )
        return DataLoader(
            dataset,
            batch_size=self.cfg.eval.batch_size,
            sampler=sampler,
            num_workers=self.cfg.data.workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0),
        )

    def provenance(self, metrics: Mapping[str, Any] | None) -> dict[str, Any]:
        """What the exported weights record about how they were made."""
        return _plain(
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
        self._sync_buffers()
        if not self.dist.is_main:
            return
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model_without_ddp.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": _plain(self.scheduler.state_dict()),
            "scaler": _plain(self.scaler.state_dict()),
            "config": self.cfg.to_dict(),
            "model_config": self.model_config.to_dict(),
            "args": _plain(vars(self.args)),
            "command": self.command,
            "git": self.git,
            "dataset": _plain(self.data.info),
            "world_size": self.dist.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            "state": _plain(dataclasses.asdict(self.state)),
            "rng": rng_state(),
        }
        atomic_torch_save(ckpt, path or self.out / CHECKPOINT_NAME)

    def export(self, name: str, metrics: Mapping[str, Any] | None) -> Path:
        """Write node weights (safetensors + provenance) of the current model (rank 0)."""
        path = self.out / name
        if self.dist.is_main:
            save_weights(path, self.model_without_ddp, self.model_config, self.provenance(metrics))
        return path

    # -- evaluation ------------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Run the validation split through the model and decode; metrics (the same on every rank)."""
        self._sync_buffers()
        start = time.perf_counter()
        report = evaluate_model(
            self.model_without_ddp,
            self.model_config,
            self._eval_loader(),
            self.data.val_coco,
            self.device,
            decode_options(self.cfg.eval, self.model_config),
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            amp_dtype=self.amp_dtype,
            channels_last=self.cfg.runtime.channels_last,
            progress=self.cfg.runtime.progress and self.dist.is_main,
        )
        metrics: list[Any] = [None if report is None else _plain(report.to_dict())]
        if self.dist.distributed:
            dist.broadcast_object_list(metrics, src=0)
        result: dict[str, Any] = metrics[0]
        if self.dist.is_main and report is not None:
            LOG.info("evaluation (%.1f s):\n%s", time.perf_counter() - start, report.table())
        return result

    def _evaluate_and_track(self) -> dict[str, Any]:
        metrics = self.evaluate()
        st = self.state
        st.last_eval_step, st.last_metrics = st.global_step, metrics
        epoch = round(self._epoch_float(), 4)
        entry = {
            "epoch": epoch,
            "step": st.global_step,
            "train_time_s": round(st.train_time_s, 3),
            "metrics": metrics,
        }
        st.history.append(entry)
        value = metrics.get(self.metric)
        if value is not None and (st.best_metric is None or value > st.best_metric):
            st.best_metric, st.best_step, st.best_epoch = float(value), st.global_step, epoch
            self.export(BEST_WEIGHTS_NAME, metrics)
        if self.dist.is_main:
            if self.writer is not None:
                for key, val in metrics.items():
                    if isinstance(val, (int, float)) and not isinstance(val, bool):
                        self.writer.add_scalar(f"val/{key}", val, st.global_step)
                self.writer.flush()
            history = {"metric": self.metric, "best": self._best(), "evaluations": st.history}
            atomic_write_text(self.out / HISTORY_NAME, json.dumps(history, indent=1))
        self.model.train()
        return metrics

    def _best(self) -> dict[str, Any]:
        st = self.state
        return {"metric": self.metric, "value": st.best_metric, "step": st.best_step, "epoch": st.best_epoch}

    # -- training --------------------------------------------------------------------------------------------

    def _open_writer(self) -> None:
        if self.dist.is_main and self.cfg.runtime.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = self.state.global_step if self.state.global_step else None
            self.writer = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=purge)

    def _write_run_files(self) -> None:
        if not self.dist.is_main:
            return
        import yaml

        self.out.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(
            {"train": self.cfg.to_dict(), "model": self.model_config.to_dict(), "command": self.command},
            sort_keys=False,
        )
        atomic_write_text(self.out / "config.yaml", text)

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimizer step on one batch; returns the detached loss terms."""
        images = batch["image"].to(self.device, non_blocking=True)
        if self.cfg.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = {
            k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k not in NON_TARGET_KEYS
        }
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            outputs = self.model(images)
        losses = self.criterion({k: v.float() for k, v in outputs.items()}, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        if self.cfg.optim.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {k: v.detach() for k, v in losses.items()}

    def _agree(self, total: torch.Tensor, signalled: bool, out_of_time: bool) -> tuple[float, bool, bool]:
        """Mean total loss over ranks, and whether any rank got a signal / ran out of time (one all_reduce),
        so that every rank takes the same decisions."""
        flags = torch.tensor([float(signalled), float(out_of_time)], device=total.device)
        packed = torch.cat([total.float().reshape(1), flags])
        if self.dist.distributed:
            dist.all_reduce(packed)
            packed[0] /= self.dist.world_size
        loss, signal_flag, time_flag = packed.tolist()
        return loss, signal_flag > 0, time_flag > 0

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _log_losses(
        self, sums: dict[str, torch.Tensor], count: int, lr: float, rate: float, bar: Any
    ) -> None:
        names = sorted(sums)
        values = torch.stack([sums[n] for n in names]) / count
        if self.dist.distributed:
            dist.all_reduce(values)
            values /= self.dist.world_size
        means = dict(zip(names, values.tolist(), strict=True))
        st = self.state
        st.losses.append(
            {
                "step": st.global_step,
                "epoch": round(self._epoch_float(), 4),
                "train_time_s": round(st.train_time_s, 3),
                **means,
                "lr": lr,
            }
        )
        if not self.dist.is_main:
            return
        if self.writer is not None:
            for name, value in means.items():
                self.writer.add_scalar(f"loss/{name}", value, st.global_step)
            self.writer.add_scalar("train/lr", lr, st.global_step)
            self.writer.add_scalar("train/images_per_s", rate, st.global_step)
        text = " ".join(f"{k} {v:.4f}" for k, v in means.items())
        if bar is not None and not bar.disable:
            bar.set_postfix_str(f"loss {means.get('total', float('nan')):.3f} lr {lr:.2e}")
        else:
            LOG.info(
                "step %d (epoch %.2f): %s lr %.3g, %.1f img/s",
                st.global_step,
                self._epoch_float(),
                text,
                lr,
                rate,
            )

    def fit(self) -> dict[str, Any]:
        """Train until the schedule (or max_steps / max_minutes / a signal) ends; returns a summary."""
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

        cfg, st = self.cfg, self.state
        self._write_run_files()
        self._open_writer()
        assert self.data.train is not None
        LOG.info(
            "training %s (%s, tasks %s): %d train / %d val images, %d process(es) x %d images per step, "
            "%d steps per epoch, steps %d..%d, device %s, amp %s, output %s",
            cfg.name,
            self.model_config.name,
            ",".join(sorted(self.model_config.tasks)),
            len(self.data.train),
            len(self.data.val),  # type: ignore[arg-type]
            self.dist.world_size,
            self.per_rank_batch,
            self.steps_per_epoch,
            st.global_step,
            self.total_steps,
            self.device,
            self.amp_dtype,
            self.out,
        )
        loader = self._make_loader()
        self.model.train()
        max_seconds = None if cfg.schedule.max_minutes is None else cfg.schedule.max_minutes * 60.0
        interrupted = False
        nonfinite = 0
        with _StopRequest() as stop_request:
            while st.global_step < self.total_steps and st.epoch < cfg.schedule.epochs:
                epoch = st.epoch
                self.sampler.set_epoch(epoch)
                self.sampler.skip = st.step_in_epoch * self.per_rank_batch
                bar = tqdm(
                    total=self.steps_per_epoch,
                    initial=st.step_in_epoch,
                    desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
                    disable=not (cfg.runtime.progress and self.dist.is_main),
                    dynamic_ncols=True,
                    leave=False,
                )
                sums: dict[str, torch.Tensor] = {}
                count, images_seen, interval_start = 0, 0, time.perf_counter()
                stop = False
                step_start = time.perf_counter()
                for batch in loader:
                    losses = self.train_step(batch)
                    out_of_time = (
                        max_seconds is not None
                        and st.train_time_s + time.perf_counter() - step_start >= max_seconds
                    )
                    loss_value, interrupted, out_of_time = self._agree(
                        losses["total"], stop_request.requested, out_of_time
                    )
                    stop = interrupted or out_of_time
                    # fp16: the GradScaler skips a step with overflowing values; only a run of them is fatal.
                    nonfinite = 0 if math.isfinite(loss_value) else nonfinite + 1
                    if nonfinite > (MAX_SKIPPED_FP16_STEPS if self.scaler.is_enabled() else 0):
                        terms = {k: float(v) for k, v in losses.items()}
                        raise TrainError(
                            f"loss is {loss_value} at global step {st.global_step + 1} ({terms}); stopping. "
                            f"The last checkpoint in {self.out} is intact: lower optim.lr or check the data."
                        )
                    st.train_time_s += time.perf_counter() - step_start
                    st.global_step += 1
                    st.step_in_epoch += 1
                    bar.update(1)
                    for name, value in losses.items():
                        sums[name] = sums.get(name, torch.zeros((), device=self.device)) + value.float()
                    count += 1
                    images_seen += batch["image"].shape[0] * self.dist.world_size
                    if st.global_step % cfg.runtime.log_every_steps == 0:
                        rate = images_seen / max(time.perf_counter() - interval_start, 1e-9)
                        self._log_losses(sums, count, self._lr(), rate, bar)
                        sums, count, images_seen, interval_start = {}, 0, 0, time.perf_counter()
                    finished = st.global_step >= self.total_steps
                    if finished or stop:
                        break
                    # Evaluate before checkpointing (as at epoch ends): the checkpoint then holds this
                    # evaluation, so a resumed run neither forgets it nor replaces best.safetensors with
                    # worse weights.
                    if cfg.eval.every_steps and st.global_step % cfg.eval.every_steps == 0:
                        self._evaluate_and_track()
                    if cfg.checkpoint.every_steps and st.global_step % cfg.checkpoint.every_steps == 0:
                        self.save_checkpoint()
                    step_start = time.perf_counter()
                bar.close()
                if count and st.global_step % cfg.runtime.log_every_steps:
                    rate = images_seen / max(time.perf_counter() - interval_start, 1e-9)
                    self._log_losses(sums, count, self._lr(), rate, None)
                epoch_done = st.step_in_epoch >= self.steps_per_epoch
                if epoch_done:
                    st.epoch += 1
                    st.step_in_epoch = 0
                    due = cfg.eval.every_epochs and st.epoch % cfg.eval.every_epochs == 0
                    last = st.global_step >= self.total_steps or st.epoch >= cfg.schedule.epochs
                    if due or (last and cfg.eval.at_end):
                        self._evaluate_and_track()
                    self.save_checkpoint()
                    if cfg.checkpoint.keep_epochs:  # every rank: saving syncs BatchNorm buffers
                        self.save_checkpoint(self.out / f"checkpoint_epoch{st.epoch:04d}.pt")
                    self.export(
                        LAST_WEIGHTS_NAME, st.last_metrics if st.last_eval_step == st.global_step else None
                    )
                if stop:
                    break
        if not interrupted and cfg.eval.at_end and st.last_eval_step != st.global_step:
            self._evaluate_and_track()
        self.save_checkpoint()
        last_metrics = st.last_metrics if st.last_eval_step == st.global_step else None
        self.export(LAST_WEIGHTS_NAME, last_metrics)
        self._barrier()
        if self.writer is not None:
            self.writer.flush()
        if interrupted:
            LOG.warning("stopped by a signal at global step %d; --resume continues", st.global_step)
        return self.summary(interrupted)

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
            "last_metrics": st.last_metrics if st.last_eval_step == st.global_step else None,
            "history": st.history,
            "losses": st.losses,
            "best_weights": str(self.out / BEST_WEIGHTS_NAME) if st.best_step is not None else None,
            "last_weights": str(self.out / LAST_WEIGHTS_NAME),
            "checkpoint": str(self.out / CHECKPOINT_NAME),
            "state_digest": state_digest(self.model_without_ddp),
            "rank": self.dist.rank,
            "world_size": self.dist.world_size,
        }


def select_metric(setting: str, model_config: ModelConfig) -> str:
    """The metric that picks the best weights, checked against the model's tasks."""
    tasks = model_config.tasks
    if setting == "auto":
        for metric in ("bbox_AP", "kp_AP", "mIoU"):
            if METRIC_TASK[metric] in tasks:
                return metric
        raise TrainConfigError("eval.metric: the model has no task with a metric")  # pragma: no cover
    if METRIC_TASK[setting] not in tasks:
        raise TrainConfigError(
            f"eval.metric: {setting} needs the {METRIC_TASK[setting]} task, the model has none"
        )
    return setting


def prepare(
    args: argparse.Namespace,
) -> tuple[TrainConfig, ModelConfig, dict[str, Any] | None]:
    """Config (file or checkpoint), command-line overrides and model config, validated before any work."""
    checkpoint = None
    if args.resume not in (None, "auto") and "=" in str(args.resume) and not Path(args.resume).exists():
        # `--resume key=value`: argparse gave the first override to --resume's optional value.
        args.overrides = [str(args.resume), *(args.overrides or [])]
        args.resume = "auto"
    if args.resume is not None:
        if args.resume == "auto":
            if args.out is None and args.config is None:
                raise TrainError("--resume without a checkpoint path needs --out or --config to find the run")
            if args.out is not None:
                path = Path(args.out) / CHECKPOINT_NAME
            else:
                path = load_train_config(args.config, args.overrides).output_dir / CHECKPOINT_NAME
        else:
            path = Path(args.resume)
        checkpoint = load_checkpoint(path)
    cli: list[str] = list(args.overrides or [])
    if args.data is not None:
        cli.append(f"data.root={json.dumps(str(args.data))}")
    if args.out is not None:
        cli.append(f"out_dir={json.dumps(str(args.out))}")
    if args.amp is not None:
        cli.append(f"runtime.amp={args.amp}")
    if args.device is not None:
        cli.append(f"runtime.device={args.device}")
    if args.config is not None:
        cfg = load_train_config(args.config, cli)
        model_dict = model_config_dict(cfg)
    elif checkpoint is not None:
        try:
            cfg = TrainConfig.from_dict(apply_overrides(checkpoint["config"], cli))
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
    return cfg, model_config, checkpoint


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
        return run(parsed)
    except USER_ERRORS as exc:
        print(f"mcn_training.train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
