"""What launch/mcn.launch.py makes of its arguments, as plain functions (no launch, launch_ros or rclpy here).

The launch file performs its arguments' substitutions and hands the strings to these functions, so the
decisions are tested where launch_ros is not installed (test/test_launch_args.py).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mcn_ros.ros.camera_names import check_camera_names

NODE_NAME = "mcn_node"
RVIZ_PACKAGE = "rviz2"
#: The ``image`` launch argument's default: the single camera's topic.
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
#: In the ``image`` launch argument, stands for each camera's name (``image:=/sensing/{camera}/image_raw``).
CAMERA_FIELD = "{camera}"

_TRUE, _FALSE = ("true", "1"), ("false", "0")  # what launch's IfCondition accepts, in any case


def parse_bool(name: str, text: str) -> bool:
    """A boolean launch argument: true/false or 1/0 (any case), as launch's conditions read them."""
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ValueError(f"launch argument {name}:={text!r}: expected true or false")


def parse_cameras(text: str) -> list[str]:
    """The ``cameras`` launch argument: names separated by commas, optionally in brackets ("[front,back]")."""
    names = [name.strip() for name in text.strip().removeprefix("[").removesuffix("]").split(",")]
    names = [name for name in names if name]
    problem = check_camera_names(names)
    if problem is not None:
        raise ValueError(f"launch argument cameras:={text!r}: {problem}")
    return names


def cameras_in_params_file(
    params_file: str | Path, node_name: str = NODE_NAME, namespace: str = ""
) -> list[str]:
    """The ``cameras`` a node parameter file gives the node ``node_name`` in ``namespace``, by rcl's rules:
    each section names a node by its full name (a name without a leading slash is taken from the root, a
    namespace may hold its nodes as a nested section), ``*`` stands for one name token and ``**`` for any
    number, and of the sections that match, the last one in the file that sets ``cameras`` wins. A value
    that is no list of valid camera names is a ValueError naming the file (the node would refuse it too,
    after the launch file had made remappings of it)."""
    data = yaml.safe_load(Path(params_file).read_text()) or {}
    full_name = f"{node_namespace(namespace).rstrip('/')}/{node_name}"
    value: Any = []
    for pattern, parameters in _sections(data, ""):
        if "cameras" in parameters and _node_pattern(pattern).fullmatch(full_name):
            value = parameters["cameras"] or []
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"parameter file {params_file}: cameras should be a list of names, got {value!r}")
    problem = check_camera_names(value)
    if problem is not None:
        raise ValueError(f"parameter file {params_file}: {problem}")
    return list(value)


def _sections(data: Any, prefix: str) -> list[tuple[str, Mapping[str, Any]]]:
    """(node name pattern, ros__parameters) of every section of a parameter file, in the file's order."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    if not isinstance(data, Mapping):
        return found
    for key, value in data.items():
        if not isinstance(value, Mapping):
            continue
        name = f"{prefix}/{str(key).strip('/')}"
        parameters = value.get("ros__parameters")
        if isinstance(parameters, Mapping):
            found.append((name, parameters))
        else:
            found += _sections(value, name)
    return found


def _node_pattern(pattern: str) -> re.Pattern[str]:
    """A parameter file's node name pattern as a regular expression over full node names."""
    parts = []
    for token in pattern.strip("/").split("/"):
        if token == "**":
            parts.append("(?:/[^/]+)*")
        else:
            parts.append("/" + "[^/]+".join(re.escape(piece) for piece in token.split("*")))
    return re.compile("".join(parts))


def image_remappings(
    image: str, cameras: list[str], camera_topics: str = ""
) -> tuple[list[tuple[str, str]], str | None]:
    """The node's input remappings, and a note for the launch log where an argument is not used.

    One camera: its ``image`` topic is the ``image`` argument. Named cameras listen on ``<name>/image``;
    ``camera_topics`` (``name=topic`` pairs, comma-separated) remaps each camera it names, and an ``image``
    holding ``{camera}`` remaps every other camera to it with its name filled in
    (``image:=/sensing/camera/{camera}/image_raw``). ros2 launch passes no ``-r`` remappings to a node, so
    these are the way to point named cameras at a rig's topics.
    """
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in camera_topics.split(",")):
        if not item:
            continue
        name, equals, topic = (text.strip() for text in item.partition("="))
        if not equals or not name or not topic:
            raise ValueError(f"launch argument camera_topics: {item!r} is not name=topic")
        if name not in cameras:
            raise ValueError(
                f"launch argument camera_topics: no camera {name!r} (cameras: {', '.join(cameras) or 'none'})"
            )
        pairs[name] = topic
    templated = CAMERA_FIELD in image
    if not cameras:
        if templated:
            raise ValueError(f"launch argument image:={image!r}: {CAMERA_FIELD} needs named cameras")
        return [("image", image)], None
    # The single camera's remapping is kept too: harmless for named cameras (none listens on `image`), and
    # right should the node not have the cameras read here.
    remappings = [] if templated else [("image", image)]
    for name in cameras:
        target = pairs.get(name) or (image.replace(CAMERA_FIELD, name) if templated else None)
        if target is not None:
            remappings.append((f"{name}/image", target))
    note = None
    if not templated and image != DEFAULT_IMAGE_TOPIC:
        note = (
            f"image:={image} is the single camera's topic and is not used with named cameras: give "
            f"image:=/path/{CAMERA_FIELD}/image_raw or camera_topics:=name=topic,..."
        )
    return remappings, note


