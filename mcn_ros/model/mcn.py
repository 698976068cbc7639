"""MultitaskCenterNet: backbone -> up-path (stride 4) -> only the heads that are asked for."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from torch import Tensor, nn

from mcn_ros.model.backbones import Backbone, create_up_path
from mcn_ros.model.config import TASKS, ModelConfig
from mcn_ros.model.heads import DetectionHead, PoseHead, SegmentationHead


def resolve_tasks(config: ModelConfig, tasks: Collection[str] | None) -> frozenset[str]:
    """Validate requested tasks against the configured ones (None = all configured)."""
    if tasks is None:
        return config.tasks
    if isinstance(tasks, str):
        tasks = (tasks,)
    asked = frozenset(tasks)
    unknown = asked - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; tasks are {', '.join(TASKS)}")
    missing = asked - config.tasks
    if missing:
        raise ValueError(
            f"task(s) {sorted(missing)} not configured in model {config.name!r} "
            f"(it has {sorted(config.tasks)})"
        )
    return asked


def check_input_batch(images: Tensor) -> None:
    """Refuse a network input that is not [B, 3, H, W] with H and W multiples of 32 (the backbone's stride:
    other sizes give maps that no longer line up with the input)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    if images.shape[-2] % 32 or images.shape[-1] % 32:
        raise ValueError(f"image height and width must be multiples of 32, got {tuple(images.shape[-2:])}")


class MultitaskCenterNet(nn.Module):
    """The Multitask-CenterNet of the paper (section 3), assembled from a :class:`ModelConfig`.

    ``backbone`` (timm features, strides 4..32), ``neck`` (CenterNet up-path to one stride-4 map) and
    ``heads``, an ``nn.ModuleDict`` with one entry per configured task ("detection", "pose",
    "segmentation"). ``backbone_weights`` optionally names a local timm safetensors file for the backbone.
    """

    def __init__(self, config: ModelConfig, backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone, backbone_weights)
        self.neck = create_up_path(self.backbone, config.use_dcn, config.neck_channels)
        channels = self.neck.out_channels
        heads: dict[str, nn.Module] = {}
        if config.detection is not None:
            heads["detection"] = DetectionHead(
                channels, config.detection.num_classes, config.head_conv, config.shared_head_conv
            )
        if config.pose is not None:
            heads["pose"] = PoseHead(
                channels, config.pose.num_keypoints, config.head_conv, config.shared_head_conv
            )
        if config.segmentation is not None:
            seg = config.segmentation
            heads["segmentation"] = SegmentationHead(
                channels, seg.num_outputs, config.head_conv, seg.output_stride
            )
        self.heads = nn.ModuleDict(heads)

    def features(self, images: Tensor) -> Tensor:
        """The shared stride-4 feature map."""
        return self.neck(self.backbone(images))

    def forward(self, images: Tensor, tasks: Collection[str] | None = None) -> dict[str, Tensor]:
        """Run the backbone, up-path and the heads of ``tasks`` (None = all configured).

        ``images`` [B, 3, H, W] normalised, H and W multiples of 32. Asking "pose" also runs the detection
        head (its person channel gives the persons). Returns raw outputs keyed as documented in heads.py.
        """
        asked = resolve_tasks(self.config, tasks)
        check_input_batch(images)
        x = self.features(images)
        outputs: dict[str, Tensor] = {}
        if asked & {"detection", "pose"}:
            outputs.update(self.heads["detection"](x))
        if "pose" in asked:
            outputs.update(self.heads["pose"](x))
        if "segmentation" in asked:
            outputs.update(self.heads["segmentation"](x))
        return outputs
