"""Training configuration: typed dataclasses read from one YAML file and validated once.

A training config names the model config file, the loss weights, the data and the schedule; every default
is documented on its field below (this module is the one place where training defaults live). The YAML
shape is the shape of :meth:`TrainConfig.to_dict`: one mapping per section (``data``, ``optim``,
``schedule``, ``loss``, ``eval``, ``checkpoint``, ``runtime``), lists for tuples. Command-line overrides use
dotted keys with YAML values (``optim.lr=0.001``, ``schedule.max_steps=200``, ``data.augment=null``).

Paths: ``model``, ``backbone_weights`` and ``init_weights`` may be relative; they are looked up relative to
the config file's directory first, then to the current directory. ``data.root`` and ``out_dir`` are relative
to the current directory (they are machine-specific and usually given with ``--data`` / ``--out``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from mcn_ros import typed_config
from mcn_ros.evaluation import METRICS
from mcn_ros.model.device import is_device_name
from mcn_ros.typed_config import check_fields, one_of, read_yaml_mapping
from mcn_training.losses import LossWeights
from mcn_training.targets import RADIUS_RULES
from mcn_training.transforms import AugmentConfig

#: Metrics that can select the best checkpoint: mcn_ros.evaluation.METRICS (keys of its EvalReport); "auto"
#: picks the first the model has of bbox_AP (detection), kp_AP (pose), mIoU (segmentation).
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


def _split_template(value: str) -> str:
    try:
        value.format(split="x")
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"only {{split}} may appear in braces, got {value!r}") from None
    return value


def _ascending(values: tuple[float, ...]) -> tuple[float, ...]:
    if list(values) != sorted(values):
        raise ValueError(f"must be sorted, got {values!r}")
    return values


def check_device_name(value: str) -> str:
    """``value`` if it names a device setting (auto, cpu, cuda or cuda:N), else a ValueError."""
    if not is_device_name(value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


_NonEmpty = Annotated[str, Field(min_length=1)]
_SplitTemplate = Annotated[str, AfterValidator(_split_template)]
_Count = Annotated[int, Field(ge=0)]
_PositiveCount = Annotated[int, Field(ge=1)]
_Positive = Annotated[float, Field(gt=0)]
_NonNegative = Annotated[float, Field(ge=0)]
_Fraction = Annotated[float, Field(ge=0, lt=1)]  # in [0, 1)
_Factor = Annotated[float, Field(gt=0, le=1)]  # in (0, 1]


class _Section:
    """Fields are checked when a section is made (from YAML by :meth:`TrainConfig.from_dict`, or in code)."""

    def __post_init__(self) -> None:
        check_fields(self, TrainConfigError)

    def validate(self) -> None:
        """Check the values again (they were checked when the section was made); raises TrainConfigError."""
        check_fields(self, TrainConfigError)


@dataclass(frozen=True)
class DataConfig(_Section):
    """Where the COCO-format data lives and how it is loaded."""

    #: Dataset directory (COCO 2017 layout, or the layout mcn_training.synthetic writes). ``--data`` sets it.
    #: Default None: must then be given with ``--data``.
    root: str | None = None
    #: Split used for training. Default "train2017".
    train_split: _NonEmpty = "train2017"
    #: Split used for validation (periodic evaluation). Default "val2017".
    val_split: _NonEmpty = "val2017"
    #: Image folder relative to ``root``, ``{split}`` replaced by the split name. Default "auto": ``{split}``
    #: (COCO: ``train2017/``) or ``images/{split}`` (synthetic), whichever exists.
    image_dir: Annotated[_SplitTemplate, Field(min_length=1)] = "auto"
    #: Instances json (boxes, masks) relative to ``root``. Default "annotations/instances_{split}.json".
    instances: Annotated[_SplitTemplate, Field(min_length=1)] = "annotations/instances_{split}.json"
    #: Person-keypoints json relative to ``root``, read only when the model has a pose head. Default
    #: "annotations/person_keypoints_{split}.json".
    keypoints: _SplitTemplate | None = "annotations/person_keypoints_{split}.json"
    #: DataLoader worker processes per rank. Default 4.
    workers: _Count = 4
    #: Most objects (boxes) per image in the targets; more are dropped. Default 128 (CenterNet's).
    max_objects: _PositiveCount = 128
    #: Smallest Gaussian radius (output cells) of keypoint-heatmap targets; the person's box radius is used
    #: when larger. Default 0 (CenterNet: the box radius alone).
    keypoint_min_radius: _Count = 0
    #: How heatmap Gaussians are sized: "corrected" (the radius CornerNet's three cases really give) or
    #: "centernet" (CenterNet's published code, several times larger: what the paper's models trained
    #: with; the *_140e_coco configs use it). Default "corrected".
    heatmap_radius: Annotated[str, one_of(*RADIUS_RULES)] = "corrected"
    #: Training augmentation (fields of mcn_training.transforms.AugmentConfig); null = none (letterbox
    #: only, like evaluation). Default: AugmentConfig's defaults.
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class OptimConfig(_Section):
    """Optimizer. The paper (CenterNet's recipe): Adam, lr 5e-4 for a batch of 128."""

    #: "adam", "adamw" or "sgd". Default "adam".
    name: Annotated[str, one_of("adam", "adamw", "sgd")] = "adam"
    #: Learning rate for ``batch_size`` (not rescaled when the batch changes). Default 5e-4.
    lr: _Positive = 5e-4
    #: Global batch size (all ranks together); each of N ranks loads batch_size / N. Default 128.
    batch_size: _PositiveCount = 128
    #: Weight decay (decoupled for adamw). Default 0.
    weight_decay: _NonNegative = 0.0
    #: Adam(W) betas, each in [0, 1). Default (0.9, 0.999).
    betas: tuple[_Fraction, _Fraction] = (0.9, 0.999)
    #: SGD momentum, in [0, 1). Default 0.9.
    momentum: _Fraction = 0.9
    #: Clip the gradient norm to this value; null = no clipping. Default null.
    grad_clip_norm: _Positive | None = None


@dataclass(frozen=True)
class ScheduleConfig(_Section):
    """How long to train and the learning-rate schedule (stepped after every optimizer step)."""

    #: Epochs (passes over the training split). Default 140 (CenterNet's long schedule).
    epochs: _PositiveCount = 140
    #: The lr is multiplied by ``lr_gamma`` when training passes each of these points (ascending).
    #: Default (90, 120).
    lr_drops: Annotated[tuple[_NonNegative, ...], AfterValidator(_ascending)] = (90.0, 120.0)
    #: Unit of ``lr_drops``: "epoch" (may be fractional) or "fraction" (of the total steps: the smaller of
    #: epochs x steps-per-epoch and ``max_steps``). Default "epoch".
    lr_drop_unit: Annotated[str, one_of("epoch", "fraction")] = "epoch"
    #: Factor applied at each drop, in (0, 1]. Default 0.1.
    lr_gamma: _Factor = 0.1
    #: Linear warm-up over this many steps from ``warmup_factor`` x lr. Default 0 (none, as CenterNet).
    warmup_steps: _Count = 0
    #: Starting factor of the warm-up, in (0, 1]. Default 0.001.
    warmup_factor: _Factor = 0.001
    #: Stop after this many optimizer steps in total (all epochs); null = no limit. Default null.
    max_steps: _PositiveCount | None = None
    #: Stop after this many minutes of training (evaluation time not counted); null = no limit.
    #: Default null. Not deterministic: prefer max_steps where runs must be reproduced.
    max_minutes: _Positive | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr_drop_unit == "fraction" and any(d > 1 for d in self.lr_drops):
            raise TrainConfigError(f"lr_drops: fractions must be <= 1, got {self.lr_drops!r}")

    def drops_past_end(self) -> tuple[float, ...]:
        """The lr_drops at or past the end of the schedule (``epochs``, or fraction 1), which never apply:
        the rate would drop after the last step. Allowed (a trial run shortens ``epochs``); warned about."""
        end = 1.0 if self.lr_drop_unit == "fraction" else float(self.epochs)
        return tuple(d for d in self.lr_drops if d >= end)


@dataclass(frozen=True)
class EvalConfig(_Section):
    """Periodic evaluation on the validation split (COCO bbox AP, keypoint AP, mIoU)."""

    #: Evaluate after every N epochs; 0 = not at epoch ends. Default 1.
    every_epochs: _Count = 1
    #: Also evaluate every N optimizer steps; 0 = off. Default 0.
    every_steps: _Count = 0
    #: Evaluate when training stops (unless the last step was just evaluated). Default true.
    at_end: bool = True
    #: Metric that selects the best weights (higher is better; never the loss): one of
    #: bbox_AP, bbox_AP50, kp_AP, kp_AP50, mIoU, person_IoU, or "auto" (bbox_AP, else kp_AP, else mIoU,
    #: by the tasks the model has). Default "auto".
    metric: Annotated[str, one_of("auto", *METRICS)] = "auto"
    #: Images per rank per evaluation batch. Default 16.
    batch_size: _PositiveCount = 16
    #: Evaluate on the first N images of the split only (quick checks); null = all. Default null.
    max_images: _PositiveCount | None = None
    #: Detections below this score are dropped before COCOeval (low: AP integrates over all scores).
    #: In [0, 1). Default 0.01.
    score_threshold: _Fraction = 0.01
    #: Persons (poses) below this score are dropped before keypoint COCOeval, in [0, 1). Default 0.01.
    pose_score_threshold: _Fraction = 0.01
    #: Detections (and poses) kept per image, as COCO's maxDets. Default 100.
    max_detections: _PositiveCount = 100


@dataclass(frozen=True)
class CheckpointConfig(_Section):
    """When checkpoints are written (always atomically: a temporary file, then os.replace)."""

    #: Write ``checkpoint.pt`` every N optimizer steps; 0 = only at epoch ends and at the stop. Default 500.
    every_steps: _Count = 500
    #: Also keep a copy ``checkpoint_epoch<E>.pt`` of every epoch end. Default false.
    keep_epochs: bool = False


@dataclass(frozen=True)
class RuntimeConfig(_Section):
    """Devices, precision, seeds and logging."""

    #: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu", "cuda" or "cuda:N". Default "auto".
    device: Annotated[str, AfterValidator(check_device_name)] = "auto"
    #: Mixed precision: null/"off", "bf16" or "fp16" (fp16 uses a GradScaler; both CUDA only, bf16 also
    #: runs on CPU). ``--amp`` sets "bf16" (fp16 where the GPU lacks bf16). Default null.
    amp: Annotated[str, one_of("off", "bf16", "fp16")] | None = None
    #: Seed of the model initialisation, the sampling order and the per-sample augmentation. Default 317.
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 317  # numpy's seeds are 32-bit
    #: torch CPU threads per process; 0 = torch's default. Default 0.
    threads: _Count = 0
    #: channels_last memory format for the images and the model. Default true.
    channels_last: bool = True
    #: Convert BatchNorm to SyncBatchNorm under DDP. Default false (CenterNet trains without).
    sync_bn: bool = False
    #: DDP find_unused_parameters (only needed when a configured head is skipped). Default false.
    find_unused_parameters: bool = False
    #: cudnn.benchmark (fixed input size: faster convs). Default true.
    cudnn_benchmark: bool = True
    #: Deterministic kernels: torch.use_deterministic_algorithms (warn-only: an op without a deterministic
    #: kernel, such as the deformable convolutions' backward, warns instead of failing), cuDNN deterministic
    #: and no cudnn.benchmark. On the CPU a run repeats itself without it; on CUDA, cuDNN's algorithm choice
    #: and atomic-add kernels round differently run to run, so a resumed run drifts from an uninterrupted one
    #: unless this is on. Slower. Default false.
    deterministic: bool = False
    #: Log (TensorBoard, console) the mean loss terms every N steps. Default 20.
    log_every_steps: _PositiveCount = 20
    #: tqdm progress bars on rank 0. Default true.
    progress: bool = True
    #: Write TensorBoard event files under ``<out>/tensorboard``. Default true.
    tensorboard: bool = True


@dataclass(frozen=True)
class TrainConfig(_Section):
    """One training run: model, loss weights, data, optimisation, evaluation, checkpoints, runtime."""

    #: Run name (default output directory ``runs/<name>``).
    name: _NonEmpty
    #: Model config file (config/models/*.yaml), relative to this file's directory or the current one.
    model: _NonEmpty
    #: Fields replacing those of the model config file (e.g. ``{input_size: [64, 64]}`` for a quick run).
    #: Default {}.
    model_overrides: dict[str, Any] = field(default_factory=dict)
    #: Local timm backbone weights (a .safetensors state dict, as timm's ImageNet weights are published on the
    #: Hugging Face hub; the paper starts from ImageNet) loaded into the backbone at the start; nothing is
    #: downloaded, nothing is unpickled. Default null (random init).
    backbone_weights: str | None = None
    #: An mcn_ros weights file (.safetensors) to start from; tensors of other names or shapes keep their
    #: initialisation (e.g. a new head), with a warning listing them; under --test-only every tensor of the
    #: model must be in the file. Default null.
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

    @property
    def output_dir(self) -> Path:
        """The run's output directory."""
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (YAML shape, tuples as lists); :meth:`from_dict` reads it back to an equal config."""
        return typed_config.to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | Path | None = None) -> TrainConfig:
        """Build and validate from the YAML shape; relative weight/model paths resolve against base_dir."""
        config = typed_config.build(cls, data, error=TrainConfigError)
        if base_dir is not None:
            replacements: dict[str, Any] = {"model": str(resolve_path(config.model, base_dir))}
            for name in ("init_weights", "backbone_weights"):
                if getattr(config, name):
                    replacements[name] = str(resolve_path(getattr(config, name), base_dir))
            config = dataclasses.replace(config, **replacements)
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
    return typed_config.apply_overrides(data, overrides, TrainConfigError)


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
    return typed_config.deep_merge(data, config.model_overrides)
