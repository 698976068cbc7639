"""Which camera names the node takes (``cameras``): standard library only, because the launch file checks
them too, and it runs under the distro's own Python (``ros2 launch``), which has none of the node's
dependencies (pydantic, OpenCV, torch) when they live in a virtual environment."""

from __future__ import annotations

import re
from collections.abc import Sequence

#: A ROS name token: ASCII letters, digits and underscores, not starting with a digit (rcl's rule; ``isalnum``
#: also takes "é" or "ï", which the parameter check passed and topic creation or rcl's remap lexer refused).
NAME_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_camera_names(names: Sequence[str]) -> str | None:
    """Why ``names`` is not a valid ``cameras`` value (distinct ROS name tokens), or None."""
    for name in names:
        if not NAME_TOKEN.fullmatch(name):
            return (
                f"camera name {name!r} must be ASCII letters, digits and underscores, "
                "not starting with a digit"
            )
    if len(set(names)) != len(names):
        return f"camera names must be distinct: {list(names)}"
    return None
