"""Decode raw head outputs into :class:`~mcn_ros.model.results.Results` (batched torch, then numpy).

Conventions (shared with the training targets): output-map coordinates are input pixels / 4, continuous,
pixel i covering [i, i + 1). A detection at centre cell (x, y) has centre (x, y) + ``offset`` and size
``size`` (w, h); its box is centre -/+ size / 2. A person's keypoint j is regressed at the centre *cell* +
``kp_offsets``[2j:2j+2]; it is snapped to the nearest keypoint-heatmap peak (peak cell + ``kp_subpixel``)
when that peak scores at least ``kp_snap_score``, lies inside the person box and is closer than
``kp_snap_distance`` x the longer box side (CenterNet's multi-pose decoding). A keypoint's score is the
snapped peak's score, else the keypoint heatmap at the regressed location.

The heatmap peaks come from :mod:`mcn_ros.model.peaks`. All maths runs batched on the outputs' device
(:func:`decode_to_tensors`); there are no Python loops over detections or pixels (only over the images of
the batch, for the segmentation resampling and the final split), and the results cross to the CPU in one
packed transfer, plus one for segmentation maps (:func:`unpack_results`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from mcn_ros.model import peaks
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
        for name in ("score_threshold", "pose_score_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (a score), got {getattr(self, name)}")
        if not self.kp_snap_score >= 0.0:  # above 1: no peak qualifies, keypoints stay as regressed
            raise ValueError(f"kp_snap_score must be at least 0, got {self.kp_snap_score}")
        for name, least in (("max_detections", 0), ("top_k", 1), ("keypoint_candidates", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        if self.pool_kernel < 1 or self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel must be odd and at least 1, got {self.pool_kernel}")
        if self.kp_snap_distance < 0:
            raise ValueError(f"kp_snap_distance must be at least 0, got {self.kp_snap_distance}")

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
#: Where the cells are too many, keypoints are measured against every listed keypoint peak of their image
#: and joint while persons x joints x peaks is at most this many values (as much memory as the cell search
#: may take), and no joint has more peaks than its list would hold (:func:`_nearest_candidates`).
LISTED_SNAP_MAX_VALUES = 120_000


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
    :data:`~mcn_ros.model.peaks.TOPK_SEARCH_DEVICES`, where checking that would synchronize with the host.
    """
    b, j, h, w = kp_logits.shape
    nearest = None
    small = regressed.shape[1] * j * h * w <= DENSE_SNAP_MAX_VALUES
    if small and 0.0 < options.kp_snap_score < 1.0 and kp_logits.device.type not in peaks.TOPK_SEARCH_DEVICES:
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
    nearest peak among its joint's best ``keypoint_candidates`` scoring at least ``kp_snap_score``.

    Where no joint has more peaks than that (so each joint's list holds all of them) and persons x joints x
    peaks is at most :data:`LISTED_SNAP_MAX_VALUES`, the peaks are measured as listed
    (:func:`_nearest_candidates`), without ranking them into per-joint lists."""
    b, j, _, _ = kp_logits.shape
    # Pooled: a trained keypoint map passes kp_snap_score in many cells (peaks.find_candidates).
    found = peaks.find_candidates(kp_logits, options.kp_snap_score, options.pool_kernel, pooled=True)
    if found is not None and 0 < regressed.shape[1] * j * found.scores.shape[0] <= LISTED_SNAP_MAX_VALUES:
        per_joint = torch.bincount(found.images * j + found.channels, minlength=b * j)
        if int(per_joint.max()) <= options.keypoint_candidates:
            return _nearest_candidates(regressed, found, kp_subpixel)
    best = peaks.peaks_of_candidates(
        found, kp_logits, options.keypoint_candidates, options.kp_snap_score, options.pool_kernel, True
    )  # [B, J, Kp]
    cand_score = best.scores
    cand = (
        torch.stack((best.xs, best.ys), dim=-1).float() + gather_cells(kp_subpixel, best.ys, best.xs).float()
    )
    dist_sq = _squared_distances(regressed, cand)
    # Empty slots score -1 (peaks.find_peaks: never a cleared non-maximum), so kp_snap_score 0 masks them too.
    dist_sq.masked_fill_((cand_score < options.kp_snap_score).unsqueeze(1), float("inf"))
    min_dist_sq, nearest = dist_sq.min(dim=3)  # [B, K, J]
    rows = torch.arange(b, device=kp_logits.device).view(b, 1, 1)
    joints = torch.arange(j, device=kp_logits.device).view(1, 1, j)
    return min_dist_sq, cand[rows, joints, nearest], cand_score[rows, joints, nearest]


def _nearest_candidates(
    regressed: Tensor, found: peaks.Candidates, kp_subpixel: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """As :func:`_nearest_listed_peaks`, against every peak of ``found`` (the keypoint maps' candidates, at
    least one) of the keypoint's own image and joint: the same peaks as the lists where no joint has more
    than the lists hold. Measured on 2 cores with the demo weights at 512x384 (~470 peaks per image at
    ``kp_snap_score`` 0.1): ranking the peaks into 17 per-joint lists took 0.35 ms of the keypoint search's
    0.91. The peaks are taken best first, as the lists hold them, so that of equally near peaks the
    better-scoring one is chosen, as there."""
    b, _, j, _ = regressed.shape
    found = peaks.Candidates(*(v[found.scores.argsort(descending=True, stable=True)] for v in found))
    points = torch.stack((found.xs, found.ys), dim=-1).float()
    points += kp_subpixel[found.images, :, found.ys, found.xs].float()  # [N, 2]
    dist_sq = _squared_distances(regressed, points.view(1, 1, -1, 2))  # [B, K, J, N]
    joints = torch.arange(j, device=points.device).view(1, 1, j, 1)
    elsewhere = found.channels.view(1, 1, 1, -1) != joints  # another joint's peak
    if b > 1:
        images = torch.arange(b, device=points.device).view(b, 1, 1, 1)
        elsewhere = elsewhere | (found.images.view(1, 1, 1, -1) != images)
    dist_sq.masked_fill_(elsewhere, float("inf"))
    min_dist_sq, nearest = dist_sq.min(dim=3)  # [B, K, J] indices into found
    return min_dist_sq, points[nearest], found.scores[nearest]


def _nearest_peak_cells(
    regressed: Tensor, kp_logits: Tensor, kp_subpixel: Tensor, options: DecodeOptions
) -> tuple[Tensor, Tensor, Tensor] | None:
    """As :func:`_nearest_listed_peaks`, measured against every cell (non-peaks at infinite distance); None
    when some joint has more than ``keypoint_candidates`` peaks (the list then differs: the caller uses it).
    """
    b, j, h, w = kp_logits.shape
    heat = peaks.local_peaks(kp_logits.sigmoid(), options.pool_kernel).reshape(b, j, h * w)
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


#: NumPy's argmax runs vectorised from 1.22 (Humble's 1.21 loops value by value).
NUMPY_VECTOR_ARGMAX = tuple(int(part) for part in np.__version__.split(".")[:2]) >= (1, 22)
#: ... and beats torch's over the channels from about this many channels (2 AVX2 cores, channels_last
#: 96 x 128: 2 channels 0.11 against 0.06 ms, 21: 0.64 / 0.49, 32: 0.44 / 0.53, 81: 0.51 / 1.28).
NUMPY_ARGMAX_MIN_CHANNELS = 32


def channel_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(dim=1)`` of [B, C, H, W] (the first maximum on ties), [B, H, W].

    On the CPU, a float32 channels_last map of many channels (the 80-class configs' segmentation, from
    either backend) goes to NumPy's vectorised argmax over its innermost axis, a view of the same memory:
    81 x 96 x 128 on 2 AVX2 cores 0.45-0.51 ms against torch's 1.3-1.4 on random logits (NumPy 2.4 and
    1.26), 0.21 against 1.18 on the demo weights' (ad hoc). Otherwise ``max(dim=1)``'s indices: for a
    contiguous (NCHW) tensor torch's argmax over the channels is about 1.7x slower (3.0 against 1.8 ms; a
    running maximum over the channel planes took 3.6 ms).
    """
    if logits.device.type != "cpu" or logits.shape[1] == 1:
        return logits.argmax(dim=1)
    if (
        NUMPY_VECTOR_ARGMAX
        and logits.shape[1] >= NUMPY_ARGMAX_MIN_CHANNELS
        and logits.dtype == torch.float32
        and logits.stride(1) == 1
        and not logits.requires_grad
    ):
        return torch.from_numpy(logits.permute(0, 2, 3, 1).numpy().argmax(axis=-1))
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

    On a device of :data:`~mcn_ros.model.peaks.TOPK_SEARCH_DEVICES`, with ``segmentation_resampling``
    "nearest", no step depends on the values (every shape follows from the inputs' shapes and the options,
    nothing waits for the device), so the whole call can be captured in a CUDA graph with the forward.
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
    detected: peaks.Candidates | None = None  # the heatmap's local maxima passing the detection threshold
    if "detection" in asked:
        detected = peaks.find_candidates(outputs["heatmap"], options.score_threshold, options.pool_kernel)
        best = peaks.peaks_of_candidates(
            detected, outputs["heatmap"], options.top_k, options.score_threshold, options.pool_kernel
        )
        scores = best.scores[:, 0]
        boxes = _boxes_at(size, offset, best.xs[:, 0], best.ys[:, 0]) * OUTPUT_STRIDE
        boxes = torch.minimum(points_to_original(boxes, letterbox_boxes).clamp_(min=0), box_limits)
        keep = (scores >= options.score_threshold).sum(dim=1).clamp(max=options.max_detections)
        classes = best.channels[:, 0]
        packed.update(det_boxes=boxes, det_scores=scores, det_classes=classes, det_count=keep)
    if "pose" in asked:
        person = config.person_index
        assert person is not None  # guaranteed by ModelConfig validation
        person_logits = outputs["heatmap"][:, person : person + 1]
        persons: peaks.Candidates | None
        if detected is not None and options.pose_score_threshold >= options.score_threshold:
            # The person channel's peaks are among the detection's: no second search of the map.
            persons = peaks.channel_candidates(detected, person, options.pose_score_threshold)
        else:
            persons = peaks.find_candidates(person_logits, options.pose_score_threshold, options.pool_kernel)
        best = peaks.peaks_of_candidates(
            persons, person_logits, options.top_k, options.pose_score_threshold, options.pool_kernel
        )
        scores, ys, xs = best.scores[:, 0], best.ys[:, 0], best.xs[:, 0]
        boxes = _boxes_at(size, offset, xs, ys)
        regressed = gather_cells(outputs["kp_offsets"], ys, xs).float().unflatten(-1, (-1, 2))
        regressed = regressed + torch.stack((xs, ys), dim=-1).float().unsqueeze(2)
        keep = (scores >= options.pose_score_threshold).sum(dim=1).clamp(max=options.max_detections)
        # Asking whether any person passed would wait for the device: there, the keypoints are always snapped.
        if device.type in peaks.TOPK_SEARCH_DEVICES or bool(keep.any()):
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
