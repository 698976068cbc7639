"""One camera of the node: its input topic, its output publishers, its statistics, what it publishes.

The single-camera node (parameter ``cameras`` empty) has one camera named "": it listens on ``image`` and
publishes ``~/detections``, ``~/poses``, ... as it always did. A named camera ``front`` listens on
``front/image`` and publishes ``~/front/detections``, ``~/front/poses``, ...; every output carries the
header of the image it was computed from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from mcn_ros.msg import HumanPose2DArray
from mcn_ros.ros import messages
from mcn_ros.ros.frames import FrameStats
from mcn_ros.ros.images import class_map_encoding
from mcn_ros.visualize import colorize, draw_results

if TYPE_CHECKING:
    import numpy as np
    from rclpy.lifecycle import LifecycleNode, LifecyclePublisher
    from rclpy.qos import QoSProfile

    from mcn_ros.model.results import Results
    from mcn_ros.ros.parameters import FrameSettings

#: Output topics (relative to the camera's prefix) -> the tasks that fill them.
OUTPUT_TASKS: dict[str, frozenset[str]] = {
    "detections": frozenset({"detection"}),
    "poses": frozenset({"pose"}),
    "segmentation": frozenset({"segmentation"}),
    "segmentation_color": frozenset({"segmentation"}),
    "debug_image": frozenset({"detection", "pose", "segmentation"}),
}
_TOPIC_LEAVES = {"segmentation_color": "segmentation/color"}


class Camera:
    """A camera's topics, publishers, subscriptions and frame statistics."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = FrameStats()
        self.publishers: dict[str, LifecyclePublisher[Any]] = {}
        self.subscriptions: list[Any] = []
        self.computed_tasks: frozenset[str] = frozenset()
        self.last_error = ""

    @property
    def image_topic(self) -> str:
        """The input topic, relative to the node's namespace (remappable)."""
        return f"{self.name}/image" if self.name else "image"

    def output_topic(self, output: str) -> str:
        """The private topic of one of :data:`OUTPUT_TASKS`' outputs."""
        leaf = _TOPIC_LEAVES.get(output, output)
        return f"~/{self.name}/{leaf}" if self.name else f"~/{leaf}"

    def create_publishers(self, node: LifecycleNode, tasks: frozenset[str], qos: QoSProfile) -> None:
        """Publishers of the outputs whose tasks the model has (the debug image always)."""
        types = {"detections": Detection2DArray, "poses": HumanPose2DArray}
        for output, needs in OUTPUT_TASKS.items():
            if output == "debug_image" or needs & tasks:
                kind, topic = types.get(output, Image), self.output_topic(output)
                self.publishers[output] = node.create_lifecycle_publisher(kind, topic, qos)

    def destroy(self, node: LifecycleNode) -> None:
        """Destroy the subscriptions and publishers."""
        for subscription in self.subscriptions:
            node.destroy_subscription(subscription)
        self.subscriptions.clear()
        for publisher in self.publishers.values():
            node.destroy_lifecycle_publisher(publisher)
        self.publishers.clear()

    def _listened(self, output: str) -> bool:
        publisher = self.publishers.get(output)
        return publisher is not None and publisher.get_subscription_count() > 0

    def wanted_tasks(self, enabled: frozenset[str], available: frozenset[str]) -> frozenset[str]:
        """Enabled tasks the model has and somebody listens to on this camera's topics."""
        wanted: set[str] = set()
        for output, needs in OUTPUT_TASKS.items():
            if self._listened(output):
                wanted |= needs
        return frozenset(wanted) & enabled & available

    def publish(
        self,
        header: Header,
        pixels: np.ndarray,
        color_order: str,
        results: Results,
        settings: FrameSettings,
        classes: Sequence[str],
        palette: np.ndarray,
    ) -> None:
        """Each output somebody listens to, under the input's ``header``."""
        if results.detections is not None and self._listened("detections"):
            self.publishers["detections"].publish(messages.detections_message(header, results.detections))
        if results.poses is not None and self._listened("poses"):
            message = messages.poses_message(header, results.poses, settings.keypoint_threshold)
            self.publishers["poses"].publish(message)
        if results.segmentation is not None:
            class_map = results.segmentation
            if self._listened("segmentation"):
                encoding = class_map_encoding(class_map)
                self.publishers["segmentation"].publish(messages.image_message(header, class_map, encoding))
            if self._listened("segmentation_color"):
                color = colorize(class_map, palette)
                self.publishers["segmentation_color"].publish(messages.image_message(header, color, "rgb8"))
        if self._listened("debug_image"):
            rgb = pixels if color_order == "rgb" else pixels[:, :, ::-1]
            drawn = draw_results(rgb, results, classes, palette, settings.keypoint_threshold)
            self.publishers["debug_image"].publish(messages.image_message(header, drawn, "rgb8"))
