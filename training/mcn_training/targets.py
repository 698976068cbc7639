"""CenterNet training targets (detection, multi-person pose) and the segmentation target, per image.

Conventions (the contract shared with :mod:`mcn_ros.model.decode`; the oracle test checks they agree):
coordinates are continuous (pixel ``i`` covers ``[i, i+1)``), output-map coordinates are input pixels / 4.
For a box with centre ``c`` (output coordinates) the centre cell is ``floor(c)``, ``offset = c - floor(c)``
and ``size = (w, h) / 4``. A keypoint ``k`` (output coordinates) has ``kp_offsets = k - centre cell``, a
keypoint-heatmap peak at ``floor(k)`` and ``kp_subpixel = k - floor(k)``.

Everything is numpy and vectorised over objects (this runs in DataLoader workers); the results are torch
tensors of fixed size so that ``default_collate`` batches them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mcn_ros.model.config import OUTPUT_STRIDE, ModelConfig
from mcn_ros.model.labels import IGNORE_INDEX, NUM_KEYPOINTS

#: Minimum IoU a box from a corner/centre within the radius keeps with the ground truth (CornerNet/CenterNet).
MIN_OVERLAP = 0.7


def gaussian_radius(height: Any, width: Any, min_overlap: float = MIN_OVERLAP) -> np.ndarray:
    """Largest deviation ``r`` (per box, same units as the sizes) keeping IoU >= ``min_overlap``.

    CornerNet/CenterNet bound the radius of a box's heatmap Gaussian by three cases, each a quadratic
    inequality in ``r`` (``w``, ``h`` the box size, ``o`` = min_overlap):

    1. corners moved the same way (the box shifted by ``r`` in x and y):
       ``(w-r)(h-r) / (2wh - (w-r)(h-r)) >= o``  <=>  ``r^2 - (w+h) r + wh (1-o)/(1+o) >= 0``;
    2. both corners moved inwards (box shrunk by ``r`` on every side):
       ``(w-2r)(h-2r) / wh >= o``  <=>  ``4 r^2 - 2(w+h) r + (1-o) wh >= 0``;
    3. both corners moved outwards (box grown by ``r`` on every side):
       ``wh / ((w+2r)(h+2r)) >= o``  <=>  ``4o r^2 + 2o(w+h) r - (1-o) wh <= 0``.

    Cases 1 and 2 hold for ``r`` up to the *smaller* root of their quadratic, case 3 up to its positive
    root; the radius is the minimum of the three.

    NOTE: CenterNet's published ``gaussian_radius`` (utils/image.py, inherited from CornerNet) is wrong,
    as its GitHub issues #116 and #273 explain: it takes the *larger* root ``(b + sqrt(...))`` in cases 1
    and 2 and divides by 2 instead of ``2a`` in cases 2 and 3, which gives radii several times too large
    (case 3 then decides: for a 10x10 box and o = 0.7 it returns 2.7 where the correct radius is 0.82).
    This is the corrected solution; ``test/test_targets.py`` checks it against a brute-force IoU search.
    """
    (a1, a2, a3), (b1, b2, b3), (q1, q2, q3) = _radius_quadratics(height, width, min_overlap)
    return np.maximum(
        np.minimum(np.minimum((b1 - q1) / (2 * a1), (b2 - q2) / (2 * a2)), (b3 + q3) / (2 * a3)), 0.0
    )


def _radius_quadratics(height: Any, width: Any, min_overlap: float) -> tuple[tuple[Any, ...], ...]:
    """The three cases' quadratics of :func:`gaussian_radius` as ``a r^2 - b r + c``: their ``a``, ``b`` and
    ``sqrt(b^2 - 4ac)`` (clamped at 0), each a tuple over the cases."""
    h = np.asarray(height, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    o = float(min_overlap)
    s, p = h + w, h * w
    discriminants = (
        s * s - 4 * p * (1 - o) / (1 + o),
        4 * s * s - 16 * (1 - o) * p,
        4 * o * o * s * s + 16 * o * (1 - o) * p,
    )
    roots = tuple(np.sqrt(np.maximum(d, 0.0)) for d in discriminants)
    return (1.0, 4.0, 4 * o), (s, 2 * s, -2 * o * s), roots


def centernet_gaussian_radius(height: Any, width: Any, min_overlap: float = MIN_OVERLAP) -> np.ndarray:
    """The radius CenterNet's published code computes, with which the paper's models were trained: the
    three quadratics of :func:`gaussian_radius` solved with the larger root in cases 1 and 2 and a
    denominator of 2 in all three (3.3x the corrected radius for a 10x10 box)."""
    _, (b1, b2, b3), (q1, q2, q3) = _radius_quadratics(height, width, min_overlap)
    return np.maximum(np.minimum(np.minimum((b1 + q1) / 2, (b2 + q2) / 2), (b3 + q3) / 2), 0.0)


#: How heatmap Gaussians are sized (``data.heatmap_radius``): "corrected" (:func:`gaussian_radius`) or
#: "centernet" (:func:`centernet_gaussian_radius`, CenterNet's published code, as the paper trained).
RADIUS_RULES = ("corrected", "centernet")


def heatmap_radius(height: Any, width: Any, rule: str = "corrected") -> np.ndarray:
    """Integer Gaussian radius of boxes of (height, width) in output-map pixels by ``rule`` (one of
    :data:`RADIUS_RULES`), floored as CenterNet does; "centernet" also rounds the box sizes up first, as
    CenterNet's code does."""
    if rule not in RADIUS_RULES:
        raise ValueError(f"heatmap radius rule must be one of {RADIUS_RULES}, got {rule!r}")
    if rule == "centernet":
        return np.floor(centernet_gaussian_radius(np.ceil(height), np.ceil(width))).astype(np.int64)
    return np.floor(gaussian_radius(height, width)).astype(np.int64)


