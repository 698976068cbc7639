"""The pieces of a run built from its config: datasets, model, optimizer, lr schedule, precision, metric."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset

from mcn_ros.evaluation import categories_by_name
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.precision import cuda_native
from mcn_ros.model.weights import load_weights
from mcn_training.config import METRIC_TASK, OptimConfig, TrainConfig, TrainConfigError, resolve_split
from mcn_training.data import CocoMultitaskDataset
from mcn_training.distributed import DistInfo
from mcn_training.errors import TrainError
from mcn_training.evaluate import subset_coco

LOG = logging.getLogger("mcn_training")


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
                radius_rule=cfg.data.heatmap_radius,
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
    info["classes_not_in_dataset"] = check_classes(model_config, {"train": train, "val": val_full})
    val: Dataset[dict[str, torch.Tensor]] = val_full
    val_coco = val_full.coco
    if cfg.eval.max_images is not None and cfg.eval.max_images < len(val_full):
        keep = list(range(cfg.eval.max_images))
        val = Subset(val_full, keep)
        val_coco = subset_coco(val_full.coco, [int(val_full.image_ids[i]) for i in keep])
    info["val"] = {"split": val_files.split, "images": len(val), "instances": str(val_files.instances)}  # type: ignore[arg-type]
    return Datasets(train, val, val_coco, info)


def check_classes(
    model_config: ModelConfig, splits: Mapping[str, CocoMultitaskDataset | None]
) -> dict[str, dict[str, list[str]]]:
    """The model's classes each split has no category for ({split: {head: names}}), warned about (training
    split: they get no targets; validation: they are not scored; e.g. an 80-class model fine-tuned on
    driving data); a TrainError when a split has none of a head's classes (a naming mismatch, such as
    "Person" for "person": nothing would be learnt or scored)."""
    heads = {"detection": model_config.detection, "segmentation": model_config.segmentation}
    classes = {what: list(head.classes) for what, head in heads.items() if head is not None}
    missing: dict[str, dict[str, list[str]]] = {}
    for split, dataset in splits.items():
        if dataset is None:
            continue
        categories = categories_by_name(dataset.coco)
        source = dataset.instances_json.name
        missing[split] = {what: [n for n in names if n not in categories] for what, names in classes.items()}
        for what, names in missing[split].items():
            if len(names) == len(classes[what]):
                raise TrainError(
                    f"data: none of the model's {len(names)} {what} classes ({', '.join(names[:3])}...) is a "
                    f"category of {source} ({', '.join(sorted(categories)[:5])}...): check the class names"
                )
            if names:
                effect = "get no training targets" if split == "train" else "are not scored"
                LOG.warning(
                    "data: %d of the model's %d %s classes have no category in %s (%s%s): they %s",
                    len(names), len(classes[what]), what, source, ", ".join(names[:5]),
                    "..." if len(names) > 5 else "", effect,
                )  # fmt: skip
    return missing


def init_from_weights(model: nn.Module, path: str, *, complete: bool = False) -> None:
    """Copy the tensors of an mcn_ros weights file whose names and shapes match (the rest keep their init,
    with a warning: fine-tuning from other heads, say). ``complete``: every tensor of the model must be in
    the file, or a TrainError lists those that are not (evaluating a partly random model means nothing).

    A shape says nothing of meaning: where the file's class lists or normalisation differ from the model's,
    a warning names them (a head of as many, but other, classes is loaded all the same)."""
    source, source_config, _ = load_weights(path)
    own = model.state_dict()
    given = source.state_dict()
    matched = {k: v for k, v in given.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in given]
    other_shape = [k for k in own if k in given and k not in matched]
    if missing or other_shape:
        left = _unloaded(own, given, missing, other_shape)
        if complete:
            raise TrainError(
                f"init_weights {path}: {len(own) - len(matched)} of the model's {len(own)} tensors are not "
                f"in the file or differ in shape ({left}): the weights do not fit the model to evaluate "
                "(python -m mcn_training.evaluate --weights evaluates a weights file with its own config)"
            )
        LOG.warning(
            "init_weights %s: %d of the model's %d tensors loaded; the other %d keep their initialisation "
            "(random, or backbone_weights) (%s)", path, len(matched), len(own), len(own) - len(matched), left,
        )  # fmt: skip
    else:
        LOG.info("init_weights %s: all %d tensors of the model loaded", path, len(own))
    model.load_state_dict(matched, strict=False)
    config = getattr(model, "config", None)
    for what in ("detection", "segmentation"):
        theirs, mine = getattr(source_config, what, None), getattr(config, what, None)
        if theirs is not None and mine is not None and tuple(theirs.classes) != tuple(mine.classes):
            LOG.warning(
                "init_weights %s: its %s classes differ from the model's (%s... against %s...); its %s head "
                "is loaded where the shapes match, so it starts from other classes",
                path, what, list(theirs.classes)[:3], list(mine.classes)[:3], what,
            )  # fmt: skip
    if config is not None and (source_config.mean, source_config.std) != (config.mean, config.std):
        LOG.warning(
            "init_weights %s: trained with mean %s / std %s, the model normalises with %s / %s",
            path, source_config.mean, source_config.std, config.mean, config.std,
        )  # fmt: skip


def _unloaded(
    own: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], missing: list[str], other: list[str]
) -> str:
    """A short list of the model's tensors a weights file does not provide: missing, and of another shape."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} not in the file: {_first(missing)}")
    if other:
        shapes = [f"{k} {list(own[k].shape)} in the model, {list(given[k].shape)} in the file" for k in other]
        parts.append(f"{len(other)} of another shape: {_first(shapes)}")
    return "; ".join(parts)


