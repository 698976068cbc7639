"""Task heads on the shared stride-4 feature map.

Every output is a CenterNet head branch: 3x3 conv (``head_conv`` channels) + ReLU + 1x1 conv. Heatmap
branches start with bias -2.19 (sigmoid = 0.1, the focal-loss prior of CenterNet); every other final conv
starts with bias 0. Outputs are raw (logits / regressions); :mod:`mcn_ros.model.decode` interprets them.
With ``shared`` (the config's ``shared_head_conv``, a lighter variant, not the paper's) the outputs of one
task come from one branch whose 1x1 conv gives all of them, channel slices in the order listed.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from mcn_ros.model.config import OUTPUT_STRIDE

#: Initial bias of heatmap logits (CenterNet): sigmoid(-2.19) ~= 0.1.
HEATMAP_BIAS = -2.19


def head_branch(in_channels: int, head_conv: int, out_channels: int, bias: float = 0.0) -> nn.Sequential:
    """conv3x3(in -> head_conv) + ReLU + conv1x1(head_conv -> out); final bias set to ``bias``.

    Indices 0 and 2 hold the convs, as CenterNet's heads (``hm.0.weight``, ``hm.2.weight``).
    """
    branch = nn.Sequential(
        nn.Conv2d(in_channels, head_conv, 3, padding=1, bias=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(head_conv, out_channels, 1, bias=True),
    )
    final = branch[2]
    assert isinstance(final, nn.Conv2d) and final.bias is not None
    nn.init.constant_(final.bias, bias)
    return branch


class SharedBranch(nn.Module):
    """One head branch for several outputs: ``branch`` (conv3x3 + ReLU + conv1x1) gives their channels
    side by side; each output is its slice (a view), each slice's final bias initialised on its own."""

    def __init__(
        self, in_channels: int, head_conv: int, outputs: dict[str, int], biases: dict[str, float]
    ) -> None:
        super().__init__()
        self.outputs = tuple(outputs.items())
        self.branch = head_branch(in_channels, head_conv, sum(outputs.values()))
        final = self.branch[2]
        assert isinstance(final, nn.Conv2d) and final.bias is not None
        start = 0
        for name, channels in self.outputs:
            nn.init.constant_(final.bias[start : start + channels], biases.get(name, 0.0))
            start += channels

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Each output's channel slice of the one branch."""
        combined = self.branch(features)
        outputs, start = {}, 0
        for name, channels in self.outputs:
            outputs[name] = combined[:, start : start + channels]
            start += channels
        return outputs


class TaskHead(nn.Module):
    """The head of one task: an output per entry of ``outputs`` (name -> channels), each from its own branch
    (attribute ``name``, CenterNet's layout) or, with ``shared``, all from one :class:`SharedBranch`
    (attribute ``shared``). ``biases``: initial final-conv bias by output name (default 0)."""

    def __init__(
        self,
        in_channels: int,
        head_conv: int,
        outputs: dict[str, int],
        biases: dict[str, float],
        shared: bool,
    ) -> None:
        super().__init__()
        self.names = tuple(outputs)
        self.shared = SharedBranch(in_channels, head_conv, outputs, biases) if shared else None
        if not shared:
            for name, channels in outputs.items():
                self.add_module(name, head_branch(in_channels, head_conv, channels, biases.get(name, 0.0)))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Raw outputs of the stride-4 features, by name."""
        if self.shared is not None:
            return self.shared(features)
        return {name: getattr(self, name)(features) for name in self.names}


class DetectionHead(TaskHead):
    """CenterNet box detection: class-centre heatmap, box size and centre sub-pixel offset.

    Outputs (``h, w`` = input / 4): ``heatmap`` [B, C, h, w] logits; ``size`` [B, 2, h, w] (box width and
    height in output-map pixels); ``offset`` [B, 2, h, w] (centre minus its integer cell, x then y).
    """

    def __init__(self, in_channels: int, num_classes: int, head_conv: int, shared: bool = False) -> None:
        outputs = {"heatmap": num_classes, "size": 2, "offset": 2}
        super().__init__(in_channels, head_conv, outputs, {"heatmap": HEATMAP_BIAS}, shared)


class PoseHead(TaskHead):
    """CenterNet multi-person pose: keypoints regressed from the person centre plus keypoint heatmaps.

    Outputs: ``kp_offsets`` [B, 2K, h, w] (keypoint j = centre cell + channels (2j, 2j+1), output pixels);
    ``kp_heatmap`` [B, K, h, w] logits; ``kp_subpixel`` [B, 2, h, w] (keypoint minus its integer cell).
    The person boxes and scores come from the detection head's person channel.
    """

    def __init__(self, in_channels: int, num_keypoints: int, head_conv: int, shared: bool = False) -> None:
        outputs = {"kp_offsets": 2 * num_keypoints, "kp_heatmap": num_keypoints, "kp_subpixel": 2}
        super().__init__(in_channels, head_conv, outputs, {"kp_heatmap": HEATMAP_BIAS}, shared)


class SegmentationHead(nn.Module):
    """FCN-style semantic segmentation: per-pixel logits (background + classes).

    Logits are computed at stride 4 and, for ``output_stride`` < 4, upsampled bilinearly to
    input / ``output_stride``. Output ``segmentation`` [B, C+1, H/s, W/s], channel 0 = background.
    """

    def __init__(self, in_channels: int, num_outputs: int, head_conv: int, output_stride: int = 4) -> None:
        super().__init__()
        if output_stride not in (1, 2, 4):
            raise ValueError(f"output_stride must be 1, 2 or 4, got {output_stride}")
        self.output_stride = output_stride
        self.segmentation = head_branch(in_channels, head_conv, num_outputs)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Raw segmentation logits of the stride-4 features."""
        logits = self.segmentation(features)
        factor = OUTPUT_STRIDE // self.output_stride
        if factor != 1:
            h, w = logits.shape[-2:]
            logits = F.interpolate(
                logits, size=(h * factor, w * factor), mode="bilinear", align_corners=False
            )
        return {"segmentation": logits}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


assert math.isclose(1 / (1 + math.exp(-HEATMAP_BIAS)), 0.1, abs_tol=0.001)
