"""What a report records about where its figures come from: machine, library versions, git commit, weights.

``bench/_common.py`` records the same facts for benchmark results through these functions (its own list of
packages, no ROS entries, its checkout's commit).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcn_ros.bag import BagError

if TYPE_CHECKING:
    from mcn_ros.model.config import ModelConfig

#: Distributions whose versions a replay report records.
PACKAGES = ("torch", "numpy", "opencv-python-headless", "pycocotools", "rosbags", "timm", "safetensors")
#: CPU flags that change how fast the kernels run (SIMD width, bf16/int8 dot products).
SPEED_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


def machine() -> dict[str, Any]:
    """Platform, CPU model and its speed-relevant flags, CPU count and the CPUs this process may use."""
    cpu = platform.processor()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == platform.processor():
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                found = line.split(":", 1)[1].split()
                flags = sorted(f for f in found if f in SPEED_FLAGS or f.startswith("avx512"))
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "host": platform.node(),
    }


def versions(packages: Sequence[str] = PACKAGES, ros: bool = True) -> dict[str, str]:
    """Python's version, with ``ros`` the ROS distro (if sourced), the installed versions of ``packages``
    (distribution names; "not installed" when missing) and, with ``ros``, rclpy's when it is installed."""
    found = {"python": platform.python_version()}
    if ros:
        found["ros_distro"] = os.environ.get("ROS_DISTRO", "unset")
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    if ros:
        with contextlib.suppress(PackageNotFoundError):
            found["ros-rclpy"] = version("ros-rclpy")
    return found


def git_state(root: Path | None = None, ignore: Sequence[str] = ()) -> tuple[str | None, bool | None]:
    """HEAD's commit of the checkout at ``root`` (default: the source checkout this package runs from) and
    whether tracked files differ from it, changes under the ``ignore`` folders (relative to ``root``) aside;
    (None, None) outside a git checkout."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", *_whole_tree_except(ignore)],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (head or None), bool(status.strip())


def _whole_tree_except(ignore: Sequence[str]) -> list[str]:
    """``git status`` pathspecs: the whole work tree (wherever ``root`` sits in it) minus the ``ignore``
    folders, relative to ``root``; none without folders to ignore (git's default is the whole tree)."""
    return ["--", ":/", *(f":(exclude){path}" for path in ignore)] if ignore else []


def git_commit(root: Path | None = None, ignore: Sequence[str] = ()) -> str | None:
    """:func:`git_state` as one string: the commit, with ``-dirty`` when tracked files differ from it."""
    head, dirty = git_state(root, ignore)
    return None if head is None else f"{head}-dirty" if dirty else head


def weights_metadata(weights: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The weights file's model config and provenance (:func:`mcn_ros.model.weights.read_metadata`); a file
    that does not load raises :class:`~mcn_ros.bag.BagError`."""
    from mcn_ros.model.weights import WeightsError, read_metadata

    try:
        return read_metadata(weights)
    except WeightsError as error:
        raise BagError(str(error)) from error


def weights_info(weights: Path) -> dict[str, Any]:
    """What a report records about the weights: path, sha256, model, backbone, input size, tasks, origin."""
    from mcn_ros.bag.bagio import content_hash

    config, provenance = weights_metadata(weights)
    return {
        "path": str(weights.resolve()),
        "sha256": content_hash(weights),
        "model": config.name,
        "backbone": config.backbone,
        "input_size": list(config.input_size),
        "tasks": sorted(config.tasks),
        "provenance": provenance,
    }
