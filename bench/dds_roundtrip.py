"""Camera frames between two processes over Fast DDS: with its defaults against config/fastdds.xml.

    python bench/dds_roundtrip.py [--frames 40]

Two processes on this machine (bench/_dds_echo.py): one publishes an rgb8 frame (reliable, depth 1), the
other republishes it, the first waits for it to come back before sending the next; the round trip, two
transfers, is timed for 640x480, 1280x720 and 1920x1080 frames. Both processes run with Fast DDS's defaults
(512 KiB shared-memory segment), then both with the profile the launch file hands to the node (16 MiB).

Writes bench/results/dds_roundtrip.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from _common import git_commit, machine, repo_relative, versions, write_record

from mcn_ros.ros.domain import claim_domain_id
from mcn_ros.ros.fastdds import PROFILE_VARIABLES, profile_environment, shipped_profile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HELPER = Path(__file__).resolve().parent / "_dds_echo.py"
SIZES = ((480, 640), (720, 1280), (1080, 1920))


def round_trips(frames: int, environment: dict[str, str], domain: int) -> dict[str, list[float]]:
    """Round-trip milliseconds per size, both processes with ``environment``."""
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
    env |= environment | {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    echo = subprocess.Popen([sys.executable, str(HELPER), "echo"], env=env, stderr=subprocess.DEVNULL)
    try:
        sizes = [str(v) for size in SIZES for v in size]
        done = subprocess.run(
            [sys.executable, str(HELPER), "ping", str(frames), *sizes],
            env=env, capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
    finally:
        echo.terminate()
        echo.wait(timeout=30)
    result: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def figures(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(samples, 50)), 2),
        "p95_ms": round(float(np.percentile(samples, 95)), 2),
        "n": len(samples),
    }


def render(record: dict[str, Any]) -> str:
    host = record["machine"]
    lines = [
        "# Camera frames between two processes: Fast DDS defaults against config/fastdds.xml",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git']}; {host.get('cpu')}, "
        f"{host.get('affinity')} CPUs). Round trip (publish, the other process republishes, received), "
        "reliable, one frame at a time; both processes with the same Fast DDS setting.",
        "",
        "| frame | bytes | defaults p50 / p95 ms | profile p50 / p95 ms | speed-up (p50) |",
        "|---|---:|---:|---:|---:|",
    ]
    for size, row in record["sizes"].items():
        default, profile = row["defaults"], row["profile"]
        lines.append(
            f"| {size} rgb8 | {row['bytes']} | {default['p50_ms']} / {default['p95_ms']} | "
            f"{profile['p50_ms']} / {profile['p95_ms']} | {default['p50_ms'] / profile['p50_ms']:.1f}x |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=40, help="timed frames per size and setting")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    clean = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
    with_profile = profile_environment(clean, shipped_profile())
    defaults = round_trips(args.frames, {}, claim_domain_id(170, 50))
    profile = round_trips(args.frames, with_profile, claim_domain_id(170, 50))
    record: dict[str, Any] = {
        "command": shlex.join(
            ["python", "bench/dds_roundtrip.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile_environment": {k: repo_relative(v) for k, v in with_profile.items()},
        "sizes": {
            f"{w}x{h}": {
                "bytes": h * w * 3,
                "defaults": figures(defaults[f"{w}x{h}"]),
                "profile": figures(profile[f"{w}x{h}"]),
            }
            for h, w in SIZES
        },
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
    }
    write_record(args.results, "dds_roundtrip", record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
