"""What a report records about where its figures come from: machine, library versions, git commit.

(The same facts as ``bench/_common.py`` records for benchmark results, available to the installed package.)
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

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


def versions() -> dict[str, str]:
    """Python, ROS distro (if sourced) and the installed versions of :data:`PACKAGES`."""
    found = {
        "python": platform.python_version(),
        "ros_distro": os.environ.get("ROS_DISTRO", "unset"),
    }
    for name in (*PACKAGES, "ros-rclpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            if name != "ros-rclpy":
                found[name] = "not installed"
    return found


def git_commit() -> str | None:
    """The commit of the source checkout this package runs from (``-dirty`` with local changes), or None."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head
