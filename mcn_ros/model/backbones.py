"""Backbones (timm feature extractors) and the up-paths that bring them to one stride-4 feature map.

- :func:`create_backbone` wraps ``timm.create_model(name, features_only=True)`` with the levels of
  strides 4, 8, 16 and 32; the channels and strides are read from timm's ``feature_info``.
- :class:`ResNetUpPath` is CenterNet's ResNet(-DCN) up-path: three times (3x3 conv + BN + ReLU, 4x4
  stride-2 transposed conv + BN + ReLU) with 256, 128, 64 channels, from the stride-32 map.
- :class:`DLAUpPath` is CenterNet's DLA-34 up-path: DLA-up (iterative deep aggregation from stride 32 down
  to 4) followed by IDA-up (merging the stride 4, 8, 16 outputs at stride 4).

Both up-paths use :class:`ModulatedDeformConv2d` (DCNv2 through ``torchvision.ops.deform_conv2d``) when
``use_dcn`` is true, plain 3x3 convs otherwise. Module names follow CenterNet's so that its checkpoints
convert by renaming prefixes (see :mod:`mcn_ros.model.convert`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

#: timm ``out_indices`` giving the levels of strides 4, 8, 16, 32 (DLA has two extra stride-1/2 levels).
OUT_INDICES: dict[str, tuple[int, ...]] = {
    "resnet18": (1, 2, 3, 4),
    "resnet34": (1, 2, 3, 4),
    "resnet50": (1, 2, 3, 4),
    "resnet101": (1, 2, 3, 4),
    "dla34": (2, 3, 4, 5),
}
BN_MOMENTUM = 0.1


class Backbone(nn.Module):
    """A timm ``features_only`` model returning the stride 4, 8, 16, 32 feature maps."""

    def __init__(self, name: str, pretrained_path: str | Path | None = None) -> None:
        super().__init__()
        if name not in OUT_INDICES:
            raise ValueError(f"unsupported backbone {name!r} (supported: {', '.join(OUT_INDICES)})")
        self.name = name
        # pretrained=False: never download; local weights are loaded below on request.
        self.body = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=OUT_INDICES[name]
        )
        info: Any = self.body.feature_info
        self.channels: tuple[int, ...] = tuple(info.channels())
        self.strides: tuple[int, ...] = tuple(info.reduction())
        if self.strides != (4, 8, 16, 32):
            raise RuntimeError(f"timm {name} features have strides {self.strides}, expected (4, 8, 16, 32)")
        if pretrained_path is not None:
            load_backbone_weights(self, pretrained_path)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Feature maps at strides 4, 8, 16, 32."""
        return list(self.body(images))


