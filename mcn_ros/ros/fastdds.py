"""The Fast DDS profile for camera-sized messages (config/fastdds.xml) and when to hand it to a process.

Plain functions of paths and environments (no rclpy, no launch), used by the launch file, the replay
runner, ``make demo`` and the node benchmarks. A profile the user chose always wins: nothing is set when
either Fast DDS variable is already set, or when another middleware than Fast DDS is selected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: Fast DDS 3.x (Kilted and later, libfastdds) reads the first, 2.x (Humble, Jazzy, libfastrtps) the second;
#: the 3.x middleware warns that the second is deprecated: only the one the installed Fast DDS reads is set.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FAST_DDS_2_DISTROS = ("foxy", "galactic", "humble", "iron", "jazzy")


def fast_dds_major(environ: Mapping[str, str]) -> int | None:
    """3 or 2: the Fast DDS library found under the ROS prefixes (``AMENT_PREFIX_PATH``), else what
    ``ROS_DISTRO`` ships, else None."""
    for prefix in environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        lib = Path(prefix) / "lib" if prefix else None
        if lib is not None and lib.is_dir():
            if any(lib.glob("libfastdds.so*")):
                return 3
            if any(lib.glob("libfastrtps.so*")):
                return 2
    distro = environ.get("ROS_DISTRO", "")
    return None if not distro else 2 if distro in FAST_DDS_2_DISTROS else 3


PROFILE_NAME = "fastdds.xml"
#: A profile file that sets nothing (Fast DDS's defaults): what "no profile" hands the node, which would
#: otherwise load PROFILE_NAME itself.
DEFAULTS_PROFILE_NAME = "fastdds_defaults.xml"
_CHECKOUT = Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME


def shipped_profile(environ: Mapping[str, str] | None = None, name: str = PROFILE_NAME) -> Path | None:
    """config/``name`` (fastdds.xml) of this checkout, else of the installed package (ament index), else
    None."""
    env = os.environ if environ is None else environ
    candidates = [_CHECKOUT.with_name(name)]
    candidates += [
        Path(prefix) / "share" / "mcn_ros" / "config" / name
        for prefix in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
        if prefix
    ]
    return next((path for path in candidates if path.is_file()), None)


def profile_environment(environ: Mapping[str, str], profile: str | Path | None) -> dict[str, str]:
    """The variable to add to ``environ`` so that Fast DDS loads ``profile`` (the one the installed Fast DDS
    reads, :func:`fast_dds_major`; both when that is unknown); empty when ``profile`` is None or empty, the
    user set either variable (even empty), or ``RMW_IMPLEMENTATION`` is not Fast DDS. A ``profile`` that
    would be used but is no file raises FileNotFoundError."""
    if not profile or any(name in environ for name in PROFILE_VARIABLES):
        return {}
    rmw = environ.get("RMW_IMPLEMENTATION", "")
    if rmw and not rmw.startswith("rmw_fastrtps"):
        return {}
    if not Path(profile).is_file():
        raise FileNotFoundError(f"Fast DDS profile {profile} does not exist (an empty value uses none)")
    fast_dds_3, fast_dds_2 = PROFILE_VARIABLES
    names = {3: (fast_dds_3,), 2: (fast_dds_2,), None: PROFILE_VARIABLES}[fast_dds_major(environ)]
    return dict.fromkeys(names, str(Path(profile).resolve()))


def use_shipped_profile() -> dict[str, str]:
    """Set the shipped profile in this process's environment (before its first DDS participant, and for
    the processes it starts) where :func:`profile_environment` allows; returns what was set."""
    added = profile_environment(os.environ, shipped_profile())
    os.environ.update(added)
    return added
