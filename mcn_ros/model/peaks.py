"""Heatmap peaks: the local maxima of sigmoid(logits) that score at least a threshold, the best k of each
image (or of each channel), as decoding wants them.

On the CPU the peaks are listed: a small map (or one where the caller expects many cells to pass) is
max-pooled whole and thresholded; on a larger one only the cells where some channel passes the threshold
are examined (their neighbourhoods), so the cost follows the number of candidates, not the map. On a GPU
(:data:`TOPK_SEARCH_DEVICES`) every search is a top-k of the max-pooled map, whose shapes do not depend on
the values (no wait for the device, CUDA-graph friendly). Both give the same peaks (tested);
:mod:`mcn_ros.model.decode` turns them into boxes and keypoints.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


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


def find_candidates(logits: Tensor, threshold: float, kernel: int, pooled: bool = False) -> Candidates | None:
    """Every local maximum of ``sigmoid(logits)`` [B, C, H, W] scoring at least ``threshold``, in no order;
    None where a top-k serves better (a threshold outside (0, 1), a map on one of
    :data:`TOPK_SEARCH_DEVICES`, or a threshold so low on a large map that most of it passes).

    Small maps (:data:`POOLED_MAX_VALUES`), and any map where the caller asks it (``pooled``: it expects
    many cells to pass), are max-pooled and thresholded; on others one max over the channels finds the cells
    where any channel passes, and only those (their ``kernel``-square neighbourhoods) are examined. A
    threshold so low that many cells pass (:data:`SPARSE_CELL_FRACTION`, :data:`SPARSE_VALUE_FRACTION`)
    falls back to max-pooling the map and thresholding it (:data:`POOLED_FALLBACK_MAX_VALUES`), or to None.

    Pooling costs about 2.5 ns per value, the cell search about 0.23 us per passing cell after the max over
    the channels (2 AVX2 cores): a trained keypoint map passes ``kp_snap_score`` 0.1 in about a sixth of its
    cells, where the 17 x 96 x 128 keypoint maps of the 512x384 input took 0.50 ms pooled against 0.83 ms
    searched cell by cell (demo weights, median over 20 scenes); a detection map at 0.3 passes in a few
    cells, where the search wins (80 channels: 0.42-0.5 ms against 2.1-2.8 pooled; 10-20 channels
    1.2-2x faster than pooling).
    """
    b, c, h, w = logits.shape
    if not 0.0 < threshold < 1.0 or logits.device.type in TOPK_SEARCH_DEVICES:
        return None
    if pooled or c * h * w <= POOLED_MAX_VALUES:
        return _pooled_candidates(logits, threshold, kernel)
    # The logit below which no float32 sigmoid reaches the threshold (tested exactly later): a margin for the
    # sigmoid's rounding, 8 float32 ulps of the score (2^-24 each below 1) through the slope t(1 - t), which
    # near 1 grows past the fixed 1e-3 (at 0.99999 a logit 0.002 short still rounds up to the threshold).
    margin = 1e-3 + 8 * 2.0**-24 / (threshold * (1.0 - threshold))
    cutoff = math.log(threshold / (1.0 - threshold)) - margin
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
    # A zero is a cell local_peaks cleared, not a peak, even at threshold 0.
    scores = scores.masked_fill((scores < threshold) | (scores <= 0), -1.0)
    ys = torch.div(flat, w, rounding_mode="floor")
    return Peaks(scores, flat, channels, ys, flat - ys * w)


def _pooled_candidates(logits: Tensor, threshold: float, kernel: int) -> Candidates:
    """:func:`find_peaks`' candidates of a small map, or where many cells pass: the whole map max-pooled,
    the peaks thresholded.

    A value is a peak passing ``threshold`` (> 0) when it is at least both its neighbourhood's maximum (so
    equal to it) and the threshold: one comparison with the clamped maximum, the same cells as
    :func:`local_peaks` then thresholding (two passes fewer over the map: 0.69 -> 0.50 ms for the keypoint
    maps at 512x384 on 2 cores)."""
    heat = logits.sigmoid()
    where = (heat >= neighbourhood_max(heat, kernel).clamp_min_(threshold)).nonzero()  # [N, 4] (b, c, y, x)
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
    steps = torch.arange(-r, r + 1, device=logits.device).unsqueeze(1)
    # A neighbour outside the map is clamped to the border cell between it and the centre, which is inside
    # the window too: the window's maximum is unchanged, so the map's edges need no mask. Candidates run along
    # the last dimension ([kernel, N], [kernel, kernel, N]): broadcasting over a last dimension of size kernel
    # cost twice as much on the CPU (1.6k candidates: 218 -> 110 us for the whole test, before the self-copy
    # mask below).
    rows = (yi + steps).clamp_(0, h - 1).mul_(row_stride)  # [kernel, N]
    rows += bi * image_stride + ci * channel_stride
    columns = (xi + steps).clamp_(0, w - 1).mul_(column_stride)
    positions = (rows.unsqueeze(1) + columns.unsqueeze(0)).view(-1)  # [kernel^2 * N]
    # One gather by storage position (a view of the map's own storage): several times cheaper than indexing
    # with four index tensors. The centre is row kernel^2 // 2.
    extent = 1 + sum((size - 1) * stride for size, stride in zip(logits.shape, logits.stride(), strict=True))
    window = logits.as_strided((extent,), (1,)).index_select(0, positions)
    window = window.view(kernel * kernel, bi.shape[0]).sigmoid_()
    positions = positions.view(kernel * kernel, bi.shape[0])
    centre = (kernel * kernel) // 2
    score = window[centre].clone()
    # A border cell's clamped neighbours are the cell itself, computed in another lane of sigmoid_ (whose
    # vectorised body and scalar tail can differ by an ulp): not compared with itself.
    window.masked_fill_(positions == positions[centre], float("-inf"))
    keep = ((score >= window.amax(dim=0)) & (score >= threshold)).nonzero().squeeze(1)
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
