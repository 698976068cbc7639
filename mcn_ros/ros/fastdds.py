"""The Fast DDS profile for camera-sized messages (config/fastdds.xml) and when to hand it to a process.

Plain functions of paths and environments (no rclpy, no launch), used by the launch file, the replay
runner, ``make demo`` and the node benchmarks. A profile the user chose always wins: nothing is set when
either Fast DDS variable is already set, or when another middleware than Fast DDS is selected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: Fast DDS 3.x (Kilted) reads the first, 2.x (Humble, Jazzy) the second.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
PROFILE_NAME = "fastdds.xml"
_CHECKOUT = Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME


def shipped_profile(environ: Mapping[str, str] | None = None) -> Path | None:
    """config/fastdds.xml of this checkout, else of the installed package (ament index), else None."""
    env = os.environ if environ is None else environ
    candidates = [_CHECKOUT]
    candidates += [
        Path(prefix) / "share" / "mcn_ros" / "config" / PROFILE_NAME
        for prefix in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
        if prefix
    ]
    return next((path for path in candidates if path.is_file()), None)


def profile_environment(environ: Mapping[str, str], profile: str | Path | None) -> dict[str, str]:
    """The variables to add to ``environ`` so that Fast DDS loads ``profile``; empty when ``profile`` is
    None or empty, the user set either variable (even empty), or ``RMW_IMPLEMENTATION`` is not Fast DDS."""
    if not profile or any(name in environ for name in PROFILE_VARIABLES):
        return {}
    rmw = environ.get("RMW_IMPLEMENTATION", "")
    if rmw and not rmw.startswith("rmw_fastrtps"):
        return {}
    return dict.fromkeys(PROFILE_VARIABLES, str(Path(profile).resolve()))


def use_shipped_profile() -> dict[str, str]:
    """Set the shipped profile in this process's environment (before its first DDS participant, and for
    the processes it starts) where :func:`profile_environment` allows; returns what was set."""
    added = profile_environment(os.environ, shipped_profile())
    os.environ.update(added)
    return added
