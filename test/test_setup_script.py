"""scripts/setup.sh refuses a set-up it cannot serve with one line, before it creates or changes anything.

Each case runs the real script from a copy of the repository's scripts/ and requirements/ in a temporary
folder, so the refusal is checked against an empty tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nodetools import REPO

MADE_BY_SETUP = (".venv", ".venv-jazzy", "build", "install", "build-jazzy", "install-jazzy", "mcn_env.sh")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for folder in ("scripts", "requirements"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def run_setup(
    tree: Path, env: dict[str, str], path_extra: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "AMENT", "COLCON", "MCN_"))}
    base.pop("PYTHONPATH", None)
    if path_extra is not None:
        base["PATH"] = f"{path_extra}:{base['PATH']}"
    return subprocess.run(
        ["bash", str(tree / "scripts" / "setup.sh")],
        env={**base, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess[str], tree: Path, *expected: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[setup] error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert [name for name in MADE_BY_SETUP if (tree / name).exists()] == []


def fake_python(folder: Path, version: str) -> Path:
    """An executable that answers the version query as another Python would (setup.sh asks nothing else)."""
    folder.mkdir(exist_ok=True)
    path = folder / f"python{version}"
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def fake_ros2(folder: Path) -> Path:
    """``folder`` holding a ``ros2`` that does nothing: the distro's command line, which setup.sh only looks
    for (and at where it lies)."""
    folder.mkdir()
    (folder / "ros2").write_text("#!/bin/sh\nexit 0\n")
    (folder / "ros2").chmod(0o755)
    return folder


def test_unknown_distro(tree: Path) -> None:
    result = run_setup(tree, {"ROS_DISTRO": "foxy"})
    assert_refused(result, tree, "ROS_DISTRO=foxy", "humble jazzy kilted", "unset ROS_DISTRO")


def test_unknown_wheels(tree: Path) -> None:
    assert_refused(run_setup(tree, {"MCN_ROS_WHEELS": "rolling"}), tree, "kilted (default) or jazzy")


def test_a_python_the_wheels_cannot_serve(tree: Path) -> None:
    python = fake_python(tree / "fake", "3.13")
    result = run_setup(tree, {"PYTHON": str(python)})
    assert_refused(result, tree, "Python 3.13", "CPython 3.11 only", "PYTHON=python3.11")


def test_a_python_without_its_headers(tree: Path) -> None:
    """A stock Python 3.11 without python3.11-dev: refused before the long install, naming the package."""
    folder = tree / "fake"
    folder.mkdir()
    python = folder / "python3.11"
    python.write_text('#!/bin/sh\ncase "$*" in *Python.h*) exit 1 ;; esac\necho 3.11\n')
    python.chmod(0o755)
    result = run_setup(tree, {"PYTHON": str(python)})
    assert_refused(result, tree, "Python 3.11's headers", "apt install python3.11-dev")


def test_a_python_the_distro_pins_cannot_serve(tree: Path) -> None:
    python = fake_python(tree / "fake", "3.9")
    result = run_setup(tree, {"ROS_DISTRO": "humble", "PYTHON": str(python)})
    assert_refused(result, tree, "Python 3.9", "3.10 (Humble) and 3.12")


def test_a_distro_that_is_not_installed(tree: Path) -> None:
    if Path("/opt/ros/jazzy").exists():
        pytest.skip("Jazzy is installed here")
    result = run_setup(tree, {"ROS_DISTRO": "jazzy", "PYTHON": sys.executable})
    assert_refused(result, tree, "ROS_DISTRO=jazzy", "no such distro is installed")


def test_a_distro_without_vision_msgs(tree: Path, ros: None) -> None:
    # rclpy imports (the wheels in this venv) but vision_msgs does not (it lives in install/, off PYTHONPATH):
    # what a sourced distro without ros-<distro>-vision-msgs looks like to setup.sh. A `ros2` on PATH stands
    # for the distro's command line, which setup.sh only looks for.
    bin_dir = fake_ros2(tree / "distro-bin")
    result = run_setup(tree, {"ROS_DISTRO": "jazzy", "PYTHON": sys.executable}, path_extra=bin_dir)
    assert_refused(result, tree, "no vision_msgs", "apt install ros-jazzy-vision-msgs")


def _pins(path: Path) -> dict[str, str]:
    """name -> version of each ``name==version`` line (extras and markers dropped, names normalised)."""
    pins = {}
    for line in path.read_text().splitlines():
        requirement = line.split("#")[0].split(";")[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==", 1)
            pins[name.split("[")[0].strip().lower().replace("_", "-")] = version.strip()
    return pins


@pytest.mark.parametrize(
    ("lock", "sources"),
    [
        ("kilted", ("runtime", "dev", "ros-wheels")),
        ("jazzy", ("distro", "dev", "ros-wheels-jazzy")),
    ],
)
def test_each_lock_holds_every_direct_pin(lock: str, sources: tuple[str, ...]) -> None:
    """The lock setup.sh installs the wheels set-ups under must agree with the pins it was made from: a pin
    changed without running scripts/lock_requirements.sh again fails here (pip would refuse the pair)."""
    locked = _pins(REPO / "requirements" / f"lock-wheels-{lock}.txt")
    assert len(locked) > 150  # the packages pulled in, not only the pins
    for source in sources:
        for name, version in _pins(REPO / "requirements" / f"{source}.txt").items():
            assert locked.get(name) == version, (source, name, version, locked.get(name))
    assert "requirements/lock-wheels-$ROS_WHEELS.txt" in (REPO / "scripts" / "setup.sh").read_text()


def test_bench_pins_agree_with_the_locks() -> None:
    """`make bench` installs requirements/bench.txt with --no-deps on top of a wheels set-up: a package both
    pin at different versions was silently replaced under the locked environment (idna 3.21 -> 3.20)."""
    bench = _pins(REPO / "requirements" / "bench.txt")
    for lock in ("kilted", "jazzy"):
        locked = _pins(REPO / "requirements" / f"lock-wheels-{lock}.txt")
        assert {n: (v, locked[n]) for n, v in bench.items() if n in locked and locked[n] != v} == {}, lock


def test_a_python_in_the_checkouts_venv_is_not_the_one_a_set_up_uses(tree: Path) -> None:
    """With mcn_env.sh sourced, python3 is the checkout's .venv, which a set-up of another kind removes: it
    removed it and then ran the Python inside it (exit 127, .venv gone). Now the Python it came from runs,
    and a refusal still leaves everything as it was."""
    venv = tree / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    base = subprocess.run(
        [str(venv / "bin" / "python3"), "-c", "import sys; print(sys._base_executable)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    bin_dir = fake_ros2(tree / "distro-bin")
    env = {"ROS_DISTRO": "jazzy", "PATH": f"{venv / 'bin'}:{bin_dir}:{os.environ['PATH']}"}
    result = run_setup(tree, env)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "rclpy does not import with" in line and f"with {base};" in line, line
    assert (venv / "bin" / "python3").exists()


def test_a_distro_whose_setup_script_cannot_be_found(tree: Path, ros: None) -> None:
    """mcn_env.sh sourced /opt/ros/<distro>/setup.bash whatever distro was sourced: a source build elsewhere
    passed every check and got an activation script that fails. Now the setup.bash above the distro's ros2
    is taken, and without one the set-up says so before it makes anything."""
    if Path("/opt/ros/jazzy/setup.bash").exists():
        pytest.skip("Jazzy is installed here")
    bin_dir = fake_ros2(tree / "distro-bin")
    env = {"ROS_DISTRO": "jazzy", "PYTHON": sys.executable, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    assert_refused(run_setup(tree, env, path_extra=bin_dir), tree, "cannot find the setup.bash", str(bin_dir))
