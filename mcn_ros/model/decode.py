"""Decode raw head outputs into :class:`~mcn_ros.model.results.Results` (batched torch, then numpy).

Conventions (shared with the training targets): output-map coordinates are input pixels / 4, continuous,
pixel i covering [i, i + 1). A detection at centre cell (x, y) has centre (x, y) + ``offset`` and size
``size`` (w, h); its box is centre -/+ size / 2. A person's keypoint j is regressed at the centre *cell* +
``kp_offsets``[2j:2j+2]; it is snapped to the nearest keypoint-heatmap peak (peak cell + ``kp_subpixel``)
when that peak scores at least ``kp_snap_score``, lies inside the person box and is closer than
``kp_snap_distance`` x the longer box side (CenterNet's multi-pose decoding). A keypoint's score is the
snapped peak's score, else the keypoint heatmap at the regressed location.

All maths runs batched on the outputs' device (:func:`decode_to_tensors`); there are no Python loops over
detections or pixels (only over the images of the batch, for the segmentation resampling and the final
split), and the results cross to the CPU in one packed transfer, plus one for segmentation maps
(:func:`unpack_results`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mcn_ros.model.config import OUTPUT_STRIDE, DecodeConfig, ModelConfig
from mcn_ros.model.labels import NUM_KEYPOINTS
from mcn_ros.model.mcn import resolve_tasks
from mcn_ros.model.preprocess import (
    Letterbox,
    letterboxes_to_tensor,
    nearest_cells,
    points_to_original,
    sample_grid,
    segmentation_logits_to_original,
)
from mcn_ros.model.results import Detections, Poses, Results

#: Ways to bring segmentation logits back to original pixels (:attr:`DecodeOptions.segmentation_resampling`).
SEGMENTATION_RESAMPLING: tuple[str, ...] = ("nearest", "bilinear")


@dataclass(frozen=True)
class DecodeOptions:
    """Decoding thresholds and limits (defaults as CenterNet / :class:`DecodeConfig`)."""

    #: Minimum detection score (sigmoid of the heatmap) of a reported box.
    score_threshold: float = 0.3
    #: Minimum person score of a reported pose.
    pose_score_threshold: float = 0.3
    #: At most this many boxes (and, separately, poses) per image.
    max_detections: int = 100
    #: Peaks taken from each heatmap before thresholds.
    top_k: int = 100
    #: Keypoint-heatmap peaks per joint that a regressed keypoint may snap to (the config's ``top_k``; not
    #: raised with ``max_detections``, so decoding memory grows linearly, not quadratically, with it).
    keypoint_candidates: int = 100
    #: Max-pool kernel of the local-maximum test.
    pool_kernel: int = 3
    #: Keypoint-heatmap peaks below this score are not used for snapping.
    kp_snap_score: float = 0.1
    #: Snapping radius as a fraction of the longer person-box side.
    kp_snap_distance: float = 0.3
    #: How the segmentation logits reach the original pixels: "nearest" (the class of the map cell a pixel
    #: falls in) or "bilinear" (argmax of the logits interpolated between the four nearest cells; smoother
    #: class boundaries, more time on boundary pixels).
    segmentation_resampling: str = "nearest"

    def __post_init__(self) -> None:
        if self.segmentation_resampling not in SEGMENTATION_RESAMPLING:
            raise ValueError(
                f"segmentation_resampling must be one of {SEGMENTATION_RESAMPLING}, "
                f"got {self.segmentation_resampling!r}"
            )

    @classmethod
    def from_config(cls, decode: DecodeConfig, **overrides: Any) -> DecodeOptions:
        """Options with a model config's decode settings, then ``overrides`` (None values are ignored).

        ``top_k`` is raised to ``max_detections`` when that is larger, so that as many boxes can be returned.
        """
        values: dict[str, Any] = dataclasses.asdict(decode)
        values.update({k: v for k, v in overrides.items() if v is not None})
        values.setdefault("keypoint_candidates", values["top_k"])
        values["top_k"] = max(values["top_k"], values.get("max_detections", cls.max_detections))
        return cls(**values)


def neighbourhood_max(heat: Tensor, kernel: int) -> Tensor:
    """The maximum of each value's ``kernel``-square neighbourhood inside the map [..., H, W] (odd
    ``kernel``): ``F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)``, as running maxima along the
    rows, then along the columns.

    On the CPU max_pool2d also writes the index of every maximum and has no fast path for few channels:
    measured on 2 cores, with the comparison of :func:`local_peaks`, 1 x 96 x 128 (the person map at the 512
    input) 385 -> 64 us, 17 x 96 x 128 (keypoints) 750 -> 380 us, 80 x 96 x 128 about even, in either layout.
    """
    r = kernel // 2
    h, w = heat.shape[-2:]
    padded = F.pad(heat, (r, r, r, r), value=float("-inf"))
    rows = padded[..., 0:w]
    for shift in range(1, kernel):
        rows = torch.maximum(rows, padded[..., shift : shift + w])
    out = rows[..., 0:h, :]
    for shift in range(1, kernel):
        out = torch.maximum(out, rows[..., shift : shift + h, :])
    return out


def local_peaks(heat: Tensor, kernel: int = 3) -> Tensor:
    """Keep heatmap values that are the maximum of their ``kernel``-square neighbourhood, zero the rest."""
    if kernel <= 1:
        return heat
    return heat * (neighbourhood_max(heat, kernel) == heat)


def topk_peaks(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Top ``k`` over all channels and positions of [B, C, H, W].

    Returns scores [B, K] (descending), flat indices ``y * W + x`` [B, K], channels [B, K], ys, xs [B, K]
    (int64 cells), with K = min(k, C*H*W).
    """
    b, c, h, w = scores.shape
    k = min(k, c * h * w)
    top, index = scores.reshape(b, -1).topk(k, dim=1)
    channels = torch.div(index, h * w, rounding_mode="floor")
    flat = index - channels * (h * w)
    ys = torch.div(flat, w, rounding_mode="floor")
    xs = flat - ys * w
    return top, flat, channels, ys, xs


