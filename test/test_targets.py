"""CenterNet targets: radius formula, heatmap peaks, regressions, keypoints, segmentation sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mcn_ros.model.config import ModelConfig
from mcn_training.targets import (
    HEATMAP_IGNORE,
    build_targets,
    centernet_gaussian_radius,
    draw_gaussians,
    gaussian_radius,
    heatmap_radius,
)


def _config(detection: object = "coco", pose: bool = True, seg_stride: int | None = 4) -> ModelConfig:
    data: dict[str, object] = {
        "name": "t",
        "backbone": "resnet18",
        "input_size": [64, 96],
        "use_dcn": False,
        "detection": {"classes": detection},
    }
    if pose:
        data["pose"] = {}
    if seg_stride is not None:
        data["segmentation"] = {"classes": ["person", "car"], "output_stride": seg_stride}
    return ModelConfig.from_dict(data)


def _case_ious(h: float, w: float, r: np.ndarray) -> np.ndarray:
    """IoU of the three corner-deviation cases of CornerNet/CenterNet at deviation r: [3, len(r)]."""
    shifted = (w - r) * (h - r) / (2 * w * h - (w - r) * (h - r))
    shrunk = np.clip(w - 2 * r, 0, None) * np.clip(h - 2 * r, 0, None) / (w * h)
    grown = w * h / ((w + 2 * r) * (h + 2 * r))
    return np.stack([shifted, shrunk, grown])


@pytest.mark.parametrize(("h", "w"), [(10.0, 10.0), (3.0, 17.0), (40.0, 8.5), (128.0, 96.0), (1.0, 1.0)])
def test_gaussian_radius_matches_brute_force_overlap_search(h: float, w: float) -> None:
    o = 0.7
    r = np.linspace(0, min(h, w) / 2, 200001)
    ok = _case_ious(h, w, r).min(0) >= o
    brute = r[np.flatnonzero(~ok)[0] - 1]  # largest r before the first failing one
    assert float(gaussian_radius(h, w, o)) == pytest.approx(brute, abs=2 * (r[1] - r[0]))
    # At the radius every case keeps IoU >= o (up to rounding).
    assert _case_ious(h, w, np.array([float(gaussian_radius(h, w, o))])).min() >= o - 1e-9


def test_centernet_published_radius_is_too_large() -> None:
    """The formula CenterNet ships (issues #116/#273) violates its own IoU bound; ours does not."""
    h, w, o = 10.0, 10.0, 0.7
    b3, c3 = -2 * o * (h + w), (o - 1) * w * h
    published = (b3 + math.sqrt(b3**2 - 4 * 4 * o * c3)) / 2  # min over its cases is this one here
    assert published == pytest.approx(2.733, abs=1e-3)
    assert _case_ious(h, w, np.array([published])).min() < 0.5
    assert float(gaussian_radius(h, w, o)) == pytest.approx(0.8167, abs=1e-3)


def test_centernet_radius_rule_is_the_published_formula() -> None:
    """What the paper configs train with (data.heatmap_radius: centernet)."""
    h, w, o = np.array([10.0, 25.0, 50.0, 100.0]), np.array([10.0, 12.0, 50.0, 40.0]), 0.7
    s, p = h + w, h * w
    cases = [  # each case's quadratic a r^2 + b r + c, as CenterNet solves it: (b' + sqrt(b'^2 - 4ac)) / 2
        (s, np.sqrt(s**2 - 4 * p * (1 - o) / (1 + o))),
        (2 * s, np.sqrt((2 * s) ** 2 - 4 * 4 * (1 - o) * p)),
        (-2 * o * s, np.sqrt((2 * o * s) ** 2 - 4 * 4 * o * (o - 1) * p)),
    ]
    published = np.min([(b + root) / 2 for b, root in cases], axis=0)
    np.testing.assert_allclose(centernet_gaussian_radius(h, w, o), published, rtol=1e-12)
    np.testing.assert_allclose(published, [2.733, 4.478, 13.666, 15.860], atol=1e-3)
    assert (heatmap_radius(h, w, "centernet") == np.floor(published)).all()
    # CenterNet rounds a box's size up before its formula: a 3.2-cell square is measured as 4x4.
    assert int(heatmap_radius(3.2, 3.2, "centernet")) == int(centernet_gaussian_radius(4.0, 4.0)) == 1
    assert int(np.floor(centernet_gaussian_radius(3.2, 3.2))) == 0
    assert (heatmap_radius(h, w) == np.floor(gaussian_radius(h, w))).all()
    with pytest.raises(ValueError, match="heatmap radius rule"):
        heatmap_radius(h, w, "cornernet")
    cfg = _config(pose=False, seg_stride=None)
    car = cfg.detection.classes.index("car")  # type: ignore[union-attr]
    boxes, classes = np.array([[30.0, 10.0, 70.0, 50.0]]), np.array([car])  # 10x10 output cells
    corrected = build_targets(boxes, classes, None, None, (64, 96), cfg, max_objects=4)["heatmap"][car]
    wide = build_targets(boxes, classes, None, None, (64, 96), cfg, 4, 0, "centernet")["heatmap"][car]
    assert int((corrected > 0).sum()) == 1 and int((wide > 0).sum()) == 25  # radius 0 against 2


def test_draw_gaussians_vectorised_equals_per_object_loop() -> None:
    rng = np.random.default_rng(0)
    n, c, h, w = 30, 3, 20, 25
    ch, xs, ys = rng.integers(0, c, n), rng.integers(-2, w + 2, n), rng.integers(-2, h + 2, n)
    radii = rng.integers(0, 6, n)
    fast = np.zeros((c, h, w), np.float32)
    draw_gaussians(fast, ch, xs, ys, radii)
    slow = np.zeros((c, h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(n):
        sigma = (2 * radii[k] + 1) / 6
        g = np.exp(-((xx - xs[k]) ** 2 + (yy - ys[k]) ** 2) / (2 * sigma**2))
        g[(np.abs(xx - xs[k]) > radii[k]) | (np.abs(yy - ys[k]) > radii[k])] = 0
        slow[ch[k]] = np.maximum(slow[ch[k]], g)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-7)


def test_heatmap_peak_offset_size_and_index() -> None:
    cfg = _config(pose=False, seg_stride=None)
    car = cfg.detection.classes.index("car")  # type: ignore[union-attr]
    boxes = np.array([[30.0, 10.0, 70.0, 50.0]])  # centre (50, 30) input -> (12.5, 7.5) output
    t = build_targets(boxes, np.array([car]), None, None, (64, 96), cfg, max_objects=4)
    hm = t["heatmap"]
    assert hm.shape == (80, 16, 24)
    assert hm[car, 7, 12] == 1.0 and hm[car].max() == 1.0
    assert (hm[car] == 1.0).sum() == 1 and hm.sum() == hm[car].sum()
    radius = int(gaussian_radius(10.0, 10.0))
    assert radius == 0  # a 10x10 output box gets a single-cell peak with the correct formula
    assert t["indices"][0] == 7 * 24 + 12
    assert t["mask"].tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(t["offset"][0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(t["size"][0], torch.tensor([10.0, 10.0]))


def test_gaussian_spread_for_large_box_and_clipping() -> None:
    cfg = _config(detection="person", pose=False, seg_stride=None)
    # A large box partly outside the input: clipped to the map, centre of the clipped box.
    boxes = np.array([[-40.0, 0.0, 96.0, 64.0], [200.0, 0.0, 260.0, 10.0]])  # second: fully outside
    t = build_targets(boxes, np.array([0, 0]), None, None, (64, 96), cfg, max_objects=4)
    assert t["mask"].sum() == 1
    torch.testing.assert_close(t["size"][0], torch.tensor([24.0, 16.0]))
    cell = (12, 8)  # centre (12, 8) exactly -> cell (12, 8), offset 0
    assert t["heatmap"][0, cell[1], cell[0]] == 1.0
    r = int(gaussian_radius(16.0, 24.0))
    assert r >= 1
    sigma = (2 * r + 1) / 6
    assert float(t["heatmap"][0, cell[1], cell[0] + 1]) == pytest.approx(
        math.exp(-1 / (2 * sigma**2)), rel=1e-5
    )
    assert float(t["heatmap"][0, cell[1], cell[0] + r + 1]) == 0.0


def test_keypoint_targets_and_masks() -> None:
    cfg = _config(seg_stride=None)
    person, car = 0, cfg.detection.classes.index("car")  # type: ignore[union-attr]
    boxes = np.array([[8.0, 4.0, 40.0, 60.0], [50.0, 20.0, 90.0, 40.0]])
    kps = np.zeros((2, 17, 3), np.float32)
    kps[0, 0] = [21.0, 9.0, 2]  # nose -> output (5.25, 2.25)
    kps[0, 5] = [30.5, 30.0, 1]  # occluded but labelled: used
    kps[0, 6] = [30.0, 30.0, 0]  # unlabelled: masked
    kps[0, 7] = [120.0, 30.0, 2]  # outside the input: masked
    kps[1, 0] = [60.0, 30.0, 2]  # keypoints of a car row are ignored
    t = build_targets(boxes, np.array([person, car]), kps, None, (64, 96), cfg, max_objects=3)
    assert t["has_pose"] == 1.0
    centre_cell = np.array([6, 8])  # centre (24, 32) -> (6, 8)
    off = t["kp_offsets"][0].view(17, 2)
    torch.testing.assert_close(
        off[0], torch.tensor([5.25, 2.25]) - torch.tensor(centre_cell, dtype=torch.float32)
    )
    assert t["kp_mask"][0].nonzero().flatten().tolist() == [0, 5]
    assert t["kp_offsets_mask"][0].view(17, 2)[:, 0].nonzero().flatten().tolist() == [0, 5]
    assert t["kp_mask"][1].sum() == 0 and t["kp_mask"][2].sum() == 0
    assert t["kp_heatmap"][0, 2, 5] == 1.0 and t["kp_heatmap"][0].max() == 1.0
    assert t["kp_indices"][0, 0] == 2 * 24 + 5
    torch.testing.assert_close(t["kp_subpixel"][0, 0], torch.tensor([0.25, 0.25]))
    torch.testing.assert_close(t["kp_subpixel"][0, 5], torch.tensor([30.5 / 4 - 7, 30 / 4 - 7]))
    assert t["kp_heatmap"][6].sum() == 0 and t["kp_heatmap"][7].sum() == 0


def test_keypoint_min_radius_widens_keypoint_gaussians_only() -> None:
    cfg = _config(seg_stride=None)
    box = np.array([[8.0, 4.0, 24.0, 28.0]])  # 4 x 6 output cells: box radius 0
    kps = np.zeros((1, 17, 3), np.float32)
    kps[0, 0] = [17.0, 9.0, 2]  # nose -> cell (4, 2)
    assert int(gaussian_radius(6.0, 4.0)) == 0
    plain = build_targets(box, np.array([0]), kps, None, (64, 96), cfg, max_objects=2)
    wide = build_targets(box, np.array([0]), kps, None, (64, 96), cfg, max_objects=2, kp_min_radius=2)
    assert plain["kp_heatmap"][0, 2, 5] == 0.0  # radius 0: a lone positive cell
    sigma = 5 / 6
    assert wide["kp_heatmap"][0, 2, 4] == 1.0 and wide["kp_heatmap"][0].max() == 1.0
    assert float(wide["kp_heatmap"][0, 2, 5]) == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-5)
    assert float(wide["kp_heatmap"][0, 2, 6]) > 0.0 and float(wide["kp_heatmap"][0, 2, 7]) == 0.0
    torch.testing.assert_close(wide["heatmap"], plain["heatmap"])  # the box-centre heatmap is unchanged
    torch.testing.assert_close(wide["kp_subpixel"], plain["kp_subpixel"])


def test_no_pose_labels_give_has_pose_zero_and_empty_targets() -> None:
    cfg = _config(seg_stride=None)
    t = build_targets(np.array([[8.0, 4.0, 40.0, 60.0]]), np.array([0]), None, None, (64, 96), cfg, 2)
    assert t["has_pose"] == 0.0
    assert t["kp_mask"].sum() == 0 and t["kp_heatmap"].sum() == 0 and t["kp_offsets_mask"].sum() == 0
    assert t["mask"].sum() == 1  # detection targets unaffected


def test_max_objects_and_fixed_shapes() -> None:
    cfg = _config(detection="person", seg_stride=2)
    n = 7
    boxes = np.stack([np.arange(n) * 10.0, np.zeros(n), np.arange(n) * 10.0 + 8, np.full(n, 8.0)], 1)
    t = build_targets(boxes, np.zeros(n, np.int64), np.zeros((n, 17, 3)), None, (64, 96), cfg, max_objects=5)
    assert t["mask"].sum() == 5 and t["indices"].shape == (5,) and t["kp_offsets"].shape == (5, 34)
    assert t["segmentation"].shape == (32, 48) and (t["segmentation"] == 255).all()  # no map: all ignored
    empty = build_targets(
        np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros((0, 17, 3)), None, (64, 96), cfg, 5
    )
    assert {k: v.shape for k, v in empty.items()} == {k: v.shape for k, v in t.items()}


def test_segmentation_sampled_at_cell_centres() -> None:
    cfg = _config(pose=False, seg_stride=4)
    sem = np.zeros((64, 96), np.uint8)
    sem[0:3, :] = 1  # rows 0..2: cell row 0 samples pixel row 2 -> class 1
    sem[4:6, :] = 2  # rows 4..5: cell row 1 samples pixel row 6 -> background
    sem[62, 2] = 255
    t = build_targets(np.zeros((0, 4)), np.zeros(0, np.int64), None, sem, (64, 96), cfg, 1)
    seg = t["segmentation"]
    assert seg.dtype == torch.int64 and seg.shape == (16, 24)
    assert (seg[0] == 1).all() and (seg[1] == 0).all()
    assert seg[15, 0] == 255  # pixel (62, 2) -> cell (15, 0)


def test_crowd_regions_are_ignored_not_background() -> None:
    """A crowd box is no object; its class's cells (and for a crowd of people every joint's) that no object's
    Gaussian reaches are ignored, where they had been trained as background."""
    cfg = _config(seg_stride=None)
    person, car = 0, cfg.detection.classes.index("car")  # type: ignore[union-attr]
    boxes = np.array([[8.0, 4.0, 24.0, 20.0], [0.0, 24.0, 48.0, 64.0], [52.0, 0.0, 96.0, 32.0]])
    classes = np.array([person, person, car])
    crowd = np.array([False, True, True])
    kps = np.zeros((3, 17, 3), np.float32)
    kps[0, 0] = [16.0, 8.0, 2]
    t = build_targets(boxes, classes, kps, None, (64, 96), cfg, max_objects=4, crowd=crowd)
    plain = build_targets(boxes[:1], classes[:1], kps[:1], None, (64, 96), cfg, max_objects=4)
    assert int(t["mask"].sum()) == 1 and int(t["kp_mask"].sum()) == 1  # the one person; crowds are no objects
    for key in ("indices", "size", "offset", "kp_offsets", "kp_indices"):
        torch.testing.assert_close(t[key], plain[key])
    heat, ignored = t["heatmap"], t["heatmap"] == HEATMAP_IGNORE
    # The person crowd's cells (output rows 6-15, columns 0-11) in the person channel, the car crowd's (rows
    # 0-7, columns 13-23) in the car channel, nowhere else; not where the person's Gaussian reaches.
    expected = torch.zeros_like(ignored)
    expected[person, 6:16, 0:12] = True
    expected[car, 0:8, 13:24] = True
    expected &= plain["heatmap"] == 0
    assert torch.equal(ignored, expected) and ignored[person].any() and ignored[car].any()
    assert torch.equal(heat[~ignored], plain["heatmap"][~ignored])
    kp_ignored = t["kp_heatmap"] == HEATMAP_IGNORE
    assert torch.equal(kp_ignored, (plain["kp_heatmap"] == 0) & expected[person].expand(17, -1, -1))
    # Without pose labels nothing is drawn or ignored in the keypoint heatmaps.
    unlabelled = build_targets(boxes, classes, None, None, (64, 96), cfg, max_objects=4, crowd=crowd)
    assert unlabelled["kp_heatmap"].abs().sum() == 0
