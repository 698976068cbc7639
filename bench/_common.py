"""Helpers the benchmark scripts share: the machine and library versions a result was measured with, and
how fractions are printed.

The scripts run as ``python bench/NAME.py``, which puts ``bench/`` on the import path: they import this
module as ``_common``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: Distributions whose versions a benchmark result records.
PACKAGES: tuple[str, ...] = ("torch", "torchvision", "timm", "numpy", "pycocotools", "opencv-python-headless")


#: CPU flags that change how fast (or whether) the kernels here run: SIMD width, bf16/int8 dot products.
SPEED_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


def machine() -> dict[str, Any]:
    """Platform, CPU model and its speed-relevant flags, CPU count and how many CPUs this process may use."""
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
    }


def git_commit() -> str | None:
    """HEAD's commit, with ``-dirty`` when tracked files differ from it (None outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if dirty else head


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Python's version and the installed versions of ``packages`` (distribution names)."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal ("n/a" for None)."""
    return "n/a" if value is None else f"{100 * value:.1f}"
