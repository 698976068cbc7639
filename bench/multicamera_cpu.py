"""Six cameras through one node: batched (one forward for the frames of all cameras) against one at a time.

The node runs as users run it (``python -m mcn_ros.ros.node``, a separate process, ``cameras`` set), over DDS
on this machine. Each camera publishes a 640x480 rgb8 image at ``--rate`` Hz, faster than the node can
answer, so what is measured is the node's sustained throughput: frames answered per second over all cameras
(a frame counts when its detections, poses and segmentation all arrived), with per-camera end-to-end latency
(publish -> last of the three outputs) p50 / p95. Both modes are the same node code: ``max_batch_size`` 0
(all waiting cameras in one batch) or 1 (one camera per forward). The modes alternate ``--rounds`` times so
that a slow spell of the machine falls on both. The node and the driver load config/fastdds.xml (shared
memory sized for camera frames, what the launch file gives the node) unless the environment names a profile.

Writes ``bench/results/multicamera_cpu.json`` (figures, command, machine, versions, git commit) and ``.md``;
the headline is ``batched_vs_sequential_throughput``. Usage::

    python bench/multicamera_cpu.py [--config config/models/resnet18_det80_seg80_pose_512.yaml]
        [--cameras 6] [--rate 10] [--seconds 30] [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import cpu_description, git_commit, machine, repo_relative, versions, write_record
from _node_driver import Driver, node_command

from mcn_ros.ros.domain import claim_domain_id
from mcn_ros.ros.fastdds import PROFILE_VARIABLES, use_shipped_profile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CAMERA_NAMES = ("front", "front_left", "front_right", "back", "back_left", "back_right", "left", "right")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, default=ROOT / "config/models/resnet18_det80_seg80_pose_512.yaml"
    )
    parser.add_argument("--cameras", type=int, default=6, choices=range(2, len(CAMERA_NAMES) + 1))
    parser.add_argument("--rate", type=float, default=10.0, help="Hz per camera")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per mode and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--warmup", type=float, default=8.0, help="seconds before measuring, per mode and round"
    )
    parser.add_argument("--quick", action="store_true", help="a short check of the script (not a result)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:  # written beside the system's temporary files, never into bench/results
        args.seconds, args.rounds, args.warmup = 6.0, 1, 4.0
        if args.results == RESULTS:
            args.results = Path(tempfile.gettempdir()) / "mcn_bench_quick"
    return args


def make_weights(config_path: Path, out: Path) -> Path:
    """Random-init weights of ``config_path`` in the project's format (speed does not depend on training)."""
    import torch

    from mcn_ros.model.config import ModelConfig
    from mcn_ros.model.mcn import MultitaskCenterNet
    from mcn_ros.model.weights import save_weights

    config = ModelConfig.from_yaml(config_path)
    torch.manual_seed(0)
    return save_weights(out, MultitaskCenterNet(config), config, {"command": "bench/multicamera_cpu.py"})


def render(record: dict[str, Any]) -> str:
    modes, cpu = record["modes"], cpu_description(record["machine"])
    lines = [
        "# Several cameras in one node (CPU)",
        "",
        f"`{record['command']}`",
        "",
        f"{record['cameras']} cameras x 640x480 rgb8 at {record['rate_hz']} Hz each, "
        f"model `{record['model']}` (input {record['input_size'][0]}x{record['input_size'][1]}), "
        f"{cpu}. "
        "A frame counts when its detections, poses and "
        "segmentation all arrived; latency is publish -> last of the three. Fast DDS profile: "
        f"{record.get('fastdds_profile') or 'none (Fast DDS defaults)'}.",
        "",
        "| mode | answered frames/s (all cameras) | latency p50 ms (worse round) | p95 ms (worse round) | "
        "per-camera answered |",
        "|---|---|---|---|---|",
    ]
    for name in ("batched", "sequential"):
        m = modes[name]
        counts = ", ".join(str(v["answered"]) for v in m["per_camera"].values())
        lines.append(
            f"| {name} | {m['throughput_fps']} | {m['latency_p50_ms']} | {m['latency_p95_ms']} | {counts} |"
        )
    lines += ["", f"**batched / sequential throughput: {record['batched_vs_sequential_throughput']}x**", ""]
    return "\n".join(lines)


def combine(rounds: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Several rounds of one mode as one: counts summed; latency p50 / p95 the worse round's (each round's
    own percentiles are kept in ``rounds``)."""
    answered = sum(r["answered"] for r in rounds)
    per_camera: dict[str, dict[str, Any]] = {}
    for camera in rounds[0]["per_camera"]:
        values = [r["per_camera"][camera] for r in rounds]
        per_camera[camera] = {
            "answered": sum(v["answered"] for v in values),
            "latency_p50_ms": max((v["latency_p50_ms"] or 0.0) for v in values),
            "latency_p95_ms": max((v["latency_p95_ms"] or 0.0) for v in values),
        }
    return {
        "sent": sum(r["sent"] for r in rounds),
        "answered": answered,
        "throughput_fps": round(answered / (seconds * len(rounds)), 3),
        "latency_p50_ms": max((r["latency_p50_ms"] or 0.0) for r in rounds),
        "latency_p95_ms": max((r["latency_p95_ms"] or 0.0) for r in rounds),
        "per_camera": per_camera,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/multicamera_cpu.py", *(sys.argv[1:] if argv is None else argv)])
    cameras = list(CAMERA_NAMES[: args.cameras])
    os.environ.setdefault("ROS_DOMAIN_ID", str(claim_domain_id(150, 60)))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    use_shipped_profile()  # as the launch file gives the node; the driver's cameras send with it
    profile = os.environ.get(PROFILE_VARIABLES[0]) or os.environ.get(PROFILE_VARIABLES[1])
    from mcn_ros.model.config import ModelConfig

    config = ModelConfig.from_yaml(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_weights(args.config, Path(tmp) / "model.safetensors")
        command_line = node_command(weights, "multicamera_node", f"cameras:=[{','.join(cameras)}]")
        node = subprocess.Popen(command_line, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        driver = Driver(cameras, args.rate)
        results: dict[str, list[dict[str, Any]]] = {"batched": [], "sequential": []}
        try:
            driver.wait_for_node()
            stamp = 1_000_000_000
            for round_index in range(args.rounds):
                for mode, size in (("batched", 0), ("sequential", 1)):
                    driver.set_batch_size(size)
                    _, stamp = driver.publish_for(args.warmup, stamp)
                    window = driver.publish_for(args.seconds, stamp)
                    stamp = window[1]
                    measured = driver.measure(window, args.seconds)
                    print(
                        f"round {round_index + 1} {mode}: {measured['throughput_fps']} frames/s", flush=True
                    )
                    results[mode].append(measured)
        finally:
            driver.close()
            node.terminate()
            node.wait(timeout=30)
    modes = {mode: combine(rounds, args.seconds) for mode, rounds in results.items()}
    sequential = modes["sequential"]["throughput_fps"]
    record = {
        "command": command,
        "quick": args.quick,
        "cameras": len(cameras),
        "rate_hz": args.rate,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "model": config.name,
        "input_size": list(config.input_size),
        "fastdds_profile": repo_relative(profile),
        "modes": modes,
        "batched_vs_sequential_throughput": round(modes["batched"]["throughput_fps"] / sequential, 3)
        if sequential
        else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
    }
    write_record(args.results, "multicamera_cpu", record, render(record))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
