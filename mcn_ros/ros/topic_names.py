"""The node's output topics under its private namespace (``~/``), in one place for the node that publishes
them, the replay that subscribes to them and the rosbag evaluation that looks for them in a bag. Standard
library only: the rosbag tools run without rclpy."""

from __future__ import annotations

#: Each camera's outputs: key -> topic leaf, published as ``~/<leaf>`` (or ``~/<camera>/<leaf>`` for a
#: named camera).
CAMERA_TOPICS: dict[str, str] = {
    "detections": "detections",
    "poses": "poses",
    "segmentation": "segmentation",
    "segmentation_color": "segmentation/color",
    "debug_image": "debug_image",
}
#: The node's own latched topics (``~/<leaf>``, once per node whatever its cameras): key -> leaf.
NODE_TOPICS: dict[str, str] = {
    "label_info": "label_info",
    "segmentation_label_info": "segmentation/label_info",
    "pose_info": "pose_info",
}
