"""Shared test set-up: an isolated ROS 2 domain per test run, discovery limited to this machine."""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import NoReturn

import pytest
from needs import unavailable

from mcn_ros.ros.domain import claim_domain_id

# Each pytest run gets its own DDS domain, whatever the shell exported (a developer's shell often names the
# domain of a live robot), so that the tests' nodes and frames never reach another run or a running system;
# MCN_TEST_DOMAIN_ID chooses it. Discovery stays on this machine from Iron on (ROS_AUTOMATIC_DISCOVERY_RANGE).
# Humble ignores that; its ROS_LOCALHOST_ONLY is left unset, since it makes rmw_fastrtps set up transports
# of its own beside those of config/fastdds.xml, which some tests load, and no Humble runs on these machines
# to check that combination: there the run's own domain keeps its traffic apart.
# The domain is claimed (mcn_ros.ros.domain): two runs at once on one machine never share it.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("MCN_TEST_DOMAIN_ID") or str(claim_domain_id())
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def ros() -> None:
    """Require rclpy and the built messages; under `make test` (MCN_REQUIRE_ROS=1) their absence fails."""
    try:
        import rclpy  # noqa: F401
        import vision_msgs.msg  # noqa: F401

        import mcn_ros.msg  # noqa: F401
    except ImportError as error:
        unavailable(
            "MCN_REQUIRE_ROS",
            f"ROS 2 is required here but does not import ({error}); run `make setup`",
            f"ROS 2 not available ({error}); `source mcn_env.sh` after `make setup`",
        )


def _launch_missing(reason: str) -> NoReturn:
    """:func:`needs.unavailable` for the launch tools."""
    unavailable(
        "MCN_REQUIRE_LAUNCH",
        f"the launch tools are required here: {reason}",
        f"{reason}; test/test_launch_args.py checks the launch file's decisions without them",
    )


@pytest.fixture(scope="session")
def launch_tools() -> None:
    """Require launch and launch_ros (a sourced distro has them; PyPI has no wheels of them, so CI skips).
    ``launch.actions``, not ``launch``: the repository's launch/ folder imports as a namespace package."""
    for module in ("launch.actions", "launch_ros.actions"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            _launch_missing(f"{module.split('.')[0]} is not installed here")


@pytest.fixture(scope="session")
def ros2_launch(launch_tools: None) -> str:
    """The `ros2` command, where its `launch` verb (ros2launch) is installed."""
    ros2 = shutil.which("ros2")
    if ros2 is None:
        _launch_missing("no `ros2` command on PATH")
    if importlib.util.find_spec("ros2launch") is None:
        _launch_missing("ros2launch (the `ros2 launch` verb) is not installed here")
    return ros2


@pytest.fixture
def int8_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let precision int8 run on a CI machine without VNNI too: ONNX Runtime runs the same int8 graph on any
    x86 CPU (only slower there), so the graph and the backend are still what a test checks."""
    from mcn_ros.model import precision

    if not precision.cpu_int8_native():
        found = precision.cpu_flags()
        monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: found | {"avx512_vnni"})