def draw_gaussians(
    heatmap: np.ndarray, channels: np.ndarray, xs: np.ndarray, ys: np.ndarray, radii: np.ndarray
) -> None:
    """Draw peak-1 Gaussians into ``heatmap`` [C, h, w] in place (element-wise maximum with what is there).

    Object ``i`` gets ``exp(-(dx^2 + dy^2) / (2 sigma^2))`` with ``sigma = (2 r + 1) / 6`` on the square of
    radius ``r = radii[i]`` around cell (``xs[i]``, ``ys[i]``) of channel ``channels[i]`` (CenterNet's
    ``draw_umich_gaussian``), all objects at once.
    """
    if len(xs) == 0:
        return
    _, h, w = heatmap.shape
    radii = np.asarray(radii, np.int64)
    big = int(radii.max())
    d = np.arange(-big, big + 1)
    dy, dx = (a.ravel() for a in np.meshgrid(d, d, indexing="ij"))
    sigma = (2 * radii + 1) / 6.0
    values = np.exp(-(dx * dx + dy * dy)[None, :] / (2 * sigma[:, None] ** 2))
    x = np.asarray(xs, np.int64)[:, None] + dx[None, :]
    y = np.asarray(ys, np.int64)[:, None] + dy[None, :]
    r = radii[:, None]
    keep = (np.abs(dx)[None, :] <= r) & (np.abs(dy)[None, :] <= r) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    flat = (np.asarray(channels, np.int64)[:, None] * h + y) * w + x
    np.maximum.at(heatmap.reshape(-1), flat[keep], values[keep].astype(heatmap.dtype))


