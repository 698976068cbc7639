"""The ``rosbags`` typestore of the node's messages: ROS 2 Kilted's standard types plus vision_msgs and
mcn_ros's own, registered from their ``.msg`` definitions.

The definitions are found where ROS installs them, ``<prefix>/share/<package>/msg/*.msg`` for each prefix
of ``AMENT_PREFIX_PATH`` (a sourced distro's vision_msgs, or the ones this repository builds), falling back to
the repository's folders (``ros_deps/vision_msgs/msg``, ``msg/``) in a plain source checkout. Identical
definitions give identical RIHS01 type hashes, so the bags written with this store carry the hashes a real
distro expects (tested against the generated ``share/<package>/msg/<Name>.json``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from mcn_ros.bag import BagError

REPO = Path(__file__).resolve().parents[2]
#: Packages registered on top of the Kilted store, with the repository folder used when no prefix has them.
PACKAGES: dict[str, Path] = {
    "vision_msgs": REPO / "ros_deps" / "vision_msgs" / "msg",
    "mcn_ros": REPO / "msg",
}

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
DETECTIONS = "vision_msgs/msg/Detection2DArray"
LABEL_INFO = "vision_msgs/msg/LabelInfo"
POSES = "mcn_ros/msg/HumanPose2DArray"
POSE_INFO = "mcn_ros/msg/PoseInfo"
CAMERA_TYPES = (IMAGE, COMPRESSED_IMAGE)


def message_dir(package: str) -> Path:
    """The folder holding ``package``'s ``.msg`` files: first in ``AMENT_PREFIX_PATH``, else the repo's."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        candidate = Path(prefix) / "share" / package / "msg"
        if prefix and any(candidate.glob("*.msg")):
            return candidate
    fallback = PACKAGES.get(package, REPO / "msg" / "none")
    if any(fallback.glob("*.msg")):
        return fallback
    raise BagError(
        f"no message definitions of {package} found (searched AMENT_PREFIX_PATH share/{package}/msg and "
        f"{fallback}); run `make setup` or source a ROS 2 workspace that has {package}"
    )


@functools.lru_cache(maxsize=1)
def typestore() -> Any:
    """Kilted's typestore with vision_msgs and mcn_ros registered (built once per process)."""
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for package in PACKAGES:
        for path in sorted(message_dir(package).glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store
