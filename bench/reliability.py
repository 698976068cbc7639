"""Reliability of the node under soak, overload, bad input and lifecycle churn, over real DDS.

    python bench/reliability.py [--quick] [--weights demo/mcn_demo.safetensors] [--out bench/results]

Starts the node as users start it (``python -m mcn_ros.ros.node ... -p autostart:=true``, the 128x128 demo
weights by default, ``image_transport:=both``, diagnostics every 0.1 s) in an isolated ROS domain on
loopback, talks to it through the replay player (:mod:`mcn_ros.ros.player`), and writes
``reliability.json`` and ``reliability.md``:

- **soak**: 10,000 frames in lockstep (320x240 synthetic scenes), every 100th a bad one; every good frame
  must be answered on every output, every bad one rejected with its reason; resident memory at frame 1,000
  and 10,000 (growth under 5 %).
- **overload**: frames at twice the processable rate (from the soak's median latency) for 60 s; latency p95
  (send to the last output) under two processing times (the node's own ``processing_p50_ms``, slot to
  publish, during the overload), and the node's ``received + lost`` equal to the frames sent.
- **bad inputs**: every bad frame, weights file and parameter value, each with the error the user sees and a
  good frame answered after it; then a cleanup/configure cycle.
- **churn**: 50 deactivate/cleanup/configure/activate cycles with frames flowing; memory within 5 %.

``--quick`` shrinks the counts (1,000 soak frames, 10 s overload, 5 cycles) to check the script in about two
minutes; its figures are not the recorded ones and it writes ``reliability_quick.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NODE = "/mcn_node"
TOPIC = "/camera/image_raw"
NODE_PARAMS = ["image_transport:=both", "diagnostics_period:=0.1"]


def synthetic_frames(count: int, folder: Path) -> list[bytes]:
    """Serialized bgr8 Images of ``count`` synthetic 320x240 scenes (the training package's generator)."""
    from _common import read_image
    from _node_probe import image_bytes

    from mcn_training.synthetic import generate_dataset

    paths = generate_dataset(folder, count, seed=0, image_size=(240, 320), split="val")
    frames = []
    for path in sorted(paths["images"].glob("*.jpg")):
        frames.append(image_bytes(read_image(path)))
    return frames


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import numpy as np
    from _common import read_image
    from _node_probe import Probe, bad_frames
    from _reliability_phases import bad_inputs, churn, next_stamp, overload, soak, timed

    from mcn_ros.bag.bagio import CameraFrame
    from mcn_ros.bag.run import NodeProcess, default_params_file, node_command

    goods = synthetic_frames(8, tmp / "images")
    first = read_image(sorted((tmp / "images" / "images" / "val").glob("*.jpg"))[0])
    bads = bad_frames(np.ascontiguousarray(first))
    command = node_command(Path(args.weights), NODE, TOPIC, default_params_file(), NODE_PARAMS)
    node = NodeProcess(command, tmp / "node.log")
    results: dict[str, Any] = {"node_command": shlex.join(command)}
    try:
        with Probe(node=NODE, publish_topic=TOPIC, abort_check=node.problem) as probe:
            probe.connect(CameraFrame(next_stamp(), 0, goods[0]), avoid_stamps=set(), warmup=3)
            # From now on failed transitions are what the bad-input phase asks for: only an exit aborts.
            probe.abort_check = lambda: node.problem() if node.process.poll() is not None else None
            results["soak"] = timed("soak", lambda: soak(probe, node, goods, bads, args.frames))
            processing_s = results["soak"]["latency_ms"]["p50"] / 1e3
            results["overload"] = timed(
                "overload", lambda: overload(probe, node, goods, processing_s, args.overload_s, tmp)
            )
            results["bad_inputs"] = timed(
                "bad inputs", lambda: bad_inputs(probe, node, goods[0], bads, Path(args.weights), tmp / "w")
            )
            results["churn"] = timed("churn", lambda: churn(probe, node, goods, args.cycles))
    finally:
        node.stop()
        results["node_log_tail"] = node.log_path.read_text(errors="replace").splitlines()[-20:]
    return results


def markdown(report: dict[str, Any]) -> str:
    soak, over, bad, churn = (report[k] for k in ("soak", "overload", "bad_inputs", "churn"))
    ok = {True: "yes", False: "**no**"}
    early, late = soak["rss_checkpoints"]
    lat = soak["latency_ms"]
    lines = [
        "# Reliability: soak, overload, bad input, lifecycle churn",
        "",
        f"Command: `{report['command']}` ({report['date']}, git {report['git_commit']}, "
        f"{report['machine'].get('cpu', '?')}, {report['machine'].get('affinity', '?')} CPUs usable, "
        f"torch {report['versions'].get('torch', '?')}). Weights: `{report['weights']}`. "
        f"{'**--quick: shrunk counts, not the recorded figures.**' if report['quick'] else ''}",
        "",
        f"Node: `{report['node_command']}`",
        "",
        "| phase | figure | value | passed |",
        "|---|---|---|---|",
        f"| soak | good frames answered | {soak['good_answered']} / {soak['good_frames']} | "
        f"{ok[soak['passed']]} |",
        f"| soak | bad frames rejected with their reason | {soak['bad_rejected_with_reason']} / "
        f"{soak['bad_frames']} | |",
        f"| soak | RSS at frame {early} -> {late} | {soak['rss_mb'][str(early)]} -> "
        f"{soak['rss_mb'][str(late)]} MB ({100 * soak['rss_growth']:+.1f} %) | |",
        f"| soak | lockstep latency p50 / p95 / p99 | {lat['p50']} / {lat['p95']} / {lat['p99']} ms | |",
        f"| overload | {over['rate_hz']} Hz (2x the processable rate) for {over['duration_s']} s | "
        f"{over['frames_sent']} sent, {over['frames_answered']} answered | {ok[over['passed']]} |",
        f"| overload | latency p50 / p95 (bound: 2 x {over['processing_ms']} ms, "
        f"{over['processing_source']}) | "
        f"{over['latency_ms']['p50']} / {over['latency_ms']['p95']} ms (< {over['p95_bound_ms']}) | |",
        f"| overload | node: received + lost = sent | {over['node_counts']['received']} + "
        f"{over['node_counts']['lost']} = {over['received_plus_lost']} (sent {over['frames_sent']}); dropped "
        f"{over['node_counts']['dropped']}, processed {over['node_counts']['processed']} | |",
        f"| bad inputs | refused, node still serving | {sum(r['refused'] for r in bad['cases'])} / "
        f"{len(bad['cases'])}; cleanup/configure after them: {ok[bad['cleanup_configure_cycle_ok']]} | "
        f"{ok[bad['passed']]} |",
        f"| churn | {churn['cycles']} cycles with frames flowing: RSS serving | {churn['rss_start_mb']} -> "
        f"{churn['rss_end_mb']} MB (max {churn['rss_max_mb']}, "
        f"{100 * churn['rss_growth_by_state']['serving']:+.1f} %) | {ok[churn['passed']]} |",
        f"| churn | RSS after cleanup, first -> last cycle | {churn['rss_unconfigured_mb'][0]} -> "
        f"{churn['rss_unconfigured_mb'][-1]} MB "
        f"({100 * churn['rss_growth_by_state']['unconfigured']:+.1f} %) | |",
        "",
        "## Bad inputs: what the user sees",
        "",
        "| input | refused | still serving | error the user sees |",
        "|---|---|---|---|",
    ]
    for row in bad["cases"]:
        serving = {True: "yes", False: "**no**", None: "n/a (unconfigured)"}[row["still_serving"]]
        error = str(row["error"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['kind']}: {row['case']} | {ok[bool(row['refused'])]} | {serving} | {error} |")
    lines += [
        "",
        "Frame errors are what `/diagnostics` shows as `last_error` (the log line says the same,",
        "rate-limited); parameter errors are the reason `ros2 param set` prints; weights errors are the",
        "node's log line `configure failed: ...` (the transition fails, the node stays up, unconfigured).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrunk counts (about two minutes)")
    parser.add_argument("--weights", default=str(ROOT / "demo" / "mcn_demo.safetensors"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    args.frames, args.overload_s, args.cycles = (1000, 10.0, 5) if args.quick else (10_000, 60.0, 50)
    # An isolated DDS domain on loopback, as the tests use (before rclpy or the node start).
    from mcn_ros.ros.domain import claim_domain_id

    os.environ.setdefault("ROS_DOMAIN_ID", str(claim_domain_id()))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    from _common import git_commit, machine, versions

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcn_reliability_") as tmp:
        results = run(args, Path(tmp))
    report = {
        "command": shlex.join(["python", "bench/reliability.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "weights": os.path.relpath(args.weights, ROOT),
        "quick": args.quick,
        "duration_s": round(time.monotonic() - started, 1),
        **results,
    }
    report["passed"] = all(report[k]["passed"] for k in ("soak", "overload", "bad_inputs", "churn"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "reliability_quick" if args.quick else "reliability"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(report))
    print(f"wrote {out / name}.json and .md: {'all passed' if report['passed'] else 'SOME FAILED'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
