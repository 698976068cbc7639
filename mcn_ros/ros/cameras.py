"""One camera of the node: its input topic, its outputs, its frame accounting.

The single-camera node (parameter ``cameras`` empty) has one camera named "": it listens on ``image`` and
publishes ``~/detections``, ``~/poses``, ... as it always did. A named camera ``front`` listens on
``front/image`` and publishes ``~/front/detections``, ``~/front/poses``, ...; every output carries the
header of the image it was computed from.
"""

from __future__ import annotations

from typing import Any

from mcn_ros.ros.frames import FrameStats
from mcn_ros.ros.outputs import Outputs


class Camera:
    """A camera's subscriptions, outputs, frame statistics, the tasks it wanted last and its last error."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outputs = Outputs(name)
        self.stats = FrameStats()
        self.subscriptions: list[Any] = []
        self.computed_tasks: frozenset[str] = frozenset()
        self.last_error = ""

    @property
    def image_topic(self) -> str:
        """The input topic, relative to the node's namespace (remappable)."""
        return f"{self.name}/image" if self.name else "image"
