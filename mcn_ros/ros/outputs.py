"""The node's output topics: created on configure for the tasks the weights have, published per frame, and
the tasks somebody listens to (only those are computed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from mcn_ros.msg import HumanPose2DArray, PoseInfo
from mcn_ros.ros import messages
from mcn_ros.ros.images import class_map_encoding
from mcn_ros.ros.parameters import FrameSettings
from mcn_ros.ros.topic_names import CAMERA_TOPICS, NODE_TOPICS
from mcn_ros.visualize import color_palette, colorize, draw_results

if TYPE_CHECKING:
    import numpy as np
    from std_msgs.msg import Header

    from mcn_ros.model.config import ModelConfig
    from mcn_ros.model.results import Results


class Outputs:
    """The lifecycle publishers of one configured model for one camera, by name (``detections``,
    ``label_info``, ``poses``, ``pose_info``, ``segmentation``, ``segmentation_label_info``,
    ``segmentation_color``, ``debug_image``).

    The camera named "" publishes ``~/detections``, ...; a camera ``front`` publishes ``~/front/detections``,
    .... The latched ``~/label_info``, ``~/pose_info`` and ``~/segmentation/label_info`` belong to the node:
    one camera's Outputs has them.
    """

    def __init__(self, camera: str = "") -> None:
        self.camera = camera
        self.publishers: dict[str, Any] = {}
        self.config: ModelConfig | None = None
        self.palette = color_palette(0)

    def topic(self, leaf: str) -> str:
        """The private topic ``leaf`` of this camera (``~/<camera>/<leaf>``, or ``~/<leaf>`` for "")."""
        return f"~/{self.camera}/{leaf}" if self.camera else f"~/{leaf}"

    def create(
        self,
        create: Callable[..., Any],
        config: ModelConfig,
        depth: int,
        reliable: bool,
        info: bool = True,
        overridden: Callable[[str], bool] = lambda topic: False,
    ) -> None:
        """Create the topics of the tasks ``config`` has with ``create`` (the node's
        ``create_lifecycle_publisher``); ``info``: also the node's latched label and pose info.

        A topic that ``overridden`` says the user gave ``qos_overrides.<topic>.publisher.<policy>`` values for
        takes them (history, depth, reliability) over the QoS given here. Only those: rclpy declares the
        override parameters read-only with the QoS of the first publisher and never undeclares them, so a
        topic declared for would keep that QoS through cleanup and configure with other settings."""
        publishers = self.publishers

        def overridable(topic: str) -> dict[str, Any]:
            if not overridden(topic):
                return {}
            return {"qos_overriding_options": QoSOverridingOptions.with_default_policies()}

        # A new profile for each publisher: rclpy writes a topic's overrides into the profile it is given.
        def add(key: str, message_type: Any) -> None:
            if key in NODE_TOPICS:
                if info:
                    latched = QoSProfile(
                        depth=1,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL,
                    )
                    topic = f"~/{NODE_TOPICS[key]}"
                    publishers[key] = create(message_type, topic, latched, **overridable(topic))
            else:
                qos = QoSProfile(
                    depth=depth,
                    history=HistoryPolicy.KEEP_LAST,
                    reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                )
                topic = self.topic(CAMERA_TOPICS[key])
                publishers[key] = create(message_type, topic, qos, **overridable(topic))

        if config.detection is not None:
            add("detections", Detection2DArray)
            add("label_info", LabelInfo)
        if config.pose is not None:
            add("poses", HumanPose2DArray)
            add("pose_info", PoseInfo)
        if config.segmentation is not None:
            add("segmentation", Image)
            add("segmentation_color", Image)
            add("segmentation_label_info", LabelInfo)
        add("debug_image", Image)
        class_counts = [len(c.classes) for c in (config.detection, config.segmentation) if c is not None]
        self.palette = color_palette(max(class_counts))  # one colour per class id, shared by all drawings
        self.config = config

    def destroy(self, destroy: Callable[[Any], Any]) -> None:
        """Destroy every publisher with ``destroy`` (the node's ``destroy_lifecycle_publisher``)."""
        for publisher in self.publishers.values():
            destroy(publisher)
        self.publishers.clear()
        self.palette = color_palette(0)
        self.config = None

    def publish_info(self, header: Header, settings: FrameSettings) -> None:
        """(Re)publish the latched LabelInfos and PoseInfo with the current thresholds."""
        publishers = self.publishers
        detection = self.config.detection if self.config is not None else None
        if "label_info" in publishers and detection is not None:
            publishers["label_info"].publish(
                messages.label_info_message(header, detection.classes, settings.score_threshold)
            )
        segmentation = self.config.segmentation if self.config is not None else None
        if "segmentation_label_info" in publishers and segmentation is not None:
            publishers["segmentation_label_info"].publish(
                messages.segmentation_label_info_message(header, segmentation.classes)
            )
        if "pose_info" in publishers:
            publishers["pose_info"].publish(messages.pose_info_message(header, settings.keypoint_threshold))

    def _listened(self, name: str) -> bool:
        publisher = self.publishers.get(name)
        return publisher is not None and publisher.get_subscription_count() > 0

    def wanted_tasks(self, settings: FrameSettings, available: frozenset[str]) -> frozenset[str]:
        """Enabled tasks the model has and somebody listens to (the debug image listens to all)."""
        debug = self._listened("debug_image")
        wanted = set()
        if debug or self._listened("detections"):
            wanted.add("detection")
        if debug or self._listened("poses"):
            wanted.add("pose")
        if debug or self._listened("segmentation") or self._listened("segmentation_color"):
            wanted.add("segmentation")
        return frozenset(wanted & settings.tasks & available)

    def publish(
        self, header: Header, pixels: np.ndarray, color_order: str, results: Results, settings: FrameSettings
    ) -> None:
        """Every output of one frame that somebody listens to, stamped with the input ``header``."""
        publishers = self.publishers
        if results.detections is not None and self._listened("detections"):
            publishers["detections"].publish(messages.detections_message(header, results.detections))
        if results.poses is not None and self._listened("poses"):
            publishers["poses"].publish(
                messages.poses_message(header, results.poses, settings.keypoint_threshold)
            )
        color = None  # the coloured class map, made once for both topics that show it
        debug = self._listened("debug_image")
        if results.segmentation is not None:
            class_map = results.segmentation
            if self._listened("segmentation"):
                publishers["segmentation"].publish(
                    messages.image_message(header, class_map, class_map_encoding(class_map))
                )
            shown = self._listened("segmentation_color")
            if shown or debug:
                color = colorize(class_map, self.palette)
                if shown:
                    publishers["segmentation_color"].publish(messages.image_message(header, color, "rgb8"))
        if debug:
            detection = self.config.detection if self.config is not None else None
            classes = detection.classes if detection is not None else ()
            drawn = draw_results(
                pixels, results, classes, self.palette, settings.keypoint_threshold, segmentation_rgb=color,
                color_order=color_order,
            )  # fmt: skip
            publishers["debug_image"].publish(messages.image_message(header, drawn, "rgb8"))