def parameter_overrides(
    weights: str,
    autostart: str,
    default_params_file: bool,
    cameras: str = "",
    image_transport: str = "",
    use_sim_time: str = "",
) -> dict[str, str | bool | list[str]]:
    """The node parameters that the ``weights``, ``autostart``, ``cameras``, ``image_transport`` and
    ``use_sim_time`` launch arguments set.

    Arguments given (non-empty) override the parameter file (the node checks ``image_transport``'s value
    as it checks the file's). ``autostart`` not given is true with the installed default parameter file (a
    plain ``ros2 launch`` serves at once, as users without a lifecycle manager expect) and left to the file
    when the user names a parameter file of their own.
    """
    overrides: dict[str, str | bool | list[str]] = {}
    if use_sim_time:
        overrides["use_sim_time"] = parse_bool("use_sim_time", use_sim_time)
    if cameras:
        overrides["cameras"] = parse_cameras(cameras)
    if image_transport:
        overrides["image_transport"] = image_transport
    if weights:
        overrides["weights"] = weights
    if autostart:
        overrides["autostart"] = parse_bool("autostart", autostart)
    elif default_params_file:
        overrides["autostart"] = True
    return overrides


#: The severities ``--log-level`` takes (rcutils'), in any case.
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def log_level_arguments(level: str) -> list[str]:
    """The node's ROS arguments for the ``log_level`` launch argument: none where it is empty (the node's
    default, info), else ``--log-level <level>``."""
    if not level.strip():
        return []
    if level.strip().lower() not in LOG_LEVELS:
        raise ValueError(f"launch argument log_level:={level!r}: expected one of {', '.join(LOG_LEVELS)}")
    return ["--log-level", level.strip().lower()]


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


def cameras_rviz_config(
    config: Mapping[str, Any], cameras: list[str], node_name: str = NODE_NAME
) -> dict[str, Any]:
    """config/mcn.rviz (loaded YAML) for a node with named ``cameras``: the node's image displays once per
    camera (``/mcn_node/<camera>/...``); the raw camera display is left out. No cameras: ``config`` as is."""
    out = copy.deepcopy(dict(config))
    if not cameras:
        return out
    manager = out.get("Visualization Manager", {})
    node_prefix = f"/{node_name}/"
    displays = []
    for camera in cameras:
        for display in manager.get("Displays", []):
            topic = (display.get("Topic") or {}).get("Value")
            if isinstance(topic, str) and topic.startswith(node_prefix):
                copied = copy.deepcopy(display)
                copied["Name"] = f"{display.get('Name', 'MCN')} ({camera})"
                copied["Topic"]["Value"] = f"{node_prefix}{camera}/{topic.removeprefix(node_prefix)}"
                displays.append(copied)
    manager["Displays"] = displays
    return out


def write_rviz_config(
    source: str | Path, namespace: str, image_topic: str, cameras: list[str] | None = None
) -> Path:
    """A copy of the RViz config ``source`` for a node launched in ``namespace`` (with named ``cameras``, if
    any), written under ``$ROS_HOME/mcn_ros`` (``~/.ros/mcn_ros``) in a file named by its content: each
    launch with the same arguments reuses one file instead of leaving a new one behind."""
    config = cameras_rviz_config(yaml.safe_load(Path(source).read_text()), cameras or [])
    text = yaml.safe_dump(namespaced_rviz_config(config, namespace, image_topic), sort_keys=False)
    name = f"rviz_{hashlib.sha256(text.encode()).hexdigest()[:16]}.rviz"
    try:
        folder = Path(os.environ.get("ROS_HOME") or Path.home() / ".ros") / "mcn_ros"
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # no home, or a read-only one (a container): a temporary file then
        with tempfile.NamedTemporaryFile("w", prefix="mcn_", suffix=".rviz", delete=False) as handle:
            handle.write(text)
        return Path(handle.name)
    # Written whole, then renamed: an RViz started by another launch may be reading the file.
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".rviz_", suffix=".tmp", delete=False) as handle:
        handle.write(text)
    Path(handle.name).replace(folder / name)
    return folder / name


def rviz_missing_note() -> str | None:
    """None where the rviz2 package is installed (in the ament index), else the warning that the launch file
    logs when it starts the node without RViz: a machine without a display stack still gets its perception."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix(RVIZ_PACKAGE)
    except PackageNotFoundError:
        distro = os.environ.get("ROS_DISTRO")
        where = f"apt install ros-{distro}-rviz2" if distro else "it comes with a ROS 2 distro, not pip"
        return (
            f"rviz:=true, but the {RVIZ_PACKAGE} package is not installed ({where}): "
            "starting the node without RViz"
        )
    return None