def _first(items: list[str], count: int = 3) -> str:
    """The first ``count`` of ``items``, and "..." if there are more."""
    return "; ".join(items[:count]) + ("; ..." if len(items) > count else "")


def build_model(
    cfg: TrainConfig,
    model_config: ModelConfig,
    device: torch.device,
    dist_info: DistInfo,
    fresh: bool,
    evaluate_only: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """The model on ``device`` and the module to train: the same one, or its DDP wrapper when distributed.

    A ``fresh`` model (no checkpoint to restore) starts from backbone_weights and init_weights; to
    ``evaluate_only`` (--test-only), init_weights must provide every tensor of the model.
    """
    rt = cfg.runtime
    model = MultitaskCenterNet(model_config, cfg.backbone_weights if fresh else None)
    if cfg.init_weights and fresh:
        init_from_weights(model, cfg.init_weights, complete=evaluate_only)
    model.to(device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    if rt.sync_bn and dist_info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not dist_info.distributed:
        return model, model
    wrapped = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=rt.find_unused_parameters,
    )
    return model, wrapped


#: The optimizer class of each ``optim.name``.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def optimizer_settings(optim: OptimConfig) -> dict[str, Any]:
    """The hyperparameters ``optim`` gives its optimizer: lr, weight_decay, and betas (Adam, AdamW) or
    momentum (SGD)."""
    settings: dict[str, Any] = {"lr": optim.lr, "weight_decay": optim.weight_decay}
    settings.update({"momentum": optim.momentum} if optim.name == "sgd" else {"betas": optim.betas})
    return settings


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[cfg.optim.name](params, **optimizer_settings(cfg.optim))


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


def resolve_amp(setting: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``runtime.amp`` on ``device`` (None = full precision)."""
    if setting in (None, "off"):
        return None
    if device.type == "cuda":
        if setting == "bf16" and not cuda_native("bf16", torch.cuda.get_device_capability(device)):
            LOG.warning(
                "runtime.amp: this GPU has no native bf16 (before Ampere); using fp16 with a GradScaler"
            )
            return torch.float16
        return torch.bfloat16 if setting == "bf16" else torch.float16
    if setting == "bf16":
        return torch.bfloat16
    raise TrainConfigError(f"runtime.amp: {setting} needs CUDA; use bf16 or off on {device.type}")


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
