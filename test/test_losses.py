"""L_MCN: focal loss value, masked L1 normalisation, pose masking, task selection, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mcn_ros.model.config import ModelConfig
from mcn_training.losses import LossWeights, MCNLoss, focal_loss, masked_l1
from mcn_training.targets import build_targets

H, W = 32, 64


def _config() -> ModelConfig:
    return ModelConfig.from_dict(
        {
            "name": "t",
            "backbone": "resnet18",
            "input_size": [H, W],
            "use_dcn": False,
            "detection": {"classes": ["person", "car"]},
            "pose": {},
            "segmentation": {"classes": ["person"], "output_stride": 4},
        }
    )


def _batch(has_pose: bool = True) -> dict[str, torch.Tensor]:
    cfg = _config()
    boxes = np.array([[4.0, 2.0, 20.0, 30.0], [24.0, 8.0, 44.0, 20.0]])
    kps = np.zeros((2, 17, 3))
    kps[0, :, 0] = np.linspace(6, 18, 17)
    kps[0, :, 1] = np.linspace(4, 28, 17)
    kps[0, :, 2] = 2
    sem = np.zeros((H, W), np.uint8)
    sem[2:30, 4:20] = 1
    sem[0:4, :] = 255
    t = build_targets(boxes, np.array([0, 1]), kps if has_pose else None, sem, (H, W), cfg, max_objects=4)
    return {k: v.unsqueeze(0) for k, v in t.items()}


def _outputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = H // 4, W // 4
    shapes = {
        "heatmap": (1, 2, h, w),
        "size": (1, 2, h, w),
        "offset": (1, 2, h, w),
        "kp_offsets": (1, 34, h, w),
        "kp_heatmap": (1, 17, h, w),
        "kp_subpixel": (1, 2, h, w),
        "segmentation": (1, 2, h, w),
    }
    return {k: torch.randn(s, generator=g).requires_grad_(True) for k, s in shapes.items()}


def test_focal_loss_hand_computed() -> None:
    logits = torch.zeros(1, 1, 1, 3)  # p = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.5, 0.0]]]])
    pos = math.log(0.5) * 0.5**2
    neg_half = math.log(0.5) * 0.5**2 * (1 - 0.5) ** 4
    neg_zero = math.log(0.5) * 0.5**2
    expected = -(pos + neg_half + neg_zero) / 1
    assert float(focal_loss(logits, target)) == pytest.approx(expected, rel=1e-6)
    # No positives: the negative sum alone (num_pos clamped to 1).
    assert float(focal_loss(logits, torch.zeros(1, 1, 1, 3))) == pytest.approx(-3 * neg_zero, rel=1e-6)
    # Confident and right is nearly free; the clamp keeps a wrong certainty finite.
    good = torch.tensor([[[[20.0, -20.0, -20.0]]]])
    assert float(focal_loss(good, target)) < 1e-6
    assert math.isfinite(float(focal_loss(-good, target)))
    # Ignored cells (crowd regions: targets.HEATMAP_IGNORE) are neither positives nor negatives.
    ignored = torch.tensor([[[[1.0, -1.0, 0.0]]]])
    logits = torch.tensor([[[[0.3, 2.0, -0.5]]]])
    without = focal_loss(logits[..., [0, 2]], ignored[..., [0, 2]])
    assert float(focal_loss(logits, ignored)) == pytest.approx(float(without), rel=1e-6)
    assert float(focal_loss(logits.index_fill(3, torch.tensor([1]), -9.0), ignored)) == pytest.approx(
        float(without), rel=1e-6
    )


def test_masked_l1_normalised_by_valid_entries() -> None:
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[[1.0], [0.0]]])
    assert float(masked_l1(pred, target, mask)) == pytest.approx(3.0 / 2, rel=1e-3)


def test_terms_total_and_weights() -> None:
    weights = LossWeights()
    assert (weights.center, weights.size, weights.offset, weights.keyp, weights.keyp_off, weights.seg) == (
        1.0, 0.1, 1.0, 1.0, 1.0, 5.0,
    )  # fmt: skip
    out = MCNLoss(weights)(_outputs(), _batch())
    assert set(out) == {"center", "size", "offset", "keyp", "keyp_off", "seg", "total"}
    expected = (
        out["center"] + 0.1 * out["size"] + out["offset"] + out["keyp"] + out["keyp_off"] + 5 * out["seg"]
    )
    torch.testing.assert_close(out["total"], expected)
    assert all(torch.isfinite(v) and v > 0 for v in out.values())
    out["total"].backward()


def test_absent_tasks_vanish() -> None:
    det = MCNLoss(tasks={"detection"})(_outputs(), _batch())
    assert set(det) == {"center", "size", "offset", "total"}
    seg_only = {"segmentation": _outputs()["segmentation"]}
    seg = MCNLoss(tasks={"detection", "pose", "segmentation"})(seg_only, _batch())
    assert set(seg) == {"seg", "total"}
    torch.testing.assert_close(seg["total"], 5 * seg["seg"])
    with pytest.raises(ValueError, match="unknown tasks"):
        MCNLoss(tasks={"depth"})


def test_has_pose_masks_pose_terms() -> None:
    outputs = _outputs()
    unlabelled = _batch(has_pose=True)
    unlabelled["has_pose"] = torch.zeros(1)  # same targets, but the image counts as not pose-labelled
    out = MCNLoss()(outputs, unlabelled)
    assert out["keyp"].item() == 0.0 and out["keyp_off"].item() == 0.0
    out["total"].backward()
    for name in ("kp_heatmap", "kp_offsets", "kp_subpixel"):
        grad = outputs[name].grad
        assert grad is None or float(grad.abs().sum()) == 0.0
    labelled = MCNLoss()(_outputs(), _batch(has_pose=True))
    assert labelled["keyp"].item() > 0 and labelled["keyp_off"].item() > 0


def test_perfect_regressions_and_no_in_place_on_outputs() -> None:
    batch = _batch()
    outputs = _outputs()
    h, w = H // 4, W // 4
    with torch.no_grad():
        for name, idx_key, mask_key in (("size", "indices", "mask"), ("offset", "indices", "mask")):
            flat = outputs[name].view(1, 2, -1)
            m = batch[mask_key][0] > 0
            flat[0][:, batch[idx_key][0][m]] = batch[name][0][m].T
    before = {k: v.detach().clone() for k, v in outputs.items()}
    out = MCNLoss()(outputs, batch)
    assert out["size"].item() < 1e-6 and out["offset"].item() < 1e-6
    for k, v in outputs.items():
        assert torch.equal(v.detach(), before[k]), k
    assert outputs["size"].shape == (1, 2, h, w)


def test_segmentation_ignore_index() -> None:
    batch = _batch()
    outputs = _outputs()
    base = MCNLoss(tasks={"segmentation"})(outputs, batch)["seg"].item()
    changed = {k: v.detach().clone() for k, v in outputs.items()}
    ignored = batch["segmentation"][0] == 255
    assert ignored.any()
    changed["segmentation"][0][:, ignored] = 100.0 * torch.tensor([1.0, -1.0]).view(2, 1)
    assert float(MCNLoss(tasks={"segmentation"})(changed, batch)["seg"]) == pytest.approx(base, rel=1e-6)
    all_ignored = dict(batch, segmentation=torch.full_like(batch["segmentation"], 255))
    assert MCNLoss(tasks={"segmentation"})(outputs, all_ignored)["seg"].item() == 0.0


def test_loss_weights_validate() -> None:
    with pytest.raises(ValueError, match="size"):
        LossWeights(size=-1.0)
