"""Geometric and photometric transforms of one training sample (image, boxes, keypoints, semantic map).

Training (``AugmentConfig``): a random scale and shift with a crop to the network input (or CenterNet's
default random crop, ``random_crop``), horizontal flip (left/right keypoints swapped with
:data:`mcn_ros.model.labels.FLIP_PAIRS`) and colour jitter.
Evaluation (``augment=None``): the model's letterbox only (:func:`mcn_ros.model.preprocess.letterbox_for` and
the model's own :func:`~mcn_ros.model.preprocess.preprocess` for the pixels), so that coordinates and pixels
agree with inference exactly.

Geometry uses ``torchvision.transforms.v2.functional`` on ``tv_tensors`` (Image, BoundingBoxes, KeyPoints), so
one resize / crop / flip moves the image, boxes and keypoints together. The scale is a letterbox fit times a
random factor, so every augmentation is ``p_in = p_orig * scale + offset`` (optionally mirrored): the same
family of mappings as inference, with no rotation, which keeps boxes exact.

The semantic map is the exception: it is sampled directly from the original class map at the segmentation
stride (:func:`sample_semantic`), not resized as a ``tv_tensors.Mask``. A Mask resize samples destination
*pixel* centres, which after subsampling to stride ``s`` and an odd letterbox padding disagrees with the
decoder's inverse mapping by one original pixel wherever a pixel centre falls on a cell boundary (measured
with the oracle: mIoU 0.80 instead of 1.0 at stride 2). Sampling with the decoder's own pixel -> cell
formula makes the round trip exact whenever the map is at least as fine as the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mcn_ros.model.labels import IGNORE_INDEX, NUM_KEYPOINTS, flip_permutation
from mcn_ros.model.preprocess import Letterbox, letterbox_for, pixel_cells, preprocess, resized_size

#: Principal components of ImageNet's RGB pixel colours (in [0, 1]) for AlexNet-style lighting noise, the
#: values fb.resnet.torch publishes (CenterNet's own, BGR-ordered, differ slightly): the eigenvalues and the
#: eigenvectors (columns), for ``lighting``.
IMAGENET_PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
#: CenterNet's random crop: the window-size factors it draws from (``np.arange(0.6, 1.4, 0.1)``) ...
CROP_WINDOW_FACTORS: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
#: ... and the border, in original pixels, that the window's centre keeps from the image's edges.
CROP_BORDER = 128


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings (CenterNet's defaults where it has them)."""

    #: Random scale factor range, relative to the letterbox fit of the image in the input. Default (0.6, 1.4)
    #: (CenterNet's ``scale`` 0.4 around 1).
    scale_range: tuple[float, float] = (0.6, 1.4)
    #: Random shift of the image centre, as a fraction of the input size (uniform in +-shift; an image
    #: larger than the input may in addition move so that any part of it can be cropped). Default 0.1.
    shift: float = 0.1
    #: Probability of a horizontal flip. Default 0.5.
    flip_prob: float = 0.5
    #: Colour jitter strengths (torchvision ColorJitter factors; 0 = off). Defaults 0.4, 0.4, 0.4, 0.0.
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0
    #: CenterNet's default (``not_rand_crop`` off) instead of ``scale_range`` and ``shift``: the image at its
    #: fit times 1 / f, f drawn from 0.6, 0.7, ..., 1.3, the input's centre on an image point drawn anywhere
    #: :data:`CROP_BORDER` pixels (halved until they fit) inside the image. Default false.
    random_crop: bool = False
    #: Lighting noise (AlexNet's PCA colour augmentation, in CenterNet's default colour augmentation with
    #: 0.1): each image's colours shifted along ImageNet's principal colour components by normal draws of
    #: this standard deviation times their eigenvalues. 0 = off. Default 0.
    lighting: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.scale_range)
        if not (0 < lo <= hi) or not math.isfinite(hi):
            raise ValueError(f"scale_range: expected 0 < low <= high, got {self.scale_range!r}")
        if not 0 <= self.shift <= 1:
            raise ValueError(f"shift: expected a fraction in [0, 1], got {self.shift!r}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob: expected a probability in [0, 1], got {self.flip_prob!r}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.lighting < math.inf:
            raise ValueError(f"lighting: expected a standard deviation >= 0, got {self.lighting!r}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue: expected a value in [0, 0.5], got {self.hue!r}")
        object.__setattr__(self, "scale_range", (lo, hi))


@dataclass
class Sample:
    """A transformed sample in network-input coordinates.

    ``image`` float [3, H, W] normalised (padding 0 = mean colour); ``boxes`` float [N, 4] (x1, y1, x2, y2);
    ``keypoints`` float [N, 17, 3] (x, y, v) or None; ``semantic`` uint8 [H/s, W/s] class map at the
    segmentation stride ``s`` (padding ignored, 255) or None; ``letterbox`` maps original to input
    pixels *before* the flip; ``flipped`` whether the sample was mirrored afterwards (``x -> W - x``).
    """

    image: Tensor
    boxes: Tensor
    keypoints: Tensor | None
    semantic: Tensor | None
    letterbox: Letterbox
    flipped: bool


class MultitaskTransform:
    """Callable mapping an original sample to network-input coordinates (see the module docstring)."""

    def __init__(
        self,
        input_hw: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentConfig | None = None,
        seg_stride: int = 1,
    ) -> None:
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.seg_stride = int(seg_stride)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.augment = augment
        self._jitter: v2.ColorJitter | None = None
        if augment is not None and (
            augment.brightness or augment.contrast or augment.saturation or augment.hue
        ):
            self._jitter = v2.ColorJitter(
                augment.brightness, augment.contrast, augment.saturation, augment.hue
            )
        self._flip_perm = torch.tensor(flip_permutation())
        self._pca_values = torch.tensor(IMAGENET_PCA_EIGENVALUES)
        self._pca_vectors = torch.tensor(IMAGENET_PCA_EIGENVECTORS)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        keypoints: np.ndarray | None = None,
        semantic: np.ndarray | None = None,
    ) -> Sample:
        """Transform one sample: ``image`` HxWx3 uint8 RGB, ``boxes`` [N, 4] xyxy, ``keypoints`` [N, 17, 3]
        (x, y, v), ``semantic`` uint8 [h, w] (all in original pixels)."""
        h, w = int(image.shape[0]), int(image.shape[1])
        H, W = self.input_hw
        aug = self.augment
        if aug is None:
            box = letterbox_for((h, w), self.input_hw)
            new_h, new_w = resized_size((h, w), self.input_hw)
            ox, oy = int(box.pad_x), int(box.pad_y)
            flip = False
        else:
            fit = min(H / h, W / w)
            if aug.random_crop:
                factor = CROP_WINDOW_FACTORS[int(torch.randint(len(CROP_WINDOW_FACTORS), ()))]
                scale = fit / factor
                new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
                ox = self._crop_offset(W, w, new_w)
                oy = self._crop_offset(H, h, new_h)
            else:
                scale = fit * float(torch.empty(()).uniform_(*aug.scale_range))
                new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
                ox = self._offset(W, new_w, aug.shift)
                oy = self._offset(H, new_h, aug.shift)
            box = Letterbox(new_w / w, new_h / h, float(ox), float(oy))
            flip = bool(torch.rand(()) < aug.flip_prob)

        n = int(np.asarray(boxes).reshape(-1, 4).shape[0])
        tv_boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)), format="XYXY", canvas_size=(h, w)
        )
        tv_kps = None
        if keypoints is not None:
            kps = torch.as_tensor(np.asarray(keypoints, np.float32).reshape(n, NUM_KEYPOINTS, 3))
            tv_kps = tv_tensors.KeyPoints(kps[..., :2].reshape(-1, 2), canvas_size=(h, w))
            vis = kps[..., 2]

        # One crop with negative offsets = placing the resized image at (ox, oy) of the input canvas.
        crop = {"top": -oy, "left": -ox, "height": H, "width": W}
        tv_boxes = TF.crop(TF.resize(tv_boxes, [new_h, new_w]), **crop)
        if tv_kps is not None:
            tv_kps = TF.crop(TF.resize(tv_kps, [new_h, new_w]), **crop)

        if aug is None:  # exactly the inference pixels
            pixels = preprocess([image], self.input_hw, self.mean, self.std, "cpu", channels_last=False)[0][0]
        else:
            img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
            img = TF.resize(img, [new_h, new_w], antialias=False)  # bilinear, as preprocess (cv2-like)
            if self._jitter is not None:
                img = self._jitter(img)
            mean = torch.tensor(self.mean).view(3, 1, 1)
            if aug.lighting > 0:  # one colour shift for the whole image, in [0, 1] units (not clipped)
                alpha = torch.randn(3) * aug.lighting
                mean = mean - (self._pca_vectors @ (alpha * self._pca_values)).view(3, 1, 1)
            std = torch.tensor(self.std).view(3, 1, 1)
            normalised = tv_tensors.Image((img.float() / 255.0 - mean) / std)
            pixels = TF.crop(normalised, **crop).as_subclass(Tensor)  # padding 0 = the mean colour

        out_boxes = tv_boxes.as_subclass(Tensor).float()
        out_kps = None
        if flip:
            pixels = TF.horizontal_flip(pixels)
            out_boxes = TF.horizontal_flip(tv_boxes).as_subclass(Tensor).float()
        if tv_kps is not None:
            xy = tv_kps
            if flip:
                # torchvision mirrors keypoints as pixel indices (x -> W - 1 - x); the project's coordinates
                # are continuous (pixel i covers [i, i+1)), whose mirror is W - x: add the 1 back.
                xy = TF.horizontal_flip(tv_kps) + torch.tensor([1.0, 0.0])
            pts = torch.cat([xy.as_subclass(Tensor).reshape(n, NUM_KEYPOINTS, 2), vis[..., None]], dim=-1)
            if flip:
                pts = pts[:, self._flip_perm]  # the person's left joints are now on the other side
            out_kps = pts.float()
        sem = None
        if semantic is not None:
            sem = torch.from_numpy(sample_semantic(semantic, box, self.input_hw, self.seg_stride))
            if flip:
                sem = sem.flip(-1)  # cell j <-> cell W/s - 1 - j is exactly the mirror x -> W - x
        return Sample(pixels.contiguous(), out_boxes, out_kps, sem, box, flip)

    @staticmethod
    def _crop_offset(size: int, original: int, new: int) -> int:
        """Position of a ``new``-pixel image (``original`` pixels before scaling) on a ``size``-pixel canvas
        whose centre falls on an original pixel drawn at least :data:`CROP_BORDER` pixels from the image's
        edges, the border halved until a pixel remains (CenterNet's ``_get_border``)."""
        border = CROP_BORDER
        while original - border <= border:  # ends at 0 at the latest (original >= 1)
            border //= 2
        centre = int(torch.randint(border, original - border, ()))
        return math.floor(size / 2 - (centre + 0.5) * new / original + 0.5)

    @staticmethod
    def _offset(size: int, new: int, shift: float) -> int:
        """Random position of a ``new``-pixel image on a ``size``-pixel canvas: centred, +- shift * size, and
        anywhere a crop window fits when the image is larger than the canvas."""
        slack = shift * size + max(0.0, (new - size) / 2)
        return math.floor((size - new) / 2 + float(torch.empty(()).uniform_(-1, 1)) * slack + 0.5)