class Peaks(NamedTuple):
    """Heatmap peaks per group, best first: each field [B, G, K] (G = 1, or one group per channel).

    Slots past a group's last peak hold score -1 at cell (0, 0) of channel 0.
    """

    scores: Tensor
    flat: Tensor
    channels: Tensor
    ys: Tensor
    xs: Tensor


#: Maps of at most this many values (C*H*W per image) are max-pooled whole, then thresholded: at such sizes
#: one pooling pass costs less than examining each passing cell's neighbourhood.
POOLED_MAX_VALUES = 1 << 13
#: The sparse peak search runs while at most this fraction of an image's cells has a channel passing the
#: threshold, and ...
SPARSE_CELL_FRACTION = 0.5
#: ... at most this fraction of all (cell, channel) values passes it.
SPARSE_VALUE_FRACTION = 0.125
#: Beyond those fractions, maps of at most this many values are max-pooled and thresholded; larger ones are
#: max-pooled and searched with a top-k, whose cost does not grow with the number of peaks.
POOLED_FALLBACK_MAX_VALUES = 1 << 18
#: Devices on which every peak search is the top-k over the max-pooled map (and keypoints snap to peak
#: lists): on a GPU the candidate listing's data-dependent sizes cost a host synchronisation each (nonzero),
#: and its many small kernels cost more than one top-k of the whole map (bench/results/gpu_overheads.json).
TOPK_SEARCH_DEVICES: frozenset[str] = frozenset({"cuda"})


class Candidates(NamedTuple):
    """Local maxima passing the threshold, in no particular order: each field [N]."""

    scores: Tensor
    images: Tensor
    channels: Tensor
    ys: Tensor
    xs: Tensor


def find_peaks(logits: Tensor, k: int, threshold: float, kernel: int, per_channel: bool = False) -> Peaks:
    """Local maxima of ``sigmoid(logits)`` [B, C, H, W] scoring at least ``threshold``, the best ``k`` of each
    image (``per_channel``: of each channel).

    The same peaks as :func:`local_peaks` then :func:`topk_peaks` on the probabilities, minus those below
    ``threshold``: all the local maxima passing the threshold (:func:`find_candidates`), then the best of
    each group; where those are not searched for, a top-k over the max-pooled map. Every path keeps as many
    slots as the fullest group has peaks (at least one) except the top-k, which keeps ``k``; empty slots
    score -1.
    """
    found = find_candidates(logits, threshold, kernel)
    return peaks_of_candidates(found, logits, k, threshold, kernel, per_channel)


