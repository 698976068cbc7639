"""Which camera names the node takes (``cameras``): standard library only, because the launch file checks
them too, and it runs under the distro's own Python (``ros2 launch``), which has none of the node's
dependencies (pydantic, OpenCV, torch) when they live in a virtual environment."""

from __future__ import annotations

from collections.abc import Sequence


def check_camera_names(names: Sequence[str]) -> str | None:
    """Why ``names`` is not a valid ``cameras`` value (distinct ROS name tokens), or None."""
    for name in names:
        if not name or not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
            return f"camera name {name!r} must be letters, digits and underscores, not starting with a digit"
    if len(set(names)) != len(names):
        return f"camera names must be distinct: {list(names)}"
    return None
