"""Letterbox preprocessing (forward and inverse) done with torch on the inference device.

An image of size (h, w) is scaled by ``s = min(H_in / h, W_in / w)`` to ``(round(h s), round(w s))``
(bilinear, no antialiasing: OpenCV's INTER_LINEAR on the uint8 image on a CPU, torch's bilinear
interpolation of the float image on other devices; the two differ by at most one grey level), placed
centred in the (H_in, W_in) network input with padding ``floor((W_in - new_w) / 2)`` (likewise y) and
padding value 0 after normalisation (the mean colour). Points map as ``p_in = p_orig * scale + pad`` and
back as ``p_orig = (p_in - pad) / scale``, with continuous pixel coordinates (pixel i covers [i, i + 1)).

The input size is the configured one, or with ``rect`` (:func:`rect_input_size`) the smallest multiples of the
backbone stride that hold the images at the configured scale: a 640x480 camera in a 512x512 configuration
runs at 512x384, with the same scale and less padding.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mcn_ros.model.color_order import COLOR_ORDERS, grey_plane, opencv_view, to_rgb

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


@dataclass(frozen=True)
class Letterbox:
    """Per-image mapping original pixels -> network input pixels: ``p_in = p_orig * scale + pad``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """Map [..., 2] (x, y) points from original to network-input coordinates."""
        points = np.asarray(points, dtype=np.float64)
        return points * (self.scale_x, self.scale_y) + (self.pad_x, self.pad_y)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map [..., 2] (x, y) points from network-input back to original coordinates."""
        points = np.asarray(points, dtype=np.float64)
        return (points - (self.pad_x, self.pad_y)) / (self.scale_x, self.scale_y)

    def as_array(self) -> np.ndarray:
        """float32 [4] (scale_x, scale_y, pad_x, pad_y), the layout datasets store."""
        return np.array([self.scale_x, self.scale_y, self.pad_x, self.pad_y], dtype=np.float32)

    @classmethod
    def from_array(cls, values: Sequence[float] | np.ndarray | Tensor) -> Letterbox:
        """Inverse of :meth:`as_array` (also accepts a tensor)."""
        if isinstance(values, Tensor):
            values = values.detach().cpu().tolist()
        sx, sy, px, py = (float(v) for v in values)
        return cls(sx, sy, px, py)


def resized_size(orig_hw: Sequence[int], input_hw: Sequence[int]) -> tuple[int, int]:
    """(new_h, new_w) of an (h, w) image letterboxed into ``input_hw``."""
    h, w = int(orig_hw[0]), int(orig_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {(h, w)}")
    s = min(input_hw[0] / h, input_hw[1] / w)
    new_h = min(int(input_hw[0]), max(1, round(h * s)))
    new_w = min(int(input_hw[1]), max(1, round(w * s)))
    return new_h, new_w


def letterbox_for(orig_hw: Sequence[int], input_hw: Sequence[int]) -> Letterbox:
    """The :class:`Letterbox` of an ``orig_hw`` = (h, w) image in an ``input_hw`` = (H, W) input."""
    h, w = int(orig_hw[0]), int(orig_hw[1])
    new_h, new_w = resized_size(orig_hw, input_hw)
    return Letterbox(
        scale_x=new_w / w,
        scale_y=new_h / h,
        pad_x=float(math.floor((input_hw[1] - new_w) / 2)),
        pad_y=float(math.floor((input_hw[0] - new_h) / 2)),
    )


def rect_input_size(
    image_sizes: Sequence[Sequence[int]], input_hw: Sequence[int], stride: int = 32
) -> tuple[int, int]:
    """Camera-shaped input: the smallest (H, W), multiples of ``stride`` and at most ``input_hw``, that holds
    every (h, w) of ``image_sizes`` letterboxed at its ``input_hw`` scale (the batch shares one shape)."""
    height = width = stride
    for size in image_sizes:
        new_h, new_w = resized_size(size, input_hw)
        height = max(height, -(-new_h // stride) * stride)
        width = max(width, -(-new_w // stride) * stride)
    return min(height, int(input_hw[0])), min(width, int(input_hw[1]))


def letterbox_tensor(
    image: Tensor, input_hw: Sequence[int], out: Tensor | None = None
) -> tuple[Tensor, Letterbox]:
    """Letterbox one float image [3, h, w] into [3, H, W] (padding 0); returns it and the mapping.

    If ``out`` [3, H, W] is given, the resized image is written into it in place and the rest of ``out``
    (the padding) keeps what it holds.
    """
    h, w = int(image.shape[-2]), int(image.shape[-1])
    box = letterbox_for((h, w), input_hw)
    new_h, new_w = resized_size((h, w), input_hw)
    if (new_h, new_w) != (h, w):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    if out is None:
        out = image.new_zeros((image.shape[0], int(input_hw[0]), int(input_hw[1])))
    x0, y0 = int(box.pad_x), int(box.pad_y)
    out[:, y0 : y0 + new_h, x0 : x0 + new_w] = image
    return out, box


def check_image(image: np.ndarray, index: int) -> None:
    """Refuse what is not an HxWx3 uint8 image (one clear error naming image ``index``)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        hint = ""
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            hint = (
                " (grey, a 2-D array or one channel: mcn_ros.model.color_order.grey_as_rgb(image), a view "
                "letterboxed as one plane, or cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))"
            )
        elif image.ndim == 3 and image.shape[2] == 4:
            hint = " (with alpha: cv2.cvtColor(image, cv2.COLOR_RGBA2RGB), or BGRA2BGR)"
        raise ValueError(
            f"image {index}: expected an HxWx3 uint8 array, got {image.dtype} {image.shape}{hint}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {index}: empty image {image.shape}")