def find_candidates(logits: Tensor, threshold: float, kernel: int) -> Candidates | None:
    """Every local maximum of ``sigmoid(logits)`` [B, C, H, W] scoring at least ``threshold``, in no order;
    None where a top-k serves better (a threshold outside (0, 1), a map on one of
    :data:`TOPK_SEARCH_DEVICES`, or a threshold so low on a large map that most of it passes).

    Small maps (:data:`POOLED_MAX_VALUES`) are max-pooled and thresholded; on larger ones one max over the
    channels finds the cells where any channel passes, and only those (their ``kernel``-square
    neighbourhoods) are examined. A threshold so low that many cells pass (:data:`SPARSE_CELL_FRACTION`,
    :data:`SPARSE_VALUE_FRACTION`) falls back to max-pooling the map and thresholding it
    (:data:`POOLED_FALLBACK_MAX_VALUES`), or to None.
    """
    b, c, h, w = logits.shape
    if not 0.0 < threshold < 1.0 or logits.device.type in TOPK_SEARCH_DEVICES:
        return None
    if c * h * w <= POOLED_MAX_VALUES:
        return _pooled_candidates(logits, threshold, kernel)
    cutoff = math.log(threshold / (1.0 - threshold)) - 1e-3  # a margin for rounding; tested exactly later
    cells = (logits.amax(dim=1) >= cutoff).nonzero()  # [M, 3] (b, y, x) where some channel passes
    if cells.shape[0] <= SPARSE_CELL_FRACTION * b * h * w:
        bi, yi, xi = cells.unbind(1)
        passing = (logits[bi, :, yi, xi] >= cutoff).nonzero()  # [N, 2] (cell, channel)
        if passing.shape[0] <= SPARSE_VALUE_FRACTION * b * c * h * w:
            cell, ci = passing.unbind(1)
            return _sparse_candidates(logits, (bi[cell], ci, yi[cell], xi[cell]), threshold, kernel)
    if c * h * w <= POOLED_FALLBACK_MAX_VALUES:
        return _pooled_candidates(logits, threshold, kernel)
    return None


def peaks_of_candidates(
    found: Candidates | None,
    logits: Tensor,
    k: int,
    threshold: float,
    kernel: int,
    per_channel: bool = False,
) -> Peaks:
    """:func:`find_peaks` from :func:`find_candidates`' answer for ``logits``: the best ``k`` candidates of
    each group, or the top-k search of the map where there are none (``found`` None)."""
    b, c, _, w = logits.shape
    if found is None:
        return _dense_peaks(logits.sigmoid(), k, threshold, kernel, per_channel)
    return _best_per_group(found, k, b, c if per_channel else 1, w)


def channel_candidates(found: Candidates, channel: int, threshold: float) -> Candidates:
    """Of ``found``, those of ``channel`` scoring at least ``threshold``, as the candidates of that channel
    alone ([B, 1, H, W], channel 0): the same as searching the channel's map when ``found`` was searched
    with a threshold at most ``threshold`` (the local-maximum test is within a channel)."""
    keep = ((found.channels == channel) & (found.scores >= threshold)).nonzero().squeeze(1)
    scores, images, _, ys, xs = (v.index_select(0, keep) for v in found)
    return Candidates(scores, images, torch.zeros_like(ys), ys, xs)


