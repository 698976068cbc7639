"""The colcon-installed package: what launch_ros and `ros2 launch` look for, parameter file, launch file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from nodetools import PARAMS_FILE, REPO, make_weights, stop_node

pytestmark = pytest.mark.usefixtures("ros")


@pytest.fixture(scope="module")
def prefix() -> Path:
    from ament_index_python.packages import get_package_prefix

    return Path(get_package_prefix("mcn_ros"))


def test_installed_layout_is_what_launch_ros_expects(prefix: Path) -> None:
    executable = prefix / "lib" / "mcn_ros" / "mcn_node"
    assert executable.is_file() and os.access(executable, os.X_OK)
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "mcn_ros").is_file()
    for relative in ("launch/mcn.launch.py", "config/mcn.yaml", "config/mcn.rviz", "package.xml"):
        installed = prefix / "share" / "mcn_ros" / relative
        assert installed.is_file(), relative
        assert installed.read_bytes() == (REPO / relative).read_bytes(), (
            f"{relative} is stale: run make setup"
        )


@pytest.mark.parametrize(
    "stops",
    [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)],
    ids=["ctrl-c", "sigterm", "ctrl-c-twice"],
)
def test_installed_executable_starts_the_node(
    prefix: Path, tmp_path: Path, stops: tuple[signal.Signals, ...]
) -> None:
    """The node serves, and ends cleanly (exit 0) on Ctrl-C, on SIGTERM (how systemd and container runtimes
    stop a process) and on Ctrl-C twice in a row (how it arrives under `ros2 launch` in a terminal)."""
    weights = make_weights(tmp_path / "model.safetensors")
    process = subprocess.Popen(
        [str(prefix / "lib" / "mcn_ros" / "mcn_node"), "--ros-args", "--params-file", str(PARAMS_FILE),
         "-p", f"weights:={weights}", "-p", "autostart:=true", "-r", "__node:=installed_node"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    lines: list[str] = []
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline and not any("active: listening on /image" in line for line in lines):
        lines.extend(process.stdout.readlines())
        time.sleep(0.2)
    log = "".join(lines) + stop_node(process, *stops)
    assert "active: listening on /image" in log, log
    assert process.returncode == 0, log
    assert "Traceback" not in log, log


def test_rviz_config_shows_the_node_images() -> None:
    rviz = yaml.safe_load((REPO / "config" / "mcn.rviz").read_text())
    topics = {d["Topic"]["Value"] for d in rviz["Visualization Manager"]["Displays"] if d.get("Enabled")}
    assert topics == {"/mcn_node/debug_image", "/mcn_node/segmentation/color"}


def test_launch_file_is_python() -> None:
    source = (REPO / "launch" / "mcn.launch.py").read_text()
    compile(source, "mcn.launch.py", "exec")  # at least valid Python everywhere


@pytest.mark.usefixtures("launch_tools")
def test_launch_file(prefix: Path, tmp_path: Path) -> None:
    from launch import LaunchContext, LaunchDescription
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    description = get_launch_description_from_python_launch_file(str(REPO / "launch" / "mcn.launch.py"))
    assert isinstance(description, LaunchDescription)
    context = LaunchContext()
    declared = description.get_launch_arguments()
    defaults = {a.name: "".join(s.perform(context) for s in a.default_value) for a in declared}
    assert {"weights", "params_file", "image", "namespace", "rviz", "autostart"} <= set(defaults)
    assert (defaults["weights"], defaults["autostart"]) == ("", "")  # the parameter file's values hold

    # Start the installed launch file for real and wait for the node's latched label map: once with weights
    # and autostart given as launch arguments, once with both only in a parameter file (issue #16).
    weights = make_weights(tmp_path / "model.safetensors")
    installed = prefix / "share" / "mcn_ros" / "launch" / "mcn.launch.py"
    params_file = tmp_path / "params.yaml"
    parameters = yaml.safe_load(PARAMS_FILE.read_text())
    parameters["/**"]["ros__parameters"].update(weights=str(weights), autostart=True)
    params_file.write_text(yaml.safe_dump(parameters))
    from mcn_ros.ros.launch_args import rviz_missing_note

    cases = [
        ("launched", [f"weights:={weights}", "autostart:=true"], "/camera/image_raw"),
        ("from_file", [f"params_file:={params_file}"], "/camera/image_raw"),
        (
            "two",
            [f"weights:={weights}", "autostart:=true", "cameras:=front,back"],
            "/two/front/image, /two/back/image",
        ),
        (  # named cameras pointed at a rig's topics: by the image pattern, and one by name
            "rig",
            [
                f"weights:={weights}",
                "autostart:=true",
                "cameras:=front,back",
                "image:=/cams/{camera}/raw",
                "camera_topics:=back=/rear/image",
            ],
            "/cams/front/raw, /rear/image",
        ),
    ]
    # use_sim_time: the node's clock waits for /clock (none here): the latched label map is stamped 0.
    sim = [f"weights:={weights}", "autostart:=true", "use_sim_time:=true", "log_level:=debug"]
    cases.append(("sim", sim, "/camera/image_raw"))
    no_rviz = rviz_missing_note()
    if no_rviz is not None:  # rviz:=true where RViz is not installed: a warning, and the node all the same
        rviz_arguments = [f"weights:={weights}", "autostart:=true", "rviz:=true"]
        cases.append(("no_rviz", rviz_arguments, "/camera/image_raw"))
    for namespace, arguments, listening in cases:
        launcher = subprocess.Popen(
            [sys.executable, "-c", LAUNCH_SCRIPT, str(installed), f"namespace:={namespace}", *arguments],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        stamps: list[int] = []
        log = assert_label_info_arrives(namespace, launcher, stamps)
        assert f"active: listening on {listening}" in log, log
        assert (stamps[0] == 0) == (namespace == "sim"), (namespace, stamps)
        assert "event: active" in log, log  # a lifecycle event launch received from the node
        assert ("[DEBUG]" in log) == (namespace == "sim"), log
        assert "process has finished cleanly" in log and launcher.returncode == 0, log
        assert (namespace == "no_rviz") == (no_rviz is not None and no_rviz in log), log


def test_ros2_launch_command_serves_and_stops_cleanly(ros2_launch: str, tmp_path: Path) -> None:
    """What users type: `ros2 launch mcn_ros mcn.launch.py weights:=...` with the installed default parameter
    file (autostart true) serves; Ctrl-C in the terminal (to the whole process group: the node gets it from
    the terminal and again from launch) ends the node cleanly."""
    weights = make_weights(tmp_path / "model.safetensors")
    launcher = subprocess.Popen(
        [ros2_launch, "launch", "mcn_ros", "mcn.launch.py", f"weights:={weights}", "namespace:=cli"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    log = assert_label_info_arrives("cli", launcher)
    assert "active: listening on /camera/image_raw" in log, log
    assert "process has finished cleanly" in log, log
    assert launcher.returncode == 0, log


def assert_label_info_arrives(
    namespace: str, launcher: subprocess.Popen[str], stamps: list[int] | None = None
) -> str:
    """Waits for the launched node's latched label map, then Ctrl-C's the launcher's process group (started
    with ``start_new_session``) as a terminal does; returns everything it printed (``stamps``: receives the
    label map's stamp, in seconds)."""
    from nodetools import Client
    from vision_msgs.msg import LabelInfo

    c = Client("mcn_node", namespace=f"/{namespace}")
    try:
        c.subscribe("label_info", LabelInfo, latched=True)
        arrived = c.wait_for(lambda: bool(c.messages("label_info")), 60)
        if arrived and stamps is not None:
            stamps.append(c.messages("label_info")[0].header.stamp.sec)
    finally:
        c.close()
        log = stop_node(launcher, group=True)
    assert arrived, log
    assert "Traceback" not in log, log
    return log


# The launch file's node is a launch_ros LifecycleNode: its transitions reach launch as events (logged here).
LAUNCH_SCRIPT = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription, LogInfo, RegisterEventHandler
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch_ros.event_handlers import OnStateTransition
path, *pairs = sys.argv[1:]
arguments = dict(pair.split(":=", 1) for pair in pairs)
service = LaunchService()
include = IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=arguments.items())
active = RegisterEventHandler(OnStateTransition(goal_state="active", entities=[LogInfo(msg="event: active")]))
service.include_launch_description(LaunchDescription([active, include]))
sys.exit(service.run())
"""


def test_plain_colcon_build_of_a_workspace_holding_the_repo(tmp_path: Path) -> None:
    """What a user with a sourced environment does: the repo in ws/src, `colcon build`, nothing else."""
    import shutil

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    source = tmp_path / "ws" / "src" / "mcn_ros"
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    colcon = shutil.which("colcon")
    assert colcon, "colcon is not on PATH (source mcn_env.sh)"
    build = subprocess.run(
        [colcon, "build", "--event-handlers", "console_direct-"],
        cwd=tmp_path / "ws", capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # ros_deps/ (the vision_msgs twin) is skipped through COLCON_IGNORE; the sourced vision_msgs is used.
    assert sorted(p.name for p in (tmp_path / "ws" / "install").iterdir() if p.is_dir()) == ["mcn_ros"]
    assert os.access(tmp_path / "ws" / "install" / "mcn_ros" / "lib" / "mcn_ros" / "mcn_node", os.X_OK)


OLD_STYLE_PYTEST_PLUGIN = """
def pytest_pycollect_makemodule(path, parent):  # pytest < 7's argument, as launch_testing still declares
    return None
"""


def test_pytest_starts_beside_a_sourced_distros_launch_testing_plugins(tmp_path: Path) -> None:
    """ros-<distro>-ros-base installs launch_testing and launch_testing_ros, whose pytest plugins (entry
    points launch_testing, launch_ros) declare hooks with the `path` argument pytest 9 removed: loaded, they
    stop pytest before it collects anything. The project's pytest options leave them out."""
    dist = tmp_path / "fake_launch_testing-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-launch-testing\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        "[pytest11]\nlaunch_testing = old_launch_testing_hooks\nlaunch_ros = old_launch_ros_hooks\n"
    )
    (tmp_path / "old_launch_testing_hooks.py").write_text(OLD_STYLE_PYTEST_PLUGIN)
    (tmp_path / "old_launch_ros_hooks.py").write_text(
        "def pytest_launch_collect_makemodule(path, parent, entrypoint):\n    return None\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "test/test_launch_args.py"]
    done = subprocess.run(
        collect, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The fake plugins are found and would stop pytest without the project's options (-c /dev/null: none).
    bare = subprocess.run(
        [*collect, "-c", os.devnull, "--rootdir", str(REPO)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bare.returncode != 0 and "pytest_pycollect_makemodule" in bare.stdout + bare.stderr
