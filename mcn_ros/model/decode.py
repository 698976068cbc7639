"""Decode raw head outputs into :class:`~mcn_ros.model.results.Results` (batched torch, then numpy).

Conventions (shared with the training targets): output-map coordinates are input pixels / 4, continuous,
pixel i covering [i, i + 1). A detection at centre cell (x, y) has centre (x, y) + ``offset`` and size
``size`` (w, h); its box is centre -/+ size / 2. A person's keypoint j is regressed at the centre *cell* +
``kp_offsets``[2j:2j+2]; it is snapped to the nearest keypoint-heatmap peak (peak cell + ``kp_subpixel``)
when that peak scores at least ``kp_snap_score``, lies inside the person box and is closer than
``kp_snap_distance`` x the longer box side (CenterNet's multi-pose decoding). A keypoint's score is the
snapped peak's score, else the keypoint heatmap at the regressed location.

All maths runs batched on the outputs' device; there are no Python loops over detections or pixels (only
over the images of the batch, for the segmentation resampling and the final split), and the results cross
to the CPU in one packed transfer (plus one for segmentation maps).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    points_to_original,
    segmentation_to_original,
)
from mcn_ros.model.results import Detections, Poses, Results


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


def local_peaks(heat: Tensor, kernel: int = 3) -> Tensor:
    """Keep heatmap values that are the maximum of their ``kernel``-square neighbourhood, zero the rest."""
    if kernel <= 1:
        return heat
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    return heat * (hmax == heat)


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


def gather_at(feature: Tensor, flat: Tensor) -> Tensor:
    """Values of ``feature`` [B, C, H, W] at flat positions [B, K] -> [B, K, C]."""
    b, c = feature.shape[:2]
    values = feature.reshape(b, c, -1).gather(2, flat.unsqueeze(1).expand(b, c, flat.shape[1]))
    return values.transpose(1, 2)


def _boxes_at(size: Tensor, offset: Tensor, flat: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Boxes [B, K, 4] (x1, y1, x2, y2, output-map coordinates) of centre cells (xs, ys).

    Negative predicted sizes (possible early in training) are clamped to 0.
    """
    off = gather_at(offset, flat).float()
    wh = gather_at(size, flat).float().clamp(min=0)
    cx = xs.float() + off[..., 0]
    cy = ys.float() + off[..., 1]
    half_w, half_h = wh[..., 0] / 2, wh[..., 1] / 2
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def _clip_boxes(boxes: Tensor, sizes_hw: Tensor) -> Tensor:
    """Clip original-pixel boxes [B, K, 4] to their images [B, 2] (h, w)."""
    w = sizes_hw[:, 1].view(-1, 1).to(boxes.dtype)
    h = sizes_hw[:, 0].view(-1, 1).to(boxes.dtype)
    zero = torch.zeros_like(w)
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), w)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), h)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), w)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def decode_keypoints(
    boxes: Tensor,
    regressed: Tensor,
    kp_heatmap: Tensor,
    kp_subpixel: Tensor,
    options: DecodeOptions,
) -> tuple[Tensor, Tensor]:
    """Snap regressed keypoints to keypoint-heatmap peaks (CenterNet multi-pose), all in output-map coords.

    ``boxes`` [B, K, 4] person boxes; ``regressed`` [B, K, J, 2] keypoints from the centre;
    ``kp_heatmap`` [B, J, H, W] probabilities; ``kp_subpixel`` [B, 2, H, W].
    Returns keypoints [B, K, J, 2] and scores [B, K, J].
    """
    b, j, h, w = kp_heatmap.shape
    k = regressed.shape[1]
    kp = min(options.keypoint_candidates, h * w)
    # Candidate peaks per joint: [B, J, Kp].
    cand_score, cand_flat = local_peaks(kp_heatmap, options.pool_kernel).reshape(b, j, -1).topk(kp, dim=2)
    cand_y = torch.div(cand_flat, w, rounding_mode="floor")
    cand_x = cand_flat - cand_y * w
    sub = kp_subpixel.float().reshape(b, 2, -1).gather(2, cand_flat.reshape(b, 1, -1).expand(b, 2, j * kp))
    sub = sub.reshape(b, 2, j, kp)
    cand = torch.stack((cand_x.float() + sub[:, 0], cand_y.float() + sub[:, 1]), dim=-1)  # [B, J, Kp, 2]
    # Squared distance of every regressed keypoint to every candidate of its joint: [B, K, J, Kp], built in
    # place from the x and y differences (no [B, K, J, Kp, 2] temporary, no square root).
    dist_sq = regressed[..., 0].unsqueeze(3) - cand[..., 0].unsqueeze(1)
    dist_sq.mul_(dist_sq)
    dy = regressed[..., 1].unsqueeze(3) - cand[..., 1].unsqueeze(1)
    dist_sq.addcmul_(dy, dy)
    del dy
    dist_sq.masked_fill_((cand_score < options.kp_snap_score).unsqueeze(1), float("inf"))
    min_dist_sq, nearest = dist_sq.min(dim=3)  # [B, K, J]
    snapped = (
        cand.unsqueeze(1).expand(b, k, j, kp, 2).gather(3, nearest[..., None, None].expand(b, k, j, 1, 2))
    )
    snapped = snapped.squeeze(3)
    snapped_score = cand_score.unsqueeze(1).expand(b, k, j, kp).gather(3, nearest.unsqueeze(-1)).squeeze(-1)
    x1, y1, x2, y2 = (boxes[..., i].unsqueeze(-1) for i in range(4))
    inside = (
        (snapped[..., 0] >= x1) & (snapped[..., 0] <= x2) & (snapped[..., 1] >= y1) & (snapped[..., 1] <= y2)
    )
    radius = options.kp_snap_distance * torch.maximum(x2 - x1, y2 - y1)
    use = torch.isfinite(min_dist_sq) & inside & (min_dist_sq <= radius * radius)
    # Score of a keypoint that stays where it was regressed: the heatmap at its cell (clamped to the map).
    rx = regressed[..., 0].floor().clamp(0, w - 1).long()
    ry = regressed[..., 1].floor().clamp(0, h - 1).long()
    reg_flat = (ry * w + rx).transpose(1, 2)  # [B, J, K]
    reg_score = kp_heatmap.reshape(b, j, -1).gather(2, reg_flat).transpose(1, 2)  # [B, K, J]
    keypoints = torch.where(use.unsqueeze(-1), snapped, regressed)
    scores = torch.where(use, snapped_score, reg_score.to(snapped_score.dtype))
    return keypoints, scores