def _numpy(value: Any, dtype: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def downsample_semantic(semantic: Any, stride: int) -> np.ndarray:
    """Nearest sampling of an input-resolution class map at ``stride``: cell ``i`` <- pixel ``i*s + s//2``.

    The sampled pixel is the one under the cell centre ``(i + 0.5) * s``, the mapping decode inverts.
    """
    sem = _numpy(semantic, np.int64)
    return sem[stride // 2 :: stride, stride // 2 :: stride]


#: Heatmap target of a cell the focal loss leaves out (:func:`build_targets`' crowd regions).
HEATMAP_IGNORE = -1.0


def _ignore_regions(heatmap: np.ndarray, boxes: np.ndarray, channels: np.ndarray) -> None:
    """Mark the cells of ``boxes`` [K, 4] (output cells, clipped to the map) in ``channels`` [K, c] of
    ``heatmap`` [C, h, w] as :data:`HEATMAP_IGNORE` where no Gaussian reaches (an object inside a crowd region
    keeps its peak and its neighbourhood)."""
    for (x1, y1, x2, y2), chosen in zip(boxes, channels, strict=True):
        rows = slice(int(np.floor(y1)), int(np.ceil(y2)))
        cols = slice(int(np.floor(x1)), int(np.ceil(x2)))
        for channel in chosen:
            region = heatmap[channel, rows, cols]
            region[region == 0] = HEATMAP_IGNORE


def build_targets(
    boxes: Any,
    class_idx: Any,
    keypoints: Any | None,
    semantic: Any | None,
    input_hw: tuple[int, int],
    config: ModelConfig,
    max_objects: int = 128,
    kp_min_radius: int = 0,
    radius_rule: str = "corrected",
    crowd: Any | None = None,
) -> dict[str, Tensor]:
    """Targets of one image for the tasks of ``config``.

    ``boxes`` [N, 4] (x1, y1, x2, y2, input pixels), ``class_idx`` [N] indices into
    ``config.detection.classes``, ``keypoints`` [N, 17, 3] (x, y, v) input pixels (rows of non-person
    objects are ignored) or None when the image has no pose labels (``has_pose`` = 0), ``semantic`` [H, W]
    class ids (0 background, 1..C, 255 ignore) at input resolution, sampled at the cell centres, or already
    at the segmentation stride [H/s, W/s] (:func:`mcn_training.transforms.sample_semantic`, used as is), or
    None (all ignored).

    ``crowd`` [N] bool (None: none) marks the boxes that are crowd regions (COCO ``iscrowd``: many objects
    under one label): not objects; the cells of their class's heatmap (for persons also of every keypoint
    heatmap) that no object's Gaussian reaches hold :data:`HEATMAP_IGNORE`, which the focal loss leaves out
    (the people of a crowd are not background, as the segmentation target's ignore label says too).

    Objects whose box has no area inside the map are dropped; at most ``max_objects`` are kept (in order).
    Gaussians are sized by ``radius_rule`` (:func:`heatmap_radius`); keypoint Gaussians get their person's
    box radius, raised to at least ``kp_min_radius`` (output cells).
    Keys: detection ``heatmap`` [C, h, w], ``indices`` int64 [M], ``mask`` [M], ``size`` [M, 2], ``offset``
    [M, 2]; pose ``kp_offsets`` [M, 34], ``kp_offsets_mask`` [M, 34], ``kp_heatmap`` [17, h, w],
    ``kp_indices`` int64 [M, 17], ``kp_subpixel`` [M, 17, 2], ``kp_mask`` [M, 17], ``has_pose`` scalar;
    segmentation ``segmentation`` int64 [H/s, W/s].
    """
    H, W = int(input_hw[0]), int(input_hw[1])
    oh, ow = H // OUTPUT_STRIDE, W // OUTPUT_STRIDE
    M = int(max_objects)
    out: dict[str, Tensor] = {}

    if config.detection is not None:
        b = _numpy(boxes, np.float64).reshape(-1, 4) / OUTPUT_STRIDE
        cls = _numpy(class_idx, np.int64).reshape(-1)
        b = np.stack([b[:, 0].clip(0, ow), b[:, 1].clip(0, oh), b[:, 2].clip(0, ow), b[:, 3].clip(0, oh)], 1)
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        is_crowd = np.zeros(len(b), bool) if crowd is None else _numpy(crowd, np.bool_).reshape(-1)
        crowds = np.flatnonzero((bw > 0) & (bh > 0) & is_crowd)
        crowd_boxes, crowd_cls = b[crowds], cls[crowds]
        valid = np.flatnonzero((bw > 0) & (bh > 0) & ~is_crowd)[:M]
        n = len(valid)
        b, bw, bh, cls = b[valid], bw[valid], bh[valid], cls[valid]
        centre = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
        cell = np.floor(centre).astype(np.int64)
        cell[:, 0] = cell[:, 0].clip(0, ow - 1)
        cell[:, 1] = cell[:, 1].clip(0, oh - 1)
        radius = heatmap_radius(bh, bw, radius_rule)

        heatmap = np.zeros((config.detection.num_classes, oh, ow), np.float32)
        draw_gaussians(heatmap, cls, cell[:, 0], cell[:, 1], radius)
        _ignore_regions(heatmap, crowd_boxes, crowd_cls[:, None])
        indices = np.zeros(M, np.int64)
        mask = np.zeros(M, np.float32)
        size = np.zeros((M, 2), np.float32)
        offset = np.zeros((M, 2), np.float32)
        indices[:n] = cell[:, 1] * ow + cell[:, 0]
        mask[:n] = 1.0
        size[:n, 0], size[:n, 1] = bw, bh
        offset[:n] = centre - cell
        out.update(
            heatmap=torch.from_numpy(heatmap),
            indices=torch.from_numpy(indices),
            mask=torch.from_numpy(mask),
            size=torch.from_numpy(size),
            offset=torch.from_numpy(offset),
        )

        if config.pose is not None:
            J = NUM_KEYPOINTS
            kp_offsets = np.zeros((M, J, 2), np.float32)
            kp_offsets_mask = np.zeros((M, J, 2), np.float32)
            kp_heatmap = np.zeros((J, oh, ow), np.float32)
            kp_indices = np.zeros((M, J), np.int64)
            kp_subpixel = np.zeros((M, J, 2), np.float32)
            kp_mask = np.zeros((M, J), np.float32)
            has_pose = keypoints is not None
            if has_pose and n:
                kps = _numpy(keypoints, np.float64).reshape(-1, J, 3)[valid]
                k = kps[..., :2] / OUTPUT_STRIDE  # [n, J, 2]
                is_person = (cls == config.person_index)[:, None]
                labelled = (
                    is_person & (kps[..., 2] > 0) & (k[..., 0] >= 0) & (k[..., 0] < ow) & (k[..., 1] >= 0)
                )
                labelled &= k[..., 1] < oh
                k_cell = np.floor(np.where(labelled[..., None], k, 0.0)).astype(np.int64)
                kp_offsets[:n] = np.where(labelled[..., None], k - cell[:, None, :], 0.0)
                kp_offsets_mask[:n] = labelled[..., None]
                kp_indices[:n] = np.where(labelled, k_cell[..., 1] * ow + k_cell[..., 0], 0)
                kp_subpixel[:n] = np.where(labelled[..., None], k - k_cell, 0.0)
                kp_mask[:n] = labelled
                obj, joint = np.nonzero(labelled)
                # CenterNet multi_pose: every keypoint Gaussian gets its person's box radius. The corrected
                # radius is 0-1 cell for most people at small inputs (a lone positive cell among full-penalty
                # neighbours), so a floor can soften the neighbours while the peak stays where it was.
                kp_radius = np.maximum(radius[obj], int(kp_min_radius))
                draw_gaussians(kp_heatmap, joint, k_cell[obj, joint, 0], k_cell[obj, joint, 1], kp_radius)
            if has_pose:  # a crowd of people: their joints are neither labelled nor absent
                people = crowd_cls == config.person_index
                _ignore_regions(
                    kp_heatmap, crowd_boxes[people], np.arange(J)[None, :].repeat(people.sum(), 0)
                )
            out.update(
                kp_offsets=torch.from_numpy(kp_offsets.reshape(M, 2 * J)),
                kp_offsets_mask=torch.from_numpy(kp_offsets_mask.reshape(M, 2 * J)),
                kp_heatmap=torch.from_numpy(kp_heatmap),
                kp_indices=torch.from_numpy(kp_indices),
                kp_subpixel=torch.from_numpy(kp_subpixel),
                kp_mask=torch.from_numpy(kp_mask),
                has_pose=torch.tensor(1.0 if has_pose else 0.0),
            )

    if config.segmentation is not None:
        s = config.segmentation.output_stride
        if semantic is None:
            seg = np.full((H // s, W // s), IGNORE_INDEX, np.int64)
        else:
            seg = _numpy(semantic, np.int64)
            if seg.shape == (H, W) and s > 1:
                seg = downsample_semantic(seg, s)
            if seg.shape != (H // s, W // s):
                raise ValueError(f"semantic map {seg.shape} is neither {H}x{W} nor {H // s}x{W // s}")
        out["segmentation"] = torch.from_numpy(np.ascontiguousarray(seg))
    return out
