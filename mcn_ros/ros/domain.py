"""A ROS 2 domain of this machine's own for a test run, a benchmark or the demo: standard library only (the
tests' conftest claims it before anything imports rclpy).

Each run took ``1 + pid % 100``: two runs at once on one machine shared a domain about once in a hundred, and
their nodes, frames and counters mixed (discovery limited to localhost does not keep two local runs apart).
A domain is claimed with an exclusive ``flock`` on ``<tmp>/mcn_ros_domain_<id>.lock``, held until the process
ends (children inherit it: the lock goes when the last of them closes it); ``scripts/demo.sh`` claims its
domain with the same files through flock(1).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

#: The lock files of the domains this process holds (kept open: closing one would give its domain away).
_HELD: list[IO[bytes]] = []


def lock_path(domain: int) -> Path:
    """The lock file of ``domain``."""
    return Path(tempfile.gettempdir()) / f"mcn_ros_domain_{domain}.lock"


def claim_domain_id(first: int = 1, count: int = 100) -> int:
    """A domain in ``[first, first + count)`` that no other process of this machine holds, tried from the one
    this process's id picks onwards; RuntimeError when every one is held."""
    start = os.getpid() % count
    for offset in range(count):
        domain = first + (start + offset) % count
        handle = lock_path(domain).open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD.append(handle)
        return domain
    raise RuntimeError(f"every ROS domain from {first} to {first + count - 1} is held by another run here")
