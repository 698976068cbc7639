"""The Multitask-CenterNet loss (paper section 3), every term returned for logging.

``L_MCN = L_center + lambda_size L_size + L_off + L_keyp + L_keyp_off + lambda_seg L_seg`` with the weights of
:class:`LossWeights` (paper: lambda_size = 0.1, lambda_seg = 5, the others 1). As in CenterNet:

- ``center``: penalty-reduced pixel-wise focal loss (alpha 2, beta 4) on the detection heatmap, normalised by
  the number of objects in the batch;
- ``size``, ``offset``: L1 at the centre cells, normalised by the number of valid entries;
- ``keyp``: focal loss on the keypoint heatmaps plus L1 of the keypoints regressed from the centre
  (CenterNet multi_pose's ``hm_hp`` and ``hps`` terms);
- ``keyp_off``: L1 of the keypoints' sub-pixel offsets;
- ``seg``: pixel-wise cross-entropy with ``ignore_index=255`` (FCN), mean over non-ignored pixels.

Pose terms count only images with ``has_pose`` = 1. Terms of tasks the loss was not built for (or whose
outputs are absent) do not appear. No in-place operation touches the model outputs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcn_ros.model.config import TASKS
from mcn_ros.model.decode import gather_at
from mcn_ros.model.labels import IGNORE_INDEX

_EPS = 1e-4


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of L_MCN (paper section 3)."""

    #: Detection heatmap focal loss. Default 1.
    center: float = 1.0
    #: Box size L1 (lambda_size). Default 0.1.
    size: float = 0.1
    #: Box centre sub-pixel offset L1. Default 1.
    offset: float = 1.0
    #: Keypoint heatmap focal loss + keypoint-from-centre L1. Default 1.
    keyp: float = 1.0
    #: Keypoint sub-pixel offset L1. Default 1.
    keyp_off: float = 1.0
    #: Segmentation cross-entropy (lambda_seg). Default 5.
    seg: float = 5.0

    def __post_init__(self) -> None:
        for name in ("center", "size", "offset", "keyp", "keyp_off", "seg"):
            value = float(getattr(self, name))
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"{name}: loss weight must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, value)


def focal_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """CenterNet's penalty-reduced focal loss of heatmap ``logits`` [B, C, H, W] against ``target`` in [0, 1].

    Positives are the cells where ``target == 1``; the loss is ``-(sum pos + sum neg) / max(num_pos, 1)``
    with ``pos = log(p) (1-p)^2`` and ``neg = log(1-p) p^2 (1-target)^4``, ``p = sigmoid(logits)`` clamped
    to [1e-4, 1 - 1e-4]; cells whose target is negative (crowd regions,
    :data:`mcn_training.targets.HEATMAP_IGNORE`) count as neither. ``weight`` [B] (0/1) drops whole images.
    """
    p = torch.sigmoid(logits.float()).clamp(_EPS, 1 - _EPS)
    target = target.float()
    pos = target.eq(1).float()
    negative = target.ge(0).float() - pos  # not a positive, not ignored
    pos_loss = torch.log(p) * (1 - p).pow(2) * pos
    neg_loss = torch.log(1 - p) * p.pow(2) * (1 - target.clamp(min=0)).pow(4) * negative
    per_image = (pos_loss + neg_loss).flatten(1).sum(1)
    num_pos = pos.flatten(1).sum(1)
    if weight is not None:
        per_image = per_image * weight
        num_pos = num_pos * weight
    return -per_image.sum() / num_pos.sum().clamp(min=1.0)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``|pred - target| * mask`` over the number of valid (mask > 0) entries (mask broadcast)."""
    mask = mask.float().expand_as(target)
    return (torch.abs(pred.float() - target.float()) * mask).sum() / (mask.sum() + _EPS)


class MCNLoss(nn.Module):
    """``loss(outputs, targets) -> {"center", "size", "offset", "keyp", "keyp_off", "seg", "total"}``.

    ``outputs`` are the raw model outputs (heatmaps as logits), ``targets`` a collated batch of
    :func:`mcn_training.targets.build_targets` dicts. Only terms of ``tasks`` whose outputs are present are
    computed; ``total`` is their weighted sum.
    """

    def __init__(self, weights: LossWeights | None = None, tasks: Collection[str] = TASKS) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        unknown = set(tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks: {', '.join(sorted(unknown))}")
        self.tasks = frozenset(tasks)

    def forward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """All loss terms of the batch and their weighted sum ``total``."""
        terms: dict[str, Tensor] = {}
        if "detection" in self.tasks and "heatmap" in outputs:
            indices, mask = targets["indices"], targets["mask"]
            terms["center"] = focal_loss(outputs["heatmap"], targets["heatmap"])
            mask2 = mask.unsqueeze(-1)
            terms["size"] = masked_l1(gather_at(outputs["size"], indices), targets["size"], mask2)
            terms["offset"] = masked_l1(gather_at(outputs["offset"], indices), targets["offset"], mask2)
        if "pose" in self.tasks and "kp_heatmap" in outputs:
            has_pose = targets["has_pose"].float().reshape(-1)
            b = has_pose.shape[0]
            hm = focal_loss(outputs["kp_heatmap"], targets["kp_heatmap"], weight=has_pose)
            from_centre = masked_l1(
                gather_at(outputs["kp_offsets"], targets["indices"]),
                targets["kp_offsets"],
                targets["kp_offsets_mask"] * has_pose.view(b, 1, 1),
            )
            terms["keyp"] = hm + from_centre
            kp_indices = targets["kp_indices"]  # [B, M, 17]
            sub = gather_at(outputs["kp_subpixel"], kp_indices.reshape(b, -1))  # [B, M*17, 2]
            terms["keyp_off"] = masked_l1(
                sub.reshape(*kp_indices.shape, 2),
                targets["kp_subpixel"],
                (targets["kp_mask"] * has_pose.view(b, 1, 1)).unsqueeze(-1),
            )
        if "segmentation" in self.tasks and "segmentation" in outputs:
            logits = outputs["segmentation"].float()
            target = targets["segmentation"].long()
            per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
            valid = (target != IGNORE_INDEX).sum().clamp(min=1)
            terms["seg"] = per_pixel / valid
        weights = {
            "center": self.weights.center,
            "size": self.weights.size,
            "offset": self.weights.offset,
            "keyp": self.weights.keyp,
            "keyp_off": self.weights.keyp_off,
            "seg": self.weights.seg,
        }
        if terms:
            total = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
        else:
            total = torch.zeros((), device=next(iter(outputs.values())).device)
        terms["total"] = total
        return terms
