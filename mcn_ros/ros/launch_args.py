"""What launch/mcn.launch.py makes of its arguments, as plain functions (no launch, launch_ros or rclpy here).

The launch file performs its arguments' substitutions and hands the strings to these functions, so the
decisions are tested where launch_ros is not installed (test/test_launch_args.py).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

NODE_NAME = "mcn_node"

_TRUE, _FALSE = ("true", "1"), ("false", "0")  # what launch's IfCondition accepts, in any case


def parse_bool(name: str, text: str) -> bool:
    """A boolean launch argument: true/false or 1/0 (any case), as launch's conditions read them."""
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ValueError(f"launch argument {name}:={text!r}: expected true or false")


def parameter_overrides(weights: str, autostart: str, default_params_file: bool) -> dict[str, str | bool]:
    """The node parameters that the ``weights`` and ``autostart`` launch arguments set.

    Arguments given (non-empty) override the parameter file. ``autostart`` not given is true with the
    installed default parameter file (a plain ``ros2 launch`` serves at once, as users without a lifecycle
    manager expect) and left to the file when the user names a parameter file of their own.
    """
    overrides: dict[str, str | bool] = {}
    if weights:
        overrides["weights"] = weights
    if autostart:
        overrides["autostart"] = parse_bool("autostart", autostart)
    elif default_params_file:
        overrides["autostart"] = True
    return overrides


def node_namespace(namespace: str) -> str:
    """The fully qualified namespace of a node launched with ``namespace`` ("" or "/" is the root)."""
    parts = [part for part in namespace.split("/") if part]
    return "/" + "/".join(parts)


def resolve_topic(topic: str, namespace: str) -> str:
    """A topic name as a node in ``namespace`` resolves it (absolute names stay as they are)."""
    if topic.startswith("/"):
        return topic
    return f"{node_namespace(namespace).rstrip('/')}/{topic}"


def namespaced_rviz_config(
    config: Mapping[str, Any], namespace: str, image_topic: str, node_name: str = NODE_NAME
) -> dict[str, Any]:
    """config/mcn.rviz (loaded YAML) with its topics where a node launched in ``namespace`` has them.

    Topics of the node (``/mcn_node/...``) move under the namespace; the display named "Camera" shows
    ``image_topic`` (the ``image`` launch argument, resolved in the namespace like the node's remapping).
    """
    out = copy.deepcopy(dict(config))
    node_prefix = f"/{node_name}/"
    moved_prefix = f"{node_namespace(namespace).rstrip('/')}/{node_name}/"
    for display in out.get("Visualization Manager", {}).get("Displays", []):
        topic = display.get("Topic")
        if not isinstance(topic, dict) or not isinstance(topic.get("Value"), str):
            continue
        if topic["Value"].startswith(node_prefix):
            topic["Value"] = moved_prefix + topic["Value"].removeprefix(node_prefix)
        elif display.get("Name") == "Camera":
            topic["Value"] = resolve_topic(image_topic, namespace)
    return out


def write_rviz_config(source: str | Path, namespace: str, image_topic: str) -> Path:
    """A copy of the RViz config ``source`` for a node launched in ``namespace``, in a new temporary file."""
    config = namespaced_rviz_config(yaml.safe_load(Path(source).read_text()), namespace, image_topic)
    with tempfile.NamedTemporaryFile("w", prefix="mcn_", suffix=".rviz", delete=False) as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    return Path(handle.name)
