"""Helpers the benchmark scripts share: the machine and library versions a result was measured with, and
how fractions are printed.

The scripts run as ``python bench/NAME.py``, which puts ``bench/`` on the import path: they import this
module as ``_common``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: Distributions whose versions a benchmark result records.
PACKAGES: tuple[str, ...] = ("torch", "torchvision", "timm", "numpy", "pycocotools", "opencv-python-headless")


def machine() -> dict[str, Any]:
    """Platform, CPU model, CPU count and how many CPUs this process may use."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


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