class BackboneWeightsError(ValueError):
    """A backbone weights file that cannot be used: missing, unreadable, or not the backbone's tensors."""


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a timm classification checkpoint (safetensors, timm's key layout) into ``backbone``.

    Keys of the classifier (absent from a ``features_only`` model) are ignored; a missing backbone key or a
    shape mismatch raises :class:`BackboneWeightsError` naming the key.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        hint = ""
        if path.suffix in (".pth", ".pt", ".bin"):  # a pickle: never loaded here (it can run code)
            hint = (
                "; a PyTorch pickle is not loaded: convert a state dict you trust once with "
                "safetensors.torch.save_file(torch.load(FILE, weights_only=True), OUT)"
            )
        raise BackboneWeightsError(f"{path}: not a readable safetensors file ({exc}){hint}") from exc
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = backbone.body.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise BackboneWeightsError(
            f"{path}: {len(missing)} {backbone.name} backbone tensor(s) missing, first {missing[0]!r} "
            f"(expected timm's {backbone.name} key layout, e.g. {next(iter(own))!r})"
        )
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise BackboneWeightsError(
                f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, the {backbone.name} backbone "
                f"needs {tuple(value.shape)}"
            )
    backbone.body.load_state_dict({k: state[k] for k in own}, strict=True)


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 3x3 conv: a plain conv predicts per-location offsets and a mask; ``deform_conv2d`` applies them.

    The offset/mask conv starts at zero, so at initialisation this is a plain conv with mask 0.5. Layout as
    CenterNet's DCNv2 (``weight``, ``bias``, ``conv_offset_mask``; offsets = first two thirds, mask = last).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_offset_mask = nn.Conv2d(
            in_channels, 3 * kernel_size * kernel_size, kernel_size, padding=padding, bias=True
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.zeros_(self.conv_offset_mask.weight)
        assert self.conv_offset_mask.bias is not None
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Deformable convolution of ``x``."""
        o1, o2, mask = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        # deform_conv2d has no autocast rule and not every dtype kernel (bfloat16): run it in float32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = deform_conv2d(
                x.float(),
                offset.float(),
                self.weight.float(),
                self.bias.float(),
                padding=(self.padding, self.padding),
                mask=mask.float().sigmoid(),
            )
        return out.to(x.dtype)


def conv3x3(in_channels: int, out_channels: int, use_dcn: bool) -> nn.Module:
    """3x3 conv, deformable (DCNv2, with bias as CenterNet) or plain (no bias: a BatchNorm follows)."""
    if use_dcn:
        return ModulatedDeformConv2d(in_channels, out_channels)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


def bilinear_upsampling_init(up: nn.ConvTranspose2d) -> None:
    """Initialise a transposed conv as bilinear upsampling (CenterNet's ``fill_up_weights``)."""
    weight = up.weight.data
    k = weight.shape[-1]
    factor = math.ceil(k / 2)
    centre = (2 * factor - 1 - factor % 2) / (2.0 * factor)
    coords = torch.arange(k, dtype=torch.float32)
    line = 1 - torch.abs(coords / factor - centre)
    kernel = line[:, None] * line[None, :]
    weight.zero_()
    if up.groups == up.in_channels and weight.shape[1] == 1:
        weight[:, 0] = kernel  # depthwise: every channel upsampled on its own
    else:  # dense: channel c -> channel c
        for c in range(min(weight.shape[0], weight.shape[1])):
            weight[c, c] = kernel


class ResNetUpPath(nn.Module):
    """CenterNet's ResNet up-path from the stride-32 map to stride 4 (``deconv_layers``)."""

    def __init__(
        self, in_channels: Sequence[int], use_dcn: bool, channels: Sequence[int] = (256, 128, 64)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels[-1]
        for width in channels:
            up = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1, output_padding=0, bias=False)
            bilinear_upsampling_init(up)
            layers += [
                conv3x3(previous, width, use_dcn),
                nn.BatchNorm2d(width, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
                up,
                nn.BatchNorm2d(width, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]
            previous = width
        self.deconv_layers = nn.Sequential(*layers)
        self.out_channels = previous

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Stride-4 map from the backbone's stride 4..32 features (only the last is used)."""
        return self.deconv_layers(features[-1])


class ConvBlock(nn.Module):
    """3x3 conv (deformable or plain) + BN + ReLU; CenterNet's ``DeformConv`` (``conv``, ``actf``)."""

    def __init__(self, in_channels: int, out_channels: int, use_dcn: bool) -> None:
        super().__init__()
        self.conv = conv3x3(in_channels, out_channels, use_dcn)
        self.actf = nn.Sequential(nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        """conv -> BN -> ReLU."""
        return self.actf(self.conv(x))


class IDAUp(nn.Module):
    """Iterative deep aggregation: merge ``layers[start+1:]`` one by one into the previous, at its stride.

    Each level ``i`` is projected to ``out_channels`` (``proj_i``), upsampled by ``up_factors[i]`` with a
    depthwise bilinear-initialised transposed conv (``up_i``), added to level ``i-1`` and fused (``node_i``).
    """

    def __init__(
        self, out_channels: int, channels: Sequence[int], up_factors: Sequence[int], use_dcn: bool
    ) -> None:
        super().__init__()
        self.count = len(channels)
        for i in range(1, len(channels)):
            f = int(up_factors[i])
            up = nn.ConvTranspose2d(
                out_channels, out_channels, f * 2, stride=f, padding=f // 2, groups=out_channels, bias=False
            )
            bilinear_upsampling_init(up)
            self.add_module(f"proj_{i}", ConvBlock(channels[i], out_channels, use_dcn))
            self.add_module(f"up_{i}", up)
            self.add_module(f"node_{i}", ConvBlock(out_channels, out_channels, use_dcn))

    def forward(self, layers: list[Tensor], start: int, end: int) -> list[Tensor]:
        """Copy of ``layers`` with ``layers[start+1:end]`` aggregated at the stride of ``layers[start]``."""
        out = list(layers)
        for i in range(start + 1, end):
            j = i - start
            up = self.get_submodule(f"up_{j}")
            proj = self.get_submodule(f"proj_{j}")
            node = self.get_submodule(f"node_{j}")
            out[i] = node(up(proj(out[i])) + out[i - 1])
        return out


class DLAUp(nn.Module):
    """DLA-up: aggregate from the deepest level towards stride 4 (``ida_0`` .. ``ida_{n-2}``)."""

    def __init__(self, channels: Sequence[int], scales: Sequence[int], use_dcn: bool) -> None:
        super().__init__()
        channels = list(channels)
        in_channels = list(channels)
        scales = list(scales)
        self.count = len(channels)
        for i in range(len(channels) - 1):
            j = len(channels) - i - 2
            factors = [s // scales[j] for s in scales[j:]]
            self.add_module(f"ida_{i}", IDAUp(channels[j], in_channels[j:], factors, use_dcn))
            for k in range(j + 1, len(channels)):
                scales[k] = scales[j]
                in_channels[k] = channels[j]

    def forward(self, layers: list[Tensor]) -> list[Tensor]:
        """Return the aggregated maps, stride 4 first (channels of the backbone levels)."""
        layers = list(layers)
        out = [layers[-1]]
        for i in range(self.count - 1):
            ida = self.get_submodule(f"ida_{i}")
            layers = ida(layers, self.count - i - 2, self.count)
            out.insert(0, layers[-1])
        return out


class DLAUpPath(nn.Module):
    """CenterNet's DLA-34 neck (``dla_up`` + ``ida_up``): stride 4..32 features -> one stride-4 map."""

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], use_dcn: bool) -> None:
        super().__init__()
        scales = [s // strides[0] for s in strides]
        self.dla_up = DLAUp(in_channels, scales, use_dcn)
        self.out_channels = in_channels[0]
        # last_level = the stride-32 level is excluded from the final IDA-up, as CenterNet's DLASeg.
        self.levels = len(in_channels) - 1
        self.ida_up = IDAUp(self.out_channels, in_channels[: self.levels], scales[: self.levels], use_dcn)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Stride-4 map with ``in_channels[0]`` channels."""
        x = self.dla_up(list(features))
        y = self.ida_up(x[: self.levels], 0, self.levels)
        return y[-1]


def create_up_path(
    backbone: Backbone, use_dcn: bool, resnet_channels: Sequence[int] = (256, 128, 64)
) -> ResNetUpPath | DLAUpPath:
    """The backbone family's CenterNet up-path, sized from the backbone's ``feature_info`` (a ResNet's
    stage widths ``resnet_channels``)."""
    if backbone.name.startswith("dla"):
        return DLAUpPath(backbone.channels, backbone.strides, use_dcn)
    return ResNetUpPath(backbone.channels, use_dcn, resnet_channels)