def image_to_tensor(
    image: np.ndarray,
    device: torch.device | str,
    color_order: str = "rgb",
    dtype: torch.dtype | None = torch.float32,
) -> Tensor:
    """HxWx3 uint8 array -> [3, h, w] RGB in [0, 255] on ``device`` (only uint8 is transferred), converted to
    ``dtype`` (None: a uint8 view where possible)."""
    if any(stride < 0 for stride in image.strides):  # e.g. image[..., ::-1]: torch needs positive strides
        image = np.ascontiguousarray(image)
    grey = grey_plane(image) is not None  # one plane as three channels: only the plane goes to the device
    source = image[:, :, :1] if grey else image
    if source.flags.writeable:
        data = torch.from_numpy(source)
    else:
        with warnings.catch_warnings():
            # Read-only arrays (zero-copy views of ROS messages) are fine: the tensor is never written to.
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(source)
    data = data.to(device, non_blocking=True).permute(2, 0, 1)
    if grey:
        data = data.expand(3, -1, -1)
    if color_order == "bgr":
        data = data.flip(0)
    return data if dtype is None else data.to(dtype)


def preprocess(
    images: Sequence[np.ndarray],
    input_hw: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    color_order: str = "rgb",
    channels_last: bool = True,
) -> tuple[Tensor, list[Letterbox]]:
    """Letterbox and normalise a batch of HxWx3 uint8 images (sizes may differ) on ``device``.

    Returns the float32 batch [B, 3, H, W] (channels_last memory format if asked) and one
    :class:`Letterbox` per image. ``mean``/``std`` are RGB statistics of images scaled to [0, 1].
    """
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    if len(images) == 0:
        raise ValueError("no images given")
    device = torch.device(device)
    height, width = int(input_hw[0]), int(input_hw[1])
    shift, scale = _normalisation(tuple(float(m) for m in mean), tuple(float(s) for s in std), device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # Zeros: the padding is the mean colour, 0 once normalised; only the image regions are normalised (a
    # broadcast fill of the mean over the whole channels_last batch cost 8x this memset).
    batch = torch.empty(
        (len(images), 3, height, width), dtype=torch.float32, device=device, memory_format=memory_format
    ).zero_()
    letterboxes = []
    for i, image in enumerate(images):
        check_image(image, i)
        box = letterbox_for(image.shape[:2], (height, width))
        new_h, new_w = resized_size(image.shape[:2], (height, width))
        x0, y0 = int(box.pad_x), int(box.pad_y)
        region = batch[i, :, y0 : y0 + new_h, x0 : x0 + new_w]
        if device.type == "cpu":
            region.copy_(_resized_rgb_uint8(image, (new_h, new_w), color_order))
        else:
            letterbox_tensor(image_to_tensor(image, device, color_order), (height, width), out=batch[i])
        region.sub_(shift).mul_(scale)
        letterboxes.append(box)
    return batch, letterboxes


def _resized_rgb_uint8(image: np.ndarray, new_hw: tuple[int, int], color_order: str) -> Tensor:
    """CPU letterbox: the image resized (OpenCV INTER_LINEAR) and in RGB order, still uint8, as a [3, h, w]
    view; the caller converts only these pixels to float (no full-resolution float copy). A BGR image's
    channels are swapped after the resize, by OpenCV (a torch flip of the permuted view was a gathered copy
    taking 9x as long). A grey frame (one plane as three channels) is resized as its plane, then expanded:
    the whole letterbox 1.1 against 1.4 ms at 640x480, 0.9 against 1.4 at 1920x1080, against expanding the
    frame to RGB first (2 AVX2 cores, ad hoc)."""
    new_h, new_w = new_hw
    grey = grey_plane(image)
    if grey is not None:  # a grey camera's frame (color_order.grey_as_rgb): its one plane is resized
        if (new_h, new_w) != grey.shape:
            grey = cv2.resize(grey, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        # Packed RGB after all, at the network's size: the batch takes it in one contiguous conversion
        # (copying the three channels from the one plane took 2.8 ms at 640x480, this whole path 1.1).
        image = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
        return image_to_tensor(image, "cpu", "rgb", dtype=None)
    if (new_h, new_w) != image.shape[:2]:
        image = cv2.resize(opencv_view(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return image_to_tensor(to_rgb(image, color_order), "cpu", "rgb", dtype=None)


@functools.lru_cache(maxsize=8)
def _normalisation(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """(shift, scale) [3, 1, 1] on ``device``: ``(pixels - shift) * scale`` normalises [0, 255] pixels.

    Cached per values and device, so that a frame does not copy them to the device again; never modified.
    Made outside inference mode, so that they also serve calls outside it.
    """
    with torch.inference_mode(False):
        scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32, device=device)).view(3, 1, 1)
        shift = (torch.tensor(mean, dtype=torch.float32, device=device) * 255.0).view(3, 1, 1)
    return shift, scale


def letterboxes_to_tensor(letterboxes: Sequence[Letterbox], device: torch.device | str) -> Tensor:
    """float32 [B, 4] (scale_x, scale_y, pad_x, pad_y): the rows of :meth:`Letterbox.as_array`."""
    values = np.array([b.as_array() for b in letterboxes], dtype=np.float32).reshape(-1, 4)
    return torch.from_numpy(values).to(device)


def points_to_original(points: Tensor, letterboxes: Tensor) -> Tensor:
    """Map network-input points [B, ..., 2k] (x, y interleaved) to original pixels; ``letterboxes`` [B, 4]."""
    shape = (points.shape[0],) + (1,) * (points.ndim - 2) + (2,)
    scale = letterboxes[:, 0:2].reshape(shape)
    pad = letterboxes[:, 2:4].reshape(shape)
    pairs = points.unflatten(-1, (-1, 2))
    return ((pairs - pad.unsqueeze(-2)) / scale.unsqueeze(-2)).flatten(-2)


def pixel_cells(pixels: ArrayT, scale: float, pad: float, stride: int) -> ArrayT:
    """Along one axis, the cell of a ``stride`` map (of the network input) that original pixel index
    ``pixels`` falls in: its centre ``u + 0.5`` mapped by the letterbox, ``floor(((u + 0.5) * scale + pad) /
    stride)`` (float, not clamped). numpy or torch; the one formula the decoder and the training targets
    share."""
    cells = ((pixels + 0.5) * scale + pad) / stride
    return cells.floor() if isinstance(cells, Tensor) else np.floor(cells)


def segmentation_to_original(
    class_map: Tensor, letterbox: Letterbox, orig_hw: Sequence[int], map_stride: int
) -> Tensor:
    """Resample a class-id map [h_m, w_m] at ``map_stride`` of the input back to the original [h, w].

    Nearest sampling: original pixel u -> map index ``floor(((u + 0.5) * scale + pad) / map_stride)``,
    clamped to the map; one gather per axis.
    """
    map_hw = (int(class_map.shape[0]), int(class_map.shape[1]))
    hw = (int(orig_hw[0]), int(orig_hw[1]))
    rows, cols = nearest_cells(letterbox, hw, map_stride, map_hw, class_map.device)
    return sample_grid(class_map, rows, cols)


@functools.lru_cache(maxsize=16)
def nearest_cells(
    letterbox: Letterbox,
    orig_hw: tuple[int, int],
    map_stride: int,
    map_hw: tuple[int, int],
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """:func:`segmentation_to_original`'s map row of each original row and map column of each column.

    Cached: a camera stream asks for the same ones frame after frame. Never modified; made outside inference
    mode, so that they also serve calls outside it. A CUDA graph that reads them must hold them itself (an
    entry the cache drops is freed).
    """
    with torch.inference_mode(False):
        ys = torch.arange(orig_hw[0], device=device, dtype=torch.float64)
        xs = torch.arange(orig_hw[1], device=device, dtype=torch.float64)
        rows = pixel_cells(ys, letterbox.scale_y, letterbox.pad_y, map_stride).long()
        cols = pixel_cells(xs, letterbox.scale_x, letterbox.pad_x, map_stride).long()
        return rows.clamp_(0, map_hw[0] - 1), cols.clamp_(0, map_hw[1] - 1)


def sample_grid(grid: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``grid[rows][:, cols]`` of a 2-D map: columns first (on the few rows of the map), then whole rows,
    contiguous copies. On the CPU in numpy: where both index arrays never decrease (the letterbox's nearest
    and bilinear cells do), each map row and column is repeated as often as it is taken (``np.repeat``),
    1.4-5x faster than numpy's fancy indexing, the fallback (bench/results/sample_grid.md), which was in
    turn three times faster than torch's index_select.
    """
    if grid.device.type != "cpu":
        return grid.index_select(1, cols).index_select(0, rows)
    values, row_index, col_index = grid.numpy(), rows.numpy(), cols.numpy()
    row_runs, col_runs = index_runs(row_index), index_runs(col_index)
    if row_runs is None or col_runs is None:
        return torch.from_numpy(values[:, col_index][row_index])
    (row_cells, row_counts), (col_cells, col_counts) = row_runs, col_runs
    narrowed = values[row_cells][:, col_cells]
    return torch.from_numpy(np.repeat(np.repeat(narrowed, col_counts, axis=1), row_counts, axis=0))


def index_runs(index: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A never decreasing index array as runs: each distinct value and how many times it repeats, in order
    (``np.repeat(values, counts)`` gives ``index`` back); None if it ever decreases."""
    if index.size == 0:
        return index, np.zeros(0, dtype=np.int64)
    steps = np.diff(index)
    if steps.size and steps.min() < 0:
        return None
    bounds = np.concatenate(([0], np.flatnonzero(steps) + 1, [index.size]))
    return index[bounds[:-1]], np.diff(bounds)


def _bilinear_taps(
    size: int, scale: float, pad: float, stride: int, cells: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Along one axis, each original pixel's two neighbouring map cells and the weight of the second.

    The pixel centre ``u + 0.5`` maps to the input coordinate ``(u + 0.5) * scale + pad``; map cell ``i``
    is centred on input coordinate ``(i + 0.5) * stride``. Outside the first / last centre the border cell
    is repeated (weight 0), as ``F.interpolate(..., align_corners=False)`` does.
    """
    u = torch.arange(size, device=device, dtype=torch.float64)
    position = ((u + 0.5) * scale + pad) / stride - 0.5
    low = position.floor().clamp(0, cells - 1)
    weight = (position - low).clamp(0, 1)
    first = low.long()
    second = (first + 1).clamp(max=cells - 1)
    return first, second, weight.float()


def segmentation_logits_to_original(
    logits: Tensor, class_map: Tensor, letterbox: Letterbox, orig_hw: Sequence[int], map_stride: int
) -> Tensor:
    """Class-id map [h, w] of the original image from logits [C, h_m, w_m] resampled bilinearly.

    ``class_map`` is ``logits.argmax(0)``. Each pixel takes, among the classes of the four map cells around
    it, the one whose logits interpolated bilinearly at the pixel are highest. Where the four cells share
    their class that class is taken as it is (every convex combination of their logits has the same
    argmax), so the interpolation runs only near class boundaries and only for the (at most four) classes
    met there, not for all C; a class that is the argmax of none of the four cells is not considered.
    """
    h, w = int(orig_hw[0]), int(orig_hw[1])
    cells_y, cells_x = class_map.shape
    device = logits.device
    y0, y1, wy = _bilinear_taps(h, letterbox.scale_y, letterbox.pad_y, map_stride, cells_y, device)
    x0, x1, wx = _bilinear_taps(w, letterbox.scale_x, letterbox.pad_x, map_stride, cells_x, device)
    result = sample_grid(class_map, y0, x0)
    # A square between four cell centres is mixed when its corners' classes differ.
    below = torch.cat((class_map[1:], class_map[-1:]), 0)
    right = torch.cat((class_map[:, 1:], class_map[:, -1:]), 1)
    below_right = torch.cat((below[:, 1:], below[:, -1:]), 1)
    mixed = (class_map != below) | (class_map != right) | (class_map != below_right)
    rows, cols = sample_grid(mixed, y0, x0).nonzero(as_tuple=True)
    if rows.numel():
        ry0, ry1, fy = y0.index_select(0, rows), y1.index_select(0, rows), wy.index_select(0, rows)
        cx0, cx1, fx = x0.index_select(0, cols), x1.index_select(0, cols), wx.index_select(0, cols)
        corners = (
            (ry0 * cells_x + cx0, (1 - fy) * (1 - fx)),
            (ry0 * cells_x + cx1, (1 - fy) * fx),
            (ry1 * cells_x + cx0, fy * (1 - fx)),
            (ry1 * cells_x + cx1, fy * fx),
        )
        flat_classes = class_map.reshape(-1)
        # Element (class, cell) of the logits as a flat index, without copying channels-last logits.
        cells_last = logits.permute(1, 2, 0)
        if cells_last.is_contiguous():
            flat_logits, class_step, cell_step = cells_last.reshape(-1), 1, logits.shape[0]
        else:
            flat_logits, class_step, cell_step = logits.reshape(-1), cells_y * cells_x, 1

        def interpolated(candidate: Tensor) -> Tensor:
            """Each pixel's logit of its ``candidate`` class, interpolated from the four cells."""
            base = candidate.long() * class_step
            total = torch.zeros_like(fy)
            for cell, weight in corners:
                total += flat_logits.index_select(0, base + cell * cell_step) * weight
            return total

        # Each corner's class competes, scored at the pixel; the first best wins ties.
        candidates = [flat_classes.index_select(0, cell) for cell, _ in corners]
        best_class, best_score = candidates[0], interpolated(candidates[0])
        for candidate in candidates[1:]:
            score = interpolated(candidate)
            best_class = torch.where(score > best_score, candidate, best_class)
            best_score = torch.maximum(score, best_score)
        result[rows, cols] = best_class
    return result