def _dense_peaks(heat: Tensor, k: int, threshold: float, kernel: int, per_channel: bool) -> Peaks:
    b, c, h, w = heat.shape
    heat = local_peaks(heat, kernel)
    groups = c if per_channel else 1
    k = min(k, heat[0].numel() // groups)
    scores, index = heat.reshape(b, groups, -1).topk(k, dim=2)
    if per_channel:
        channels = torch.arange(c, device=heat.device).view(1, c, 1).expand(b, c, k)
        flat = index
    else:
        channels = torch.div(index, h * w, rounding_mode="floor")
        flat = index - channels * (h * w)
    scores = scores.masked_fill(scores < threshold, -1.0) if threshold > 0 else scores
    ys = torch.div(flat, w, rounding_mode="floor")
    return Peaks(scores, flat, channels, ys, flat - ys * w)


def _pooled_candidates(logits: Tensor, threshold: float, kernel: int) -> Candidates:
    """:func:`find_peaks`' candidates on a small map: the whole map max-pooled, the peaks thresholded."""
    heat = local_peaks(logits.sigmoid(), kernel)
    where = (heat >= threshold).nonzero()  # [N, 4] (b, c, y, x); local_peaks zeroed the non-maxima
    bi, ci, yi, xi = where.unbind(1)
    return Candidates(heat[bi, ci, yi, xi], bi, ci, yi, xi)


def _sparse_candidates(
    logits: Tensor, candidates: tuple[Tensor, Tensor, Tensor, Tensor], threshold: float, kernel: int
) -> Candidates:
    """Of ``candidates`` (b, c, y, x) [N] each, those that are local maxima scoring at least ``threshold``
    (exact tests on their neighbourhoods)."""
    _, _, h, w = logits.shape
    bi, ci, yi, xi = candidates
    r = kernel // 2
    image_stride, channel_stride, row_stride, column_stride = logits.stride()
    steps = torch.arange(-r, r + 1, device=logits.device)
    # A neighbour outside the map is clamped to the border cell between it and the centre, which is inside
    # the window too: the window's maximum is unchanged, so no mask is needed.
    rows = (yi[:, None] + steps).clamp_(0, h - 1).mul_(row_stride)  # [N, kernel]
    columns = (xi[:, None] + steps).clamp_(0, w - 1).mul_(column_stride)
    start = bi * image_stride + ci * channel_stride
    positions = (start[:, None, None] + rows[:, :, None] + columns[:, None, :]).view(-1, kernel * kernel)
    # One gather by storage position (a view of the map's own storage): several times cheaper than indexing
    # with four index tensors. The centre is at kernel^2 // 2.
    extent = 1 + sum((size - 1) * stride for size, stride in zip(logits.shape, logits.stride(), strict=True))
    window = logits.as_strided((extent,), (1,))[positions].sigmoid_()
    score = window[:, (kernel * kernel) // 2]
    keep = ((score >= window.amax(dim=1)) & (score >= threshold)).nonzero().squeeze(1)
    return Candidates(*(v.index_select(0, keep) for v in (score, bi, ci, yi, xi)))


def _best_per_group(found: Candidates, k: int, b: int, groups: int, w: int) -> Peaks:
    """The best ``k`` of ``found`` in each of the ``b`` x ``groups`` groups (per image, or per image and
    channel when ``groups`` > 1), as :class:`Peaks` with as many slots as the fullest group (at least 1)."""
    score, bi, ci, yi, xi = found
    device = score.device
    if b * groups == 1:  # one image, one group (the common case): a sort
        order = score.argsort(descending=True, stable=True)[:k]
        if order.shape[0] == 0:
            none = torch.zeros((1, 1, 1), dtype=torch.long, device=device)
            return Peaks(
                torch.full((1, 1, 1), -1.0, device=device, dtype=score.dtype), none, none, none, none
            )
        fields = [v[order].view(1, 1, -1) for v in (score, ci, yi, xi)]
        return Peaks(fields[0], fields[2] * w + fields[3], fields[1], fields[2], fields[3])
    group = bi * groups + ci if groups > 1 else bi
    # Best first within each group: sort by score, then (stable) by group; rank = place within the group.
    order = score.argsort(descending=True, stable=True)
    order = order[group[order].argsort(stable=True)]
    group = group[order]
    counts = torch.bincount(group, minlength=b * groups)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(group.shape[0], device=device) - starts[group]
    slots = max(1, min(k, int(counts.max())))
    taken = (rank < slots).nonzero().squeeze(1)
    take, rows, cols = order[taken], group[taken], rank[taken]
    out_scores = torch.full((b * groups, slots), -1.0, device=device, dtype=score.dtype)
    out_scores[rows, cols] = score[take]
    fields = []
    for values in (ci, yi, xi):
        field = torch.zeros((b * groups, slots), device=device, dtype=torch.long)
        field[rows, cols] = values[take]
        fields.append(field.view(b, groups, slots))
    channels, ys, xs = fields
    return Peaks(out_scores.view(b, groups, slots), ys * w + xs, channels, ys, xs)


def gather_cells(feature: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Values of ``feature`` [B, C, H, W] at cells (``ys``, ``xs``) [B, ...] (int64) -> [B, ..., C].

    Indexes the cells directly, so a channels_last feature map is not copied to contiguous first.
    """
    rows = torch.arange(feature.shape[0], device=feature.device).view((-1,) + (1,) * (ys.ndim - 1))
    return feature[rows, :, ys, xs]


def gather_at(feature: Tensor, flat: Tensor) -> Tensor:
    """Values of ``feature`` [B, C, H, W] at flat positions ``y * W + x`` [B, K] -> [B, K, C]."""
    ys = torch.div(flat, feature.shape[3], rounding_mode="floor")
    return gather_cells(feature, ys, flat - ys * feature.shape[3])


def _boxes_at(size: Tensor, offset: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Boxes [B, K, 4] (x1, y1, x2, y2, output-map coordinates) of centre cells (xs, ys) [B, K].

    Negative predicted sizes (possible early in training) are clamped to 0.
    """
    centre = torch.stack((xs, ys), dim=-1).float() + gather_cells(offset, ys, xs).float()
    half = gather_cells(size, ys, xs).float().clamp_(min=0).mul_(0.5)
    return torch.cat((centre - half, centre + half), dim=-1)


#: Keypoint snapping measures each person's keypoints against every cell of the keypoint heatmaps (no
#: per-joint peak list) while persons x joints x cells is at most this many values: on small maps pooling
#: the whole map and measuring the distances to every cell costs less than building the peak lists. Measured
#: on 2 cores with the demo weights on 60 held-out scenes (snapping alone, 1.6-2.1 persons per image), cell
#: search against peak lists: 0.62x the time at the 128 input (17 x 24 x 32 = 13k values per person), 0.91x
#: at 192 and at 256 (52k), 1.16x at 320 (87k); on sparse random maps at 17 x 24 x 32 it won or was even up
#: to 8 persons (104k values) and took 1.1-1.5x the time from 10 (131k): the limit sits between the two.
DENSE_SNAP_MAX_VALUES = 120_000


def decode_keypoints(
    boxes: Tensor,
    regressed: Tensor,
    kp_logits: Tensor,
    kp_subpixel: Tensor,
    options: DecodeOptions,
) -> tuple[Tensor, Tensor]:
    """Snap regressed keypoints to keypoint-heatmap peaks (CenterNet multi-pose), all in output-map coords.

    ``boxes`` [B, K, 4] person boxes; ``regressed`` [B, K, J, 2] keypoints from the centre;
    ``kp_logits`` [B, J, H, W] keypoint heatmap logits; ``kp_subpixel`` [B, 2, H, W].
    Returns keypoints [B, K, J, 2] and scores [B, K, J]. Each keypoint considers its joint's best
    ``options.keypoint_candidates`` peaks scoring at least ``kp_snap_score``; small maps
    (:data:`DENSE_SNAP_MAX_VALUES`) are searched cell by cell, with the same result whenever no joint has
    more peaks than that (equally near peaks aside, where either may be chosen); not on
    :data:`TOPK_SEARCH_DEVICES`, where checking that would synchronize with the host.
    """
    b, j, h, w = kp_logits.shape
    nearest = None
    small = regressed.shape[1] * j * h * w <= DENSE_SNAP_MAX_VALUES
    if small and 0.0 < options.kp_snap_score < 1.0 and kp_logits.device.type not in TOPK_SEARCH_DEVICES:
        nearest = _nearest_peak_cells(regressed, kp_logits, kp_subpixel, options)
    if nearest is None:
        nearest = _nearest_listed_peaks(regressed, kp_logits, kp_subpixel, options)
    min_dist_sq, snapped, snapped_score = nearest
    low, high = boxes[..., None, :2], boxes[..., None, 2:]  # [B, K, 1, 2]
    inside = ((snapped >= low) & (snapped <= high)).all(dim=-1)
    radius = options.kp_snap_distance * (high - low).amax(dim=-1)  # [B, K, 1]: the longer box side
    use = torch.isfinite(min_dist_sq) & inside & (min_dist_sq <= radius * radius)
    # Score of a keypoint that stays where it was regressed: the heatmap at its cell (clamped to the map).
    rows = torch.arange(b, device=kp_logits.device).view(b, 1, 1)
    joints = torch.arange(j, device=kp_logits.device).view(1, 1, j)
    rx = regressed[..., 0].floor().clamp(0, w - 1).long()
    ry = regressed[..., 1].floor().clamp(0, h - 1).long()
    reg_score = kp_logits[rows, joints, ry, rx].float().sigmoid()  # [B, K, J]
    keypoints = torch.where(use.unsqueeze(-1), snapped, regressed)
    scores = torch.where(use, snapped_score, reg_score.to(snapped_score.dtype))
    return keypoints, scores


def _squared_distances(regressed: Tensor, points: Tensor) -> Tensor:
    """Squared distances of ``regressed`` [B, K, J, 2] to ``points`` [B, J or 1, P, 2] -> [B, K, J, P], built
    in place from the x and y differences (no [B, K, J, P, 2] temporary, no square root)."""
    dist_sq = regressed[..., 0].unsqueeze(3) - points[..., 0].unsqueeze(1)
    dist_sq.mul_(dist_sq)
    dy = regressed[..., 1].unsqueeze(3) - points[..., 1].unsqueeze(1)
    return dist_sq.addcmul_(dy, dy)


def _nearest_listed_peaks(
    regressed: Tensor, kp_logits: Tensor, kp_subpixel: Tensor, options: DecodeOptions
) -> tuple[Tensor, Tensor, Tensor]:
    """Squared distance [B, K, J] (inf: no peak), position [B, K, J, 2] and score [B, K, J] of each keypoint's
    nearest peak among its joint's best ``keypoint_candidates`` scoring at least ``kp_snap_score``."""
    b, j, _, _ = kp_logits.shape
    peaks = find_peaks(
        kp_logits, options.keypoint_candidates, options.kp_snap_score, options.pool_kernel, per_channel=True
    )  # [B, J, Kp]
    cand_score = peaks.scores
    cand = (
        torch.stack((peaks.xs, peaks.ys), dim=-1).float()
        + gather_cells(kp_subpixel, peaks.ys, peaks.xs).float()
    )
    dist_sq = _squared_distances(regressed, cand)
    dist_sq.masked_fill_((cand_score < options.kp_snap_score).unsqueeze(1), float("inf"))
    min_dist_sq, nearest = dist_sq.min(dim=3)  # [B, K, J]
    rows = torch.arange(b, device=kp_logits.device).view(b, 1, 1)
    joints = torch.arange(j, device=kp_logits.device).view(1, 1, j)
    return min_dist_sq, cand[rows, joints, nearest], cand_score[rows, joints, nearest]


def _nearest_peak_cells(
    regressed: Tensor, kp_logits: Tensor, kp_subpixel: Tensor, options: DecodeOptions
) -> tuple[Tensor, Tensor, Tensor] | None:
    """As :func:`_nearest_listed_peaks`, measured against every cell (non-peaks at infinite distance); None
    when some joint has more than ``keypoint_candidates`` peaks (the list then differs: the caller uses it).
    """
    b, j, h, w = kp_logits.shape
    heat = local_peaks(kp_logits.sigmoid(), options.pool_kernel).reshape(b, j, h * w)
    valid = heat >= options.kp_snap_score  # local_peaks zeroed the non-maxima; the threshold is > 0
    if int(valid.sum(dim=2).max()) > options.keypoint_candidates:
        return None
    cells = torch.arange(h * w, device=kp_logits.device)
    ys = torch.div(cells, w, rounding_mode="floor")
    grid = torch.stack((cells - ys * w, ys)).float()  # [2, H*W]: x, y of each cell
    points = (grid + kp_subpixel.float().reshape(b, 2, h * w)).transpose(1, 2)  # [B, H*W, 2]
    dist_sq = _squared_distances(regressed, points.unsqueeze(1))
    dist_sq.masked_fill_(~valid.unsqueeze(1), float("inf"))
    min_dist_sq, nearest = dist_sq.min(dim=3)  # [B, K, J] cell indices
    rows = torch.arange(b, device=kp_logits.device).view(b, 1, 1)
    joints = torch.arange(j, device=kp_logits.device).view(1, 1, j)
    return min_dist_sq, points[rows, nearest], heat[rows, joints, nearest]


def channel_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(dim=1)`` of [B, C, H, W] (the first maximum on ties), [B, H, W].

    On the CPU, ``max(dim=1)``'s indices: for a contiguous (NCHW) tensor, ONNX Runtime's outputs, torch's
    argmax over the channels is about 1.7x slower (81 x 96 x 128 on 2 cores: 3.0 against 1.8 ms; a running
    maximum over the channel planes took 3.6 ms), and for a channels_last one they cost the same.
    """
    if logits.device.type != "cpu" or logits.shape[1] == 1:
        return logits.argmax(dim=1)
    return logits.max(dim=1).indices


@functools.lru_cache(maxsize=32)
def _mapping_tensors(
    letterboxes: tuple[Letterbox, ...], image_sizes: tuple[tuple[int, int], ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Letterboxes [B, 4] and box clipping limits [B, 1, 4] ((w, h, w, h) of each image), float32.

    Cached: a camera stream repeats them frame after frame, so a frame needs no host-to-device copy for them.
    The tensors are shared between calls, never modified, and made outside inference mode (usable in and out).
    """
    with torch.inference_mode(False):
        limits = torch.tensor([(w, h, w, h) for h, w in image_sizes], dtype=torch.float32, device=device)
        return letterboxes_to_tensor(letterboxes, device), limits.view(-1, 1, 4)


class DecodedTensors(NamedTuple):
    """A batch's decoded results still on the outputs' device (:func:`decode_to_tensors`), in two tensors so
    that they reach the host in two copies (:func:`unpack_results`)."""

    #: [B, N] float32: each field of each task side by side, at the columns ``columns`` names.
    numbers: Tensor
    #: (field, first column, end column) of each field in ``numbers``.
    columns: tuple[tuple[str, int, int], ...]
    #: The images' class maps at their original sizes, flattened and one after another (uint8, or int32 past
    #: 256 classes); None without segmentation.
    segmentation: Tensor | None
    #: The cached constants the decoding read (letterbox mapping, segmentation sampling cells): a CUDA graph
    #: that replays the decoding keeps them alive by holding its outputs (the caches may drop and free them).
    constants: tuple[Tensor, ...] = ()


@torch.inference_mode()
def decode_batch(
    outputs: Mapping[str, Tensor],
    letterboxes: Sequence[Letterbox],
    image_sizes: Sequence[tuple[int, int]],
    config: ModelConfig,
    tasks: Collection[str] | None,
    options: DecodeOptions,
) -> list[Results]:
    """Decode a batch of raw outputs (heatmaps as logits) into one :class:`Results` per image.

    ``letterboxes`` and ``image_sizes`` ((h, w) of each original image) map back to original pixels; only
    ``tasks`` (None = all configured) are decoded, and each needs its outputs present. Runs in inference
    mode: no autograd bookkeeping on the many small tensors. :func:`decode_to_tensors`, then
    :func:`unpack_results`.
    """
    asked = resolve_tasks(config, tasks)
    decoded = decode_to_tensors(outputs, letterboxes, image_sizes, config, asked, options)
    return unpack_results(decoded, image_sizes, asked)


@torch.inference_mode()
def decode_to_tensors(
    outputs: Mapping[str, Tensor],
    letterboxes: Sequence[Letterbox],
    image_sizes: Sequence[tuple[int, int]],
    config: ModelConfig,
    tasks: Collection[str] | None,
    options: DecodeOptions,
) -> DecodedTensors:
    """:func:`decode_batch`'s work on the outputs' device: every result in original pixels, packed.

    On a device of :data:`TOPK_SEARCH_DEVICES`, with ``segmentation_resampling`` "nearest", no step
    depends on the values (every shape follows from the inputs' shapes and the options, nothing waits for
    the device), so the whole call can be captured in a CUDA graph with the forward.
    """
    asked = resolve_tasks(config, tasks)
    batch = len(letterboxes)
    if len(image_sizes) != batch:
        raise ValueError(f"{batch} letterboxes but {len(image_sizes)} image sizes")
    needed = {"detection": ("heatmap", "size", "offset"), "pose": ("heatmap", "size", "offset", "kp_offsets",
              "kp_heatmap", "kp_subpixel"), "segmentation": ("segmentation",)}  # fmt: skip
    for task in asked:
        for key in needed[task]:
            if key not in outputs:
                raise KeyError(f"decoding {task} needs output {key!r}, which is missing")
    device = next(iter(outputs.values())).device
    sizes = tuple((int(h), int(w)) for h, w in image_sizes)
    letterbox_boxes, box_limits = _mapping_tensors(tuple(letterboxes), sizes, device)
    constants = [letterbox_boxes, box_limits]
    packed: dict[str, Tensor] = {}  # name -> [B, ...], packed as float32

    if asked & {"detection", "pose"}:
        size, offset = outputs["size"], outputs["offset"]
    detected: Candidates | None = None  # the heatmap's local maxima passing the detection threshold
    if "detection" in asked:
        detected = find_candidates(outputs["heatmap"], options.score_threshold, options.pool_kernel)
        peaks = peaks_of_candidates(
            detected, outputs["heatmap"], options.top_k, options.score_threshold, options.pool_kernel
        )
        scores = peaks.scores[:, 0]
        boxes = _boxes_at(size, offset, peaks.xs[:, 0], peaks.ys[:, 0]) * OUTPUT_STRIDE
        boxes = torch.minimum(points_to_original(boxes, letterbox_boxes).clamp_(min=0), box_limits)
        keep = (scores >= options.score_threshold).sum(dim=1).clamp(max=options.max_detections)
        classes = peaks.channels[:, 0]
        packed.update(det_boxes=boxes, det_scores=scores, det_classes=classes, det_count=keep)
    if "pose" in asked:
        person = config.person_index
        assert person is not None  # guaranteed by ModelConfig validation
        person_logits = outputs["heatmap"][:, person : person + 1]
        persons: Candidates | None
        if detected is not None and options.pose_score_threshold >= options.score_threshold:
            # The person channel's peaks are among the detection's: no second search of the map.
            persons = channel_candidates(detected, person, options.pose_score_threshold)
        else:
            persons = find_candidates(person_logits, options.pose_score_threshold, options.pool_kernel)
        peaks = peaks_of_candidates(
            persons, person_logits, options.top_k, options.pose_score_threshold, options.pool_kernel
        )
        scores, ys, xs = peaks.scores[:, 0], peaks.ys[:, 0], peaks.xs[:, 0]
        boxes = _boxes_at(size, offset, xs, ys)
        regressed = gather_cells(outputs["kp_offsets"], ys, xs).float().unflatten(-1, (-1, 2))
        regressed = regressed + torch.stack((xs, ys), dim=-1).float().unsqueeze(2)
        keep = (scores >= options.pose_score_threshold).sum(dim=1).clamp(max=options.max_detections)
        # Asking whether any person passed would wait for the device: there, the keypoints are always snapped.
        if device.type in TOPK_SEARCH_DEVICES or bool(keep.any()):
            keypoints, kp_scores = decode_keypoints(
                boxes, regressed, outputs["kp_heatmap"], outputs["kp_subpixel"], options
            )
        else:  # no person reported in the batch: nothing to snap
            keypoints, kp_scores = regressed, scores.new_zeros(regressed.shape[:-1])
        boxes = torch.minimum(
            points_to_original(boxes * OUTPUT_STRIDE, letterbox_boxes).clamp_(min=0), box_limits
        )
        keypoints = points_to_original(keypoints.flatten(-2) * OUTPUT_STRIDE, letterbox_boxes).unflatten(
            -1, (-1, 2)
        )
        packed.update(
            pose_boxes=boxes,
            pose_scores=scores,
            pose_keypoints=torch.cat((keypoints, kp_scores.unsqueeze(-1)), dim=-1),
            pose_count=keep,
        )
    seg_maps: list[Tensor] = []
    if "segmentation" in asked:
        assert config.segmentation is not None
        logits = outputs["segmentation"]
        stride = config.segmentation.output_stride
        # Narrow ids before resampling: the full-resolution gathers move a byte per pixel, not eight.
        wide = config.segmentation.num_outputs > 256
        class_map = channel_argmax(logits).to(torch.int32 if wide else torch.uint8)
        bilinear = options.segmentation_resampling == "bilinear"
        for i in range(batch):
            if bilinear:
                seg = segmentation_logits_to_original(
                    logits[i], class_map[i], letterboxes[i], image_sizes[i], stride
                )
            else:  # segmentation_to_original, keeping the cells
                cells = nearest_cells(letterboxes[i], sizes[i], stride, tuple(class_map.shape[1:]), device)
                seg = sample_grid(class_map[i], *cells)
                constants.extend(cells)
            seg_maps.append(seg.flatten())

    parts = [value.reshape(batch, -1).float() for value in packed.values()]
    columns, start = [], 0
    for name, part in zip(packed, parts, strict=True):
        columns.append((name, start, start + part.shape[1]))
        start += part.shape[1]
    numbers = torch.cat(parts, dim=1) if parts else torch.zeros((batch, 0), device=device)
    segmentation = None
    if seg_maps:
        segmentation = seg_maps[0] if len(seg_maps) == 1 else torch.cat(seg_maps)
    return DecodedTensors(numbers, tuple(columns), segmentation, tuple(constants))


def unpack_results(
    decoded: DecodedTensors, image_sizes: Sequence[tuple[int, int]], tasks: Collection[str]
) -> list[Results]:
    """:func:`decode_to_tensors`' results brought to the host (two copies) as one :class:`Results` per
    image; ``tasks`` are those decoded."""
    host = decoded.numbers.cpu().numpy()
    seg_host = None if decoded.segmentation is None else decoded.segmentation.cpu().numpy()
    arrays = {name: host[:, start:end] for name, start, end in decoded.columns}
    results: list[Results] = []
    seg_start = 0
    for i, (h, w) in enumerate((int(h), int(w)) for h, w in image_sizes):
        result = Results(image_size=(h, w))
        if "detection" in tasks:
            n = int(arrays["det_count"][i, 0])
            result.detections = Detections(
                boxes=arrays["det_boxes"][i].reshape(-1, 4)[:n].astype(np.float32),
                scores=arrays["det_scores"][i][:n].astype(np.float32),
                class_ids=arrays["det_classes"][i][:n].astype(np.int64),
            )
        if "pose" in tasks:
            n = int(arrays["pose_count"][i, 0])
            result.poses = Poses(
                boxes=arrays["pose_boxes"][i].reshape(-1, 4)[:n].astype(np.float32),
                scores=arrays["pose_scores"][i][:n].astype(np.float32),
                keypoints=arrays["pose_keypoints"][i].reshape(-1, NUM_KEYPOINTS, 3)[:n].astype(np.float32),
            )
        if seg_host is not None:
            seg_map = seg_host[seg_start : seg_start + h * w].reshape(h, w)
            seg_start += h * w
            result.segmentation = seg_map.astype(np.uint16) if seg_map.dtype != np.uint8 else seg_map
        results.append(result)
    return results