def _axis_sources(
    n_orig: int, n_cells: int, scale: float, pad: float, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Original index sampled by each map cell along one axis, and whether the cell lies on the image.

    A cell takes the original pixel whose centre lies in the cell, with the decoder's formula
    (pixel ``u`` -> cell ``floor(((u + 0.5) * scale + pad) / stride)``), choosing the one nearest the cell
    centre; a cell no pixel centre falls in (upsampling) takes the pixel under its centre.
    """
    u = np.arange(n_orig, dtype=np.float64)
    cell_of_pixel = pixel_cells(u, scale, pad, stride)  # the mapping decode inverts with
    j = np.arange(n_cells, dtype=np.float64)
    under_centre = np.floor(((j + 0.5) * stride - pad) / scale)
    lo = np.searchsorted(cell_of_pixel, j, side="left")
    hi = np.searchsorted(cell_of_pixel, j, side="right")
    src = np.where(hi > lo, np.clip(under_centre, lo, hi - 1), under_centre)
    on_image = (src >= 0) & (src < n_orig)
    return np.clip(src, 0, n_orig - 1).astype(np.int64), on_image


def sample_semantic(
    semantic: np.ndarray, letterbox: Letterbox, input_hw: Sequence[int], stride: int
) -> np.ndarray:
    """Class map uint8 [H/stride, W/stride] of an original class map [h, w] under ``letterbox`` (``p_in =
    p_orig * scale + pad``); cells off the image (padding) are ignored (IGNORE_INDEX: inference never maps
    them back to a pixel, as detectron2 and torchvision pad targets). One gather per axis."""
    sem = np.asarray(semantic, np.uint8)
    rows, row_ok = _axis_sources(
        sem.shape[0], int(input_hw[0]) // stride, letterbox.scale_y, letterbox.pad_y, stride
    )
    cols, col_ok = _axis_sources(
        sem.shape[1], int(input_hw[1]) // stride, letterbox.scale_x, letterbox.pad_x, stride
    )
    out = sem[rows][:, cols]
    out[~row_ok, :] = IGNORE_INDEX
    out[:, ~col_ok] = IGNORE_INDEX
    return np.ascontiguousarray(out)
