"""Training configuration: typed dataclasses read from one YAML file and validated once.

A training config names the model config file, the loss weights, the data and the schedule; every default
is documented on its field below (this module is the one place where training defaults live). The YAML
shape is the shape of :meth:`TrainConfig.to_dict`: one mapping per section (``data``, ``optim``,
``schedule``, ``loss``, ``eval``, ``checkpoint``, ``runtime``), lists for tuples. Command-line overrides use
dotted keys with YAML values (``optim.lr=1e-3``, ``schedule.max_steps=200``, ``data.augment=null``).

Paths: ``model``, ``backbone_weights`` and ``init_weights`` may be relative; they are looked up relative to
the config file's directory first, then to the current directory. ``data.root`` and ``out_dir`` are relative
to the current directory (they are machine-specific and usually given with ``--data`` / ``--out``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from mcn_ros.model.config import read_yaml_mapping
from mcn_training.losses import LossWeights
from mcn_training.transforms import AugmentConfig

#: Metrics that can select the best checkpoint (keys of mcn_ros.evaluation.EvalReport); "auto" picks the
#: first the model has of bbox_AP (detection), kp_AP (pose), mIoU (segmentation).
METRICS: tuple[str, ...] = ("bbox_AP", "bbox_AP50", "kp_AP", "kp_AP50", "mIoU", "person_IoU")
#: The task each metric needs.
METRIC_TASK: dict[str, str] = {
    "bbox_AP": "detection",
    "bbox_AP50": "detection",
    "kp_AP": "pose",
    "kp_AP50": "pose",
    "mIoU": "segmentation",
    "person_IoU": "segmentation",
}


class TrainConfigError(ValueError):
    """An invalid training configuration; the message names the file and the offending field."""


@dataclass(frozen=True)
class DataConfig:
    """Where the COCO-format data lives and how it is loaded."""

    #: Dataset directory (COCO 2017 layout, or the layout mcn_training.synthetic writes). ``--data`` sets it.
    #: Default None: must then be given with ``--data``.
    root: str | None = None
    #: Split used for training. Default "train2017".
    train_split: str = "train2017"
    #: Split used for validation (periodic evaluation). Default "val2017".
    val_split: str = "val2017"
    #: Image folder relative to ``root``, ``{split}`` replaced by the split name. Default "auto": ``{split}``
    #: (COCO: ``train2017/``) or ``images/{split}`` (synthetic), whichever exists.
    image_dir: str = "auto"
    #: Instances json (boxes, masks) relative to ``root``. Default "annotations/instances_{split}.json".
    instances: str = "annotations/instances_{split}.json"
    #: Person-keypoints json relative to ``root``, read only when the model has a pose head. Default
    #: "annotations/person_keypoints_{split}.json".
    keypoints: str | None = "annotations/person_keypoints_{split}.json"
    #: DataLoader worker processes per rank. Default 4.
    workers: int = 4
    #: Most objects (boxes) per image in the targets; more are dropped. Default 128 (CenterNet's).
    max_objects: int = 128
    #: Smallest Gaussian radius (output cells) of keypoint-heatmap targets; the person's box radius is used
    #: when larger. Default 0 (CenterNet: the box radius alone).
    keypoint_min_radius: int = 0
    #: Training augmentation (fields of mcn_training.transforms.AugmentConfig); null = none (letterbox
    #: only, like evaluation). Default: AugmentConfig's defaults.
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        """Check values; raises :class:`TrainConfigError`."""
        _check(self.workers >= 0, "data.workers", "must be >= 0", self.workers)
        _check(self.max_objects >= 1, "data.max_objects", "must be >= 1", self.max_objects)
        radius = self.keypoint_min_radius
        _check(radius >= 0, "data.keypoint_min_radius", "must be >= 0", radius)
        for name in ("train_split", "val_split", "image_dir", "instances"):
            _check(bool(getattr(self, name)), f"data.{name}", "must not be empty", getattr(self, name))
        for name in ("image_dir", "instances", "keypoints"):
            template = getattr(self, name)
            if template is not None:
                try:
                    template.format(split="x")
                except (KeyError, IndexError, ValueError):
                    raise TrainConfigError(
                        f"data.{name}: only {{split}} may appear in braces, got {template!r}"
                    ) from None


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer. The paper (CenterNet's recipe): Adam, lr 5e-4 for a batch of 128."""

    #: "adam", "adamw" or "sgd". Default "adam".
    name: str = "adam"
    #: Learning rate for ``batch_size`` (not rescaled when the batch changes). Default 5e-4.
    lr: float = 5e-4
    #: Global batch size (all ranks together); each of N ranks loads batch_size / N. Default 128.
    batch_size: int = 128
    #: Weight decay (decoupled for adamw). Default 0.
    weight_decay: float = 0.0
    #: Adam(W) betas. Default (0.9, 0.999).
    betas: tuple[float, float] = (0.9, 0.999)
    #: SGD momentum. Default 0.9.
    momentum: float = 0.9
    #: Clip the gradient norm to this value; null = no clipping. Default null.
    grad_clip_norm: float | None = None

    def validate(self) -> None:
        """Check values; raises :class:`TrainConfigError`."""
        _check(self.name in ("adam", "adamw", "sgd"), "optim.name", "must be adam, adamw or sgd", self.name)
        _check(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        _check(self.batch_size >= 1, "optim.batch_size", "must be >= 1", self.batch_size)
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        _check(all(0 <= b < 1 for b in self.betas), "optim.betas", "must be in [0, 1)", self.betas)
        _check(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)", self.momentum)
        if self.grad_clip_norm is not None:
            _check(self.grad_clip_norm > 0, "optim.grad_clip_norm", "must be > 0", self.grad_clip_norm)


@dataclass(frozen=True)
class ScheduleConfig:
    """How long to train and the learning-rate schedule (stepped after every optimizer step)."""

    #: Epochs (passes over the training split). Default 140 (CenterNet's long schedule).
    epochs: int = 140
    #: The lr is multiplied by ``lr_gamma`` when training passes each of these points. Default (90, 120).
    lr_drops: tuple[float, ...] = (90.0, 120.0)
    #: Unit of ``lr_drops``: "epoch" (may be fractional) or "fraction" (of the total steps: the smaller of
    #: epochs x steps-per-epoch and ``max_steps``). Default "epoch".
    lr_drop_unit: str = "epoch"
    #: Factor applied at each drop. Default 0.1.
    lr_gamma: float = 0.1
    #: Linear warm-up over this many steps from ``warmup_factor`` x lr. Default 0 (none, as CenterNet).
    warmup_steps: int = 0
    #: Starting factor of the warm-up. Default 0.001.
    warmup_factor: float = 0.001
    #: Stop after this many optimizer steps in total (all epochs); null = no limit. Default null.
    max_steps: int | None = None
    #: Stop after this many minutes of training (evaluation time not counted); null = no limit.
    #: Default null. Not deterministic: prefer max_steps where runs must be reproduced.
    max_minutes: float | None = None

    def validate(self) -> None:
        """Check values; raises :class:`TrainConfigError`."""
        _check(self.epochs >= 1, "schedule.epochs", "must be >= 1", self.epochs)
        unit = self.lr_drop_unit
        _check(unit in ("epoch", "fraction"), "schedule.lr_drop_unit", "must be epoch or fraction", unit)
        _check(all(d >= 0 for d in self.lr_drops), "schedule.lr_drops", "must be >= 0", self.lr_drops)
        _check(
            list(self.lr_drops) == sorted(self.lr_drops), "schedule.lr_drops", "must be sorted", self.lr_drops
        )
        if unit == "fraction":
            _check(
                all(d <= 1 for d in self.lr_drops),
                "schedule.lr_drops",
                "fractions must be <= 1",
                self.lr_drops,
            )
        _check(0 < self.lr_gamma <= 1, "schedule.lr_gamma", "must be in (0, 1]", self.lr_gamma)
        _check(self.warmup_steps >= 0, "schedule.warmup_steps", "must be >= 0", self.warmup_steps)
        _check(0 < self.warmup_factor <= 1, "schedule.warmup_factor", "must be in (0, 1]", self.warmup_factor)
        if self.max_steps is not None:
            _check(self.max_steps >= 1, "schedule.max_steps", "must be >= 1", self.max_steps)
        if self.max_minutes is not None:
            _check(self.max_minutes > 0, "schedule.max_minutes", "must be > 0", self.max_minutes)


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation on the validation split (COCO bbox AP, keypoint AP, mIoU)."""

    #: Evaluate after every N epochs; 0 = not at epoch ends. Default 1.
    every_epochs: int = 1
    #: Also evaluate every N optimizer steps; 0 = off. Default 0.
    every_steps: int = 0
    #: Evaluate when training stops (unless the last step was just evaluated). Default true.
    at_end: bool = True
    #: Metric that selects the best weights (higher is better; never the loss): one of
    #: bbox_AP, bbox_AP50, kp_AP, kp_AP50, mIoU, person_IoU, or "auto" (bbox_AP, else kp_AP, else mIoU,
    #: by the tasks the model has). Default "auto".
    metric: str = "auto"
    #: Images per rank per evaluation batch. Default 16.
    batch_size: int = 16
    #: Evaluate on the first N images of the split only (quick checks); null = all. Default null.
    max_images: int | None = None
    #: Detections below this score are dropped before COCOeval (low: AP integrates over all scores).
    #: Default 0.01.
    score_threshold: float = 0.01
    #: Persons (poses) below this score are dropped before keypoint COCOeval. Default 0.01.
    pose_score_threshold: float = 0.01
    #: Detections (and poses) kept per image, as COCO's maxDets. Default 100.
    max_detections: int = 100

    def validate(self) -> None:
        """Check values; raises :class:`TrainConfigError`."""
        _check(self.every_epochs >= 0, "eval.every_epochs", "must be >= 0", self.every_epochs)
        _check(self.every_steps >= 0, "eval.every_steps", "must be >= 0", self.every_steps)
        allowed = ("auto", *METRICS)
        _check(self.metric in allowed, "eval.metric", f"must be one of {', '.join(allowed)}", self.metric)
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1", self.batch_size)
        if self.max_images is not None:
            _check(self.max_images >= 1, "eval.max_images", "must be >= 1", self.max_images)
        for name in ("score_threshold", "pose_score_threshold"):
            _check(0 <= getattr(self, name) < 1, f"eval.{name}", "must be in [0, 1)", getattr(self, name))
        _check(self.max_detections >= 1, "eval.max_detections", "must be >= 1", self.max_detections)


@dataclass(frozen=True)
class CheckpointConfig:
    """When checkpoints are written (always atomically: a temporary file, then os.replace)."""

    #: Write ``checkpoint.pt`` every N optimizer steps; 0 = only at epoch ends and at the stop. Default 500.
    every_steps: int = 500
    #: Also keep a copy ``checkpoint_epoch<E>.pt`` of every epoch end. Default false.
    keep_epochs: bool = False

    def validate(self) -> None:
        """Check values; raises :class:`TrainConfigError`."""
        _check(self.every_steps >= 0, "checkpoint.every_steps", "must be >= 0", self.every_steps)


@dataclass(frozen=True)
class RuntimeConfig:
    """Devices, precision, seeds and logging."""

    #: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu", "cuda" or "cuda:N". Default "auto".
    device: str = "auto"
    #: Mixed precision: null/"off", "bf16" or "fp16" (fp16 uses a GradScaler; both CUDA only, bf16 also
    #: runs on CPU). ``--amp`` sets "bf16" (fp16 where the GPU lacks bf16). Default null.
    amp: str | None = None
    #: Seed of the model initialisation, the sampling order and the per-sample augmentation. Default 317.
    seed: int = 317
    #: torch CPU threads per process; 0 = torch's default. Default 0.
    threads: int = 0
    #: channels_last memory format for the images and the model. Default true.
    channels_last: bool = True
    #: Convert BatchNorm to SyncBatchNorm under DDP. Default false (CenterNet trains without).
    sync_bn: bool = False
    #: DDP find_unused_parameters (only needed when a configured head is skipped). Default false.
    find_unused_parameters: bool = False
    #: cudnn.benchmark (fixed input size: faster convs). Default true.
    cudnn_benchmark: bool = True
    #: Log (TensorBoard, console) the mean loss terms every N steps. Default 20.
    log_every_steps: int = 20
    #: tqdm progress bars on rank 0. Default true.
    progress: bool = True
    #: Write TensorBoard event files under ``<out>/tensorboard``. Default true.
    tensorboard: bool = True

    def validate(self) -> None:
        """Check values; raises :class:`TrainConfigError`."""
        device = self.device
        ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        _check(ok, "runtime.device", "must be auto, cpu, cuda or cuda:N", device)
        _check(
            self.amp in (None, "off", "bf16", "fp16"),
            "runtime.amp",
            "must be null, off, bf16 or fp16",
            self.amp,
        )
        _check(self.threads >= 0, "runtime.threads", "must be >= 0", self.threads)
        _check(self.log_every_steps >= 1, "runtime.log_every_steps", "must be >= 1", self.log_every_steps)


@dataclass(frozen=True)
class TrainConfig:
    """One training run: model, loss weights, data, optimisation, evaluation, checkpoints, runtime."""

    #: Run name (default output directory ``runs/<name>``).
    name: str
    #: Model config file (config/models/*.yaml), relative to this file's directory or the current one.
    model: str
    #: Fields replacing those of the model config file (e.g. ``{input_size: [64, 64]}`` for a quick run).
    #: Default {}.
    model_overrides: dict[str, Any] = field(default_factory=dict)
    #: Local timm backbone weights (.safetensors / .pth state dict, e.g. ImageNet-pretrained as the paper
    #: uses) loaded into the backbone at the start; nothing is downloaded. Default null (random init).
    backbone_weights: str | None = None
    #: An mcn_ros weights file (.safetensors) to start from; tensors of other names or shapes keep their
    #: initialisation (e.g. a new head). Default null.
    init_weights: str | None = None
    #: Output directory (checkpoints, TensorBoard, exported weights). Default null = ``runs/<name>``.
    out_dir: str | None = None
    #: Loss weights of L_MCN (paper section 3: lambda_size 0.1, lambda_seg 5, the others 1).
    loss: LossWeights = field(default_factory=LossWeights)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def validate(self) -> None:
        """Check every section; raises :class:`TrainConfigError`."""
        _check(bool(self.name), "name", "must not be empty", self.name)
        _check(bool(self.model), "model", "must name a model config file", self.model)
        for section in (self.data, self.optim, self.schedule, self.eval, self.checkpoint, self.runtime):
            section.validate()
        for term in dataclasses.fields(self.loss):
            value = getattr(self.loss, term.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _check(value >= 0 and math.isfinite(value), f"loss.{term.name}", "must be >= 0", value)

    @property
    def output_dir(self) -> Path:
        """The run's output directory."""
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (YAML shape, tuples as lists); :meth:`from_dict` reads it back to an equal config."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | Path | None = None) -> TrainConfig:
        """Build and validate from the YAML shape; relative weight/model paths resolve against base_dir."""
        if not isinstance(data, Mapping):
            raise TrainConfigError(f"expected a mapping at the top level, got {type(data).__name__}")
        config = _build(cls, data, "")
        assert isinstance(config, TrainConfig)
        if base_dir is not None:
            replacements: dict[str, Any] = {"model": str(resolve_path(config.model, base_dir))}
            for name in ("init_weights", "backbone_weights"):
                if getattr(config, name):
                    replacements[name] = str(resolve_path(getattr(config, name), base_dir))
            config = dataclasses.replace(config, **replacements)
        config.validate()
        return config


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split of a COCO-format dataset."""

    split: str
    image_dir: Path
    instances: Path
    keypoints: Path | None


def resolve_split(data: DataConfig, root: str | Path, split: str, with_keypoints: bool) -> SplitFiles:
    """Find (and check) a split's image folder and annotation files; raises TrainConfigError naming them."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise TrainConfigError(f"data.root: dataset directory {base} does not exist")
    if data.image_dir == "auto":
        candidates = [base / split, base / "images" / split]
        image_dir = next((c for c in candidates if c.is_dir()), None)
        if image_dir is None:
            raise TrainConfigError(
                f"data: no image folder for split {split!r} in {base} "
                f"(looked for {candidates[0]} and {candidates[1]})"
            )
    else:
        image_dir = base / data.image_dir.format(split=split)
        if not image_dir.is_dir():
            raise TrainConfigError(f"data.image_dir: image folder {image_dir} does not exist")
    instances = base / data.instances.format(split=split)
    if not instances.is_file():
        raise TrainConfigError(f"data.instances: annotation file {instances} does not exist")
    keypoints = None
    if with_keypoints:
        if data.keypoints is None:
            raise TrainConfigError(
                "data.keypoints: the model has a pose head, so keypoint annotations are needed"
            )
        keypoints = base / data.keypoints.format(split=split)
        if not keypoints.is_file():
            raise TrainConfigError(f"data.keypoints: keypoint annotation file {keypoints} does not exist")
    return SplitFiles(split, image_dir, instances, keypoints)


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read, override (``key.sub=value`` strings) and validate a training config file.

    Raises :class:`TrainConfigError` with one message naming the file and the field.
    """
    path = Path(path)
    data = read_yaml_mapping(path, "training config", TrainConfigError)
    try:
        data = apply_overrides(data, overrides)
        return TrainConfig.from_dict(data, base_dir=path.parent)
    except TrainConfigError as exc:
        raise TrainConfigError(f"{path}: {exc}") from exc


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    result = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise TrainConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-3)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TrainConfigError(f"override {item!r}: invalid YAML value: {exc}") from exc
        parts = key.strip().split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise TrainConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def resolve_path(value: str | Path, base_dir: str | Path) -> Path:
    """A relative path: relative to ``base_dir`` if it exists there, else as given (current directory)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    candidate = Path(base_dir) / path
    return candidate if candidate.exists() else path


def model_config_dict(config: TrainConfig) -> dict[str, Any]:
    """The model config file's mapping with ``model_overrides`` merged in (not yet validated)."""
    try:
        data = read_yaml_mapping(config.model, "model config", TrainConfigError)
    except TrainConfigError as exc:
        raise TrainConfigError(f"model: {exc}") from exc
    return _deep_merge(data, config.model_overrides)


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ------------------------------------------------------------------------------------------------------------
# Generic, typed construction of (nested) dataclasses from plain mappings.


def _check(ok: bool, where: str, message: str, value: Any) -> None:
    if not ok:
        raise TrainConfigError(f"{where}: {message}, got {value!r}")


def _plain(value: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, recursively (YAML/JSON/weights_only friendly)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking keys and value types."""
    label = where or "config"
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise TrainConfigError(f"{label}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise TrainConfigError(f"{name}: unknown field (allowed: {', '.join(known)})")
        kwargs[key] = _coerce(value, hints[key], name)
    missing = [
        f.name
        for f in known.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        prefix = f"{where}." if where else ""
        raise TrainConfigError(f"{prefix}{missing[0]}: missing (required)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise TrainConfigError(f"{label}: {exc}") from exc


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` (dataclass, Optional, tuple, scalar); convert lists."""
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise TrainConfigError(f"{where}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except TrainConfigError as exc:
                errors.append(str(exc))
        raise TrainConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if value is None and hint is not Any:
        raise TrainConfigError(f"{where}: must not be null")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, where)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise TrainConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (list, Sequence):
        (arg,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise TrainConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrainConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TrainConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value  # Any or a type this builder does not know: the dataclass itself validates it