@functools.lru_cache(maxsize=32)
def _mapping_tensors(
    letterboxes: tuple[Letterbox, ...], image_sizes: tuple[tuple[int, int], ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Letterboxes [B, 4] and image sizes (h, w) [B, 2] on ``device``, float32.

    Cached: a camera stream repeats them frame after frame, so a frame needs no host-to-device copy for them.
    The tensors are shared between calls, never modified, and made outside inference mode (usable in and out).
    """
    with torch.inference_mode(False):
        sizes = torch.tensor(image_sizes, dtype=torch.float32, device=device).view(-1, 2)
        return letterboxes_to_tensor(letterboxes, device), sizes


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
    ``tasks`` (None = all configured) are decoded, and each needs its outputs present.
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
    letterbox_boxes, sizes_hw = _mapping_tensors(
        tuple(letterboxes), tuple((int(h), int(w)) for h, w in image_sizes), device
    )
    packed: dict[str, Tensor] = {}  # name -> [B, ...] float32, moved to the CPU together

    if asked & {"detection", "pose"}:
        size, offset = outputs["size"], outputs["offset"]
    if "detection" in asked:
        heat = outputs["heatmap"].float().sigmoid()
        scores, flat, classes, ys, xs = topk_peaks(local_peaks(heat, options.pool_kernel), options.top_k)
        boxes = _boxes_at(size, offset, flat, xs, ys) * OUTPUT_STRIDE
        boxes = _clip_boxes(points_to_original(boxes, letterbox_boxes), sizes_hw)
        keep = (scores >= options.score_threshold).sum(dim=1).clamp(max=options.max_detections)
        packed.update(det_boxes=boxes, det_scores=scores, det_classes=classes.float(), det_count=keep.float())
    if "pose" in asked:
        person = config.person_index
        assert person is not None  # guaranteed by ModelConfig validation
        if "detection" in asked:
            person_heat = heat[:, person : person + 1]
        else:  # pose alone: the probabilities of the person channel only
            person_heat = outputs["heatmap"][:, person : person + 1].float().sigmoid()
        person_heat = local_peaks(person_heat, options.pool_kernel)
        scores, flat, _, ys, xs = topk_peaks(person_heat, options.top_k)
        boxes = _boxes_at(size, offset, flat, xs, ys)
        regressed = gather_at(outputs["kp_offsets"], flat).float().unflatten(-1, (-1, 2))
        regressed = regressed + torch.stack((xs, ys), dim=-1).float().unsqueeze(2)
        keypoints, kp_scores = decode_keypoints(
            boxes, regressed, outputs["kp_heatmap"].float().sigmoid(), outputs["kp_subpixel"], options
        )
        boxes = _clip_boxes(points_to_original(boxes * OUTPUT_STRIDE, letterbox_boxes), sizes_hw)
        keypoints = points_to_original(keypoints.flatten(-2) * OUTPUT_STRIDE, letterbox_boxes).unflatten(
            -1, (-1, 2)
        )
        keep = (scores >= options.pose_score_threshold).sum(dim=1).clamp(max=options.max_detections)
        packed.update(
            pose_boxes=boxes,
            pose_scores=scores,
            pose_keypoints=torch.cat((keypoints, kp_scores.unsqueeze(-1)), dim=-1),
            pose_count=keep.float(),
        )
    seg_maps: list[Tensor] = []
    if "segmentation" in asked:
        assert config.segmentation is not None
        logits = outputs["segmentation"]
        stride = config.segmentation.output_stride
        class_map = logits.argmax(dim=1)
        wide = config.segmentation.num_outputs > 256
        for i in range(batch):
            seg = segmentation_to_original(class_map[i], letterboxes[i], image_sizes[i], stride)
            seg_maps.append(seg.to(torch.int32 if wide else torch.uint8).flatten())

    # One packed transfer for the numbers, one for the segmentation maps.
    names = list(packed)
    flat_parts = [packed[n].reshape(batch, -1).float() for n in names]
    widths = [p.shape[1] for p in flat_parts]
    host = torch.cat(flat_parts, dim=1).cpu().numpy() if flat_parts else np.zeros((batch, 0), np.float32)
    seg_host = torch.cat(seg_maps).cpu().numpy() if seg_maps else None
    columns = np.cumsum([0, *widths])
    arrays = {n: host[:, columns[i] : columns[i + 1]] for i, n in enumerate(names)}

    results: list[Results] = []
    seg_start = 0
    for i in range(batch):
        h, w = int(image_sizes[i][0]), int(image_sizes[i][1])
        result = Results(image_size=(h, w))
        if "detection" in asked:
            n = int(arrays["det_count"][i, 0])
            result.detections = Detections(
                boxes=arrays["det_boxes"][i].reshape(-1, 4)[:n].astype(np.float32),
                scores=arrays["det_scores"][i][:n].astype(np.float32),
                class_ids=arrays["det_classes"][i][:n].astype(np.int64),
            )
        if "pose" in asked:
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
