"""What the launch file makes of its arguments (mcn_ros/ros/launch_args.py): runs without launch_ros.

test/test_package.py::test_launch_file starts the real launch file where launch_ros is installed.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodetools import REPO

from mcn_ros.ros.launch_args import (
    log_level_arguments,
    namespaced_rviz_config,
    node_namespace,
    parameter_overrides,
    parse_bool,
    resolve_topic,
    rviz_missing_note,
    write_rviz_config,
)

LAUNCH_FILE = REPO / "launch" / "mcn.launch.py"
RVIZ_FILE = REPO / "config" / "mcn.rviz"


def test_the_launch_file_needs_none_of_the_nodes_dependencies() -> None:
    """`ros2 launch` runs the launch file under the distro's own Python, which does not see a virtual
    environment's packages: every mcn_ros module the launch file imports must load with the standard library
    and PyYAML alone (pydantic, OpenCV, numpy, torch and rclpy blocked here; it imported pydantic and OpenCV
    through the parameter table)."""
    import subprocess
    import sys

    tree = ast.parse(LAUNCH_FILE.read_text())
    modules = sorted(
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mcn_ros")
    )
    assert modules, "the launch file imports mcn_ros modules"
    script = (
        "import importlib, importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in {'pydantic', 'cv2', 'numpy', 'torch', 'rclpy'}:\n"
        "            raise ImportError('not available to the launch file: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_only_the_launch_arguments_given_override_the_parameter_file() -> None:
    # A parameter file of the user's: its weights and autostart hold unless given on the command line.
    assert parameter_overrides("", "", default_params_file=False) == {}
    assert parameter_overrides("/m.safetensors", "", False) == {"weights": "/m.safetensors"}
    assert parameter_overrides("", "true", False) == {"autostart": True}
    assert parameter_overrides("m.safetensors", "False", False) == {
        "weights": "m.safetensors",
        "autostart": False,
    }
    assert parameter_overrides("", "1", False) == {"autostart": True}
    compressed = parameter_overrides("", "", False, image_transport="compressed")
    assert compressed == {"image_transport": "compressed"}
    with pytest.raises(ValueError, match="autostart:='yes please'"):
        parameter_overrides("", "yes please", False)
    assert [parse_bool("rviz", text) for text in ("true", "TRUE", "1", "false", "0")] == [1, 1, 1, 0, 0]
    assert parameter_overrides("", "", False, use_sim_time="true") == {"use_sim_time": True}
    assert parameter_overrides("", "", False, use_sim_time="0") == {"use_sim_time": False}
    with pytest.raises(ValueError, match="use_sim_time:='sim'"):
        parameter_overrides("", "", False, use_sim_time="sim")


def test_log_level_argument() -> None:
    assert log_level_arguments("") == []  # the node's default
    assert log_level_arguments("DEBUG") == ["--log-level", "debug"]
    assert log_level_arguments(" warn ") == ["--log-level", "warn"]
    with pytest.raises(ValueError, match="log_level:='verbose': expected one of debug, info, warn"):
        log_level_arguments("verbose")


def test_plain_launch_with_the_default_parameter_file_starts_serving() -> None:
    assert parameter_overrides("/m.safetensors", "", default_params_file=True) == {
        "weights": "/m.safetensors",
        "autostart": True,
    }
    assert parameter_overrides("", "false", default_params_file=True) == {"autostart": False}


def launch_argument_defaults() -> dict[str, str]:
    """The launch file's DeclareLaunchArgument names and literal defaults, read from its source."""
    defaults = {}
    for call in ast.walk(ast.parse(LAUNCH_FILE.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "DeclareLaunchArgument":
            name = ast.literal_eval(call.args[0])
            default = next(k.value for k in call.keywords if k.arg == "default_value")
            defaults[name] = ast.literal_eval(default) if isinstance(default, ast.Constant) else "<computed>"
    return defaults


def test_weights_and_autostart_launch_arguments_default_to_the_parameter_file() -> None:
    defaults = launch_argument_defaults()
    assert set(defaults) == {
        "params_file", "weights", "autostart", "image", "cameras", "camera_topics", "image_transport",
        "namespace", "use_sim_time", "log_level", "rviz", "fastdds_profile",
    }  # fmt: skip
    assert defaults["use_sim_time"] == defaults["log_level"] == ""  # the parameter file's, the node's default
    assert "LifecycleNode(" in LAUNCH_FILE.read_text()  # launch's lifecycle events reach the node
    assert defaults["image_transport"] == defaults["camera_topics"] == ""  # the parameter file's unless given
    assert "remappings=remappings" in LAUNCH_FILE.read_text()  # from image_remappings
    assert (defaults["weights"], defaults["autostart"]) == ("", "")
    assert "parameter_overrides(" in LAUNCH_FILE.read_text()
    # The Fast DDS profile: the installed config/fastdds.xml, handed to the node and RViz through the same
    # decision as everywhere else (test/test_fastdds.py), never overriding the user's environment.
    assert defaults["fastdds_profile"] == "<computed>"
    source = LAUNCH_FILE.read_text()
    assert "profile_environment(os.environ" in source and source.count("additional_env=dds_env") == 2


@pytest.mark.parametrize(
    ("namespace", "expected"), [("", "/"), ("/", "/"), ("robot", "/robot"), ("/a/b/", "/a/b")]
)
def test_node_namespace(namespace: str, expected: str) -> None:
    assert node_namespace(namespace) == expected


def test_topics_resolve_like_the_node_remapping() -> None:
    assert resolve_topic("/camera/image_raw", "robot") == "/camera/image_raw"
    assert resolve_topic("camera/image_raw", "robot") == "/robot/camera/image_raw"
    assert resolve_topic("camera/image_raw", "") == "/camera/image_raw"


def rviz_topics(config: dict[str, Any]) -> dict[str, str]:
    displays = config["Visualization Manager"]["Displays"]
    return {d["Name"]: d["Topic"]["Value"] for d in displays}


def test_rviz_topics_follow_the_namespace() -> None:
    original = yaml.safe_load(RVIZ_FILE.read_text())
    assert rviz_topics(namespaced_rviz_config(original, "", "/camera/image_raw")) == rviz_topics(original)

    moved = namespaced_rviz_config(original, "/robot/front", "image_raw")
    assert rviz_topics(moved) == {
        "MCN debug image": "/robot/front/mcn_node/debug_image",
        "MCN segmentation": "/robot/front/mcn_node/segmentation/color",
        "Camera": "/robot/front/image_raw",
    }
    assert rviz_topics(original)["MCN debug image"] == "/mcn_node/debug_image"  # the input is left alone
    moved["Visualization Manager"]["Displays"] = original["Visualization Manager"]["Displays"]
    assert moved == original  # nothing but topics changes


def test_rviz_subscribes_best_effort() -> None:
    """A best-effort reader gets a reliable publisher's images and a best-effort one's; a reliable reader
    would get nothing from the node started with publisher_reliability: best_effort."""
    displays = yaml.safe_load(RVIZ_FILE.read_text())["Visualization Manager"]["Displays"]
    policies = {d["Name"]: d["Topic"]["Reliability Policy"] for d in displays if "Topic" in d}
    assert policies and set(policies.values()) == {"Best Effort"}, policies


def test_the_rviz_copy_is_written_once_under_ros_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each launch with rviz:=true writes the namespaced copy under $ROS_HOME/mcn_ros, named by its content:
    launching again reuses the file (it left a new temporary file behind every time)."""
    monkeypatch.setenv("ROS_HOME", str(tmp_path))
    path = write_rviz_config(RVIZ_FILE, "robot", "/camera/image_raw")
    assert path.suffix == ".rviz" and path.parent == tmp_path / "mcn_ros"
    written = yaml.safe_load(path.read_text())
    assert written == namespaced_rviz_config(
        yaml.safe_load(RVIZ_FILE.read_text()), "robot", "/camera/image_raw"
    )
    assert rviz_topics(written)["MCN debug image"] == "/robot/mcn_node/debug_image"
    assert write_rviz_config(RVIZ_FILE, "robot", "/camera/image_raw") == path
    other = write_rviz_config(RVIZ_FILE, "other", "/camera/image_raw")
    assert other != path and rviz_topics(yaml.safe_load(other.read_text()))["MCN debug image"].startswith(
        "/other/"
    )
    assert sorted(p.name for p in (tmp_path / "mcn_ros").iterdir()) == sorted([path.name, other.name])
    # Where no folder can be made there (a read-only home in a container), a temporary file as before.
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    monkeypatch.setenv("ROS_HOME", str(blocked))
    fallback = write_rviz_config(RVIZ_FILE, "robot", "/camera/image_raw")
    try:
        assert fallback.is_file() and yaml.safe_load(fallback.read_text()) == written
    finally:
        fallback.unlink()


def test_cameras_argument_and_parameter_file() -> None:
    from mcn_ros.ros.launch_args import cameras_in_params_file, parse_cameras

    assert parse_cameras("front,back") == parse_cameras("[front, back]") == ["front", "back"]
    assert parameter_overrides("", "", False, cameras="front, back") == {"cameras": ["front", "back"]}
    with pytest.raises(ValueError, match="distinct"):
        parse_cameras("front,front")
    with pytest.raises(ValueError, match="camera name 'front/left'"):
        parse_cameras("front/left")
    six = ["front", "front_left", "front_right", "back", "back_left", "back_right"]
    assert cameras_in_params_file(REPO / "config" / "six_cameras.yaml") == six
    assert cameras_in_params_file(REPO / "config" / "mcn.yaml") == []


def test_cameras_of_a_parameter_file_are_checked(tmp_path: Path) -> None:
    """A scalar read as a list of letters, or a name the node refuses, made remappings (f/image, ...)
    before the node said no: the launch file refuses them with the file's name."""
    from mcn_ros.ros.launch_args import cameras_in_params_file

    path = tmp_path / "params.yaml"
    for value, match in (("front", "should be a list of names, got 'front'"), ("[front, 2nd]", "'2nd'"),
                         ("[a, a]", "distinct"), ("[1, 2]", "list of names")):  # fmt: skip
        path.write_text(f"/**:\n  ros__parameters:\n    cameras: {value}\n")
        with pytest.raises(ValueError, match=match) as error:
            cameras_in_params_file(path)
        assert str(path) in str(error.value)


def test_named_cameras_are_remapped_by_pattern_or_by_name() -> None:
    from mcn_ros.ros.launch_args import image_remappings

    assert image_remappings("/cam/raw", []) == ([("image", "/cam/raw")], None)
    # ros2 launch cannot pass -r to the node: the image pattern and camera_topics are the way.
    remaps, note = image_remappings("/sensing/{camera}/image_raw", ["front", "back"], "back=/rear/image")
    assert remaps == [("front/image", "/sensing/front/image_raw"), ("back/image", "/rear/image")]
    assert note is None
    # The default: <name>/image (the single camera's remapping kept: nothing listens on `image` then).
    assert image_remappings("/camera/image_raw", ["front"]) == ([("image", "/camera/image_raw")], None)
    remaps, note = image_remappings("/cam/raw", ["front"])  # a plain topic is the single camera's
    assert remaps == [("image", "/cam/raw")] and note is not None and "not used with named cameras" in note
    for bad, match in (("front", "not name=topic"), ("side=/x", "no camera 'side'"), ("=/x", "name=topic")):
        with pytest.raises(ValueError, match=match):
            image_remappings("/camera/image_raw", ["front"], bad)
    with pytest.raises(ValueError, match="needs named cameras"):
        image_remappings("/sensing/{camera}/image_raw", [])


def test_cameras_in_parameter_files_follow_rcl(tmp_path: Path) -> None:
    """The cameras the node gets from a parameter file, as rcl applies it (checked against rclpy: a plain
    key is a root node, wildcards, the last matching section wins)."""
    from mcn_ros.ros.launch_args import cameras_in_params_file

    path = tmp_path / "params.yaml"
    cases = [
        ("/car/mcn_node:\n  ros__parameters:\n    cameras: [a, b]\n", "car", ["a", "b"]),
        ("/car:\n  mcn_node:\n    ros__parameters:\n      cameras: [a, b]\n", "car", ["a", "b"]),
        ("mcn_node:\n  ros__parameters:\n    cameras: [a, b]\n", "", ["a", "b"]),
        ("mcn_node:\n  ros__parameters:\n    cameras: [a, b]\n", "car", []),  # the root's node only
        ("/**/mcn_node:\n  ros__parameters:\n    cameras: [a, b]\n", "car", ["a", "b"]),
        ("/car/*:\n  ros__parameters:\n    cameras: [a, b]\n", "car", ["a", "b"]),
        ("/other/mcn_node:\n  ros__parameters:\n    cameras: [a]\n", "car", []),
        (  # the last section that matches wins
            "/car/mcn_node:\n  ros__parameters:\n    cameras: [x]\n"
            "/**:\n  ros__parameters:\n    cameras: [a, b]\n",
            "car",
            ["a", "b"],
        ),
    ]
    for text, namespace, expected in cases:
        path.write_text(text)
        assert cameras_in_params_file(path, namespace=namespace) == expected, (text, namespace)


def test_rviz_shows_every_camera() -> None:
    from mcn_ros.ros.launch_args import cameras_rviz_config

    base = yaml.safe_load(RVIZ_FILE.read_text())
    assert cameras_rviz_config(base, []) == base
    config = namespaced_rviz_config(cameras_rviz_config(base, ["front", "back"]), "car", "/camera/image_raw")
    topics = [d["Topic"]["Value"] for d in config["Visualization Manager"]["Displays"] if d.get("Enabled")]
    assert topics == [
        "/car/mcn_node/front/debug_image",
        "/car/mcn_node/front/segmentation/color",
        "/car/mcn_node/back/debug_image",
        "/car/mcn_node/back/segmentation/color",
    ]


@pytest.mark.usefixtures("ros")
def test_rviz_left_out_with_a_warning_where_it_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rviz:=true without rviz2: the launch file logs this note and starts the node alone. The real ament
    index, over a prefix of our own: empty first, then registering rviz2 as its package does."""
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    note = rviz_missing_note()
    assert note is not None and "apt install ros-jazzy-rviz2" in note and "without RViz" in note
    monkeypatch.delenv("ROS_DISTRO")
    assert "it comes with a ROS 2 distro" in (rviz_missing_note() or "")
    marker = tmp_path / "share" / "ament_index" / "resource_index" / "packages" / "rviz2"
    marker.parent.mkdir(parents=True)
    marker.touch()
    assert rviz_missing_note() is None
