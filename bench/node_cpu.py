"""The node's own cost: a 640x480 image published -> its outputs received over DDS, against the model runtime
alone on the same image in one process.

The node runs as users run it (``python -m mcn_ros.ros.node``, a separate process, one camera, CPU). Two
phases:

1. paired, ``--frames`` pairs: ``Predictor.predict`` once in this process (same weights, tasks, thresholds,
   torch threads), then one frame through the node in lockstep (publish, wait for its detections, poses
   and segmentation); latency p50 / p95 / p99 of each (node: publish -> last output). Alternating call by
   call, a drift of this shared machine falls on both alike (phases run one after the other differed by a
   fifth here);
2. sustained: frames published at ``--rate`` Hz (more than the node can take) for ``--seconds``; frames
   answered per second.

``overhead_ratio`` = (node lockstep p50 - predict p50) / predict p50: what the ROS path (serialisation,
DDS on loopback, conversion, messages, the inference thread's hand-off) adds to the model runtime. On this
shared 2-core machine it moved between runs by a few hundredths, so the record also gives its 95 %
bootstrap interval (pairs resampled) and the median of the per-pair ratios. The node
also reports its own processing time (frame taken -> outputs published) and latency (frame received ->
outputs published) in /diagnostics; their p50 over the last 5 s of the paired phase are recorded as
``node_processing_p50_ms`` and ``node_received_to_published_p50_ms``.

The node subscribes reliably here (``image_qos:=reliable``; the driver publishes reliably): with the default
best-effort subscription, Fast DDS on this machine lost about half of the 640x480 frames (0.9 MB, more than
its default shared-memory segment) even at 10 Hz, and a lost lockstep frame would never be answered. The
node counts such losses (``frames_lost`` in /diagnostics).

Fast DDS: the node and this driver load config/fastdds.xml (shared memory sized for camera frames, what
the launch file gives the node; ``--fastdds-profile none`` measures Fast DDS's defaults, where a 0.9 MB
frame does not fit the 512 KiB shared-memory segment and crosses loopback UDP in fragments).

``--int8``: the node and ``Predictor`` run ``backend:=onnxruntime precision:=int8`` (the random weights
calibrated on 8 camera-like frames first, the graph beside them), so the same two paths are compared in
int8 (recorded as ``--name node_cpu_int8``; the node runs torch's steps around ONNX Runtime's forward on
one thread, as it does with that backend, while ``Predictor`` here keeps the torch threads recorded);
``--bf16``: both run ``precision:=bf16`` (PyTorch, a CPU with native bf16; recorded as
``--name node_cpu_bf16``).

Writes ``bench/results/<name>.json`` (+ ``.md``; name node_cpu by default). Usage::

    python bench/node_cpu.py [--config config/models/resnet18_det80_seg80_pose_512.yaml] [--frames 120]
        [--seconds 20] [--rate 30] [--fastdds-profile shipped|none|PATH] [--int8 | --bf16] [--name node_cpu]
        [--quick]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from _common import PACKAGES, cpu_description, git_commit, machine, repo_relative, versions, write_record
from _node_driver import Driver, node_command
from multicamera_cpu import make_weights

from mcn_ros.ros.domain import claim_domain_id
from mcn_ros.ros.fastdds import DEFAULTS_PROFILE_NAME, PROFILE_VARIABLES, profile_environment, shipped_profile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCORE = 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, default=ROOT / "config/models/resnet18_det80_seg80_pose_512.yaml"
    )
    parser.add_argument("--frames", type=int, default=120, help="pairs of predict call and lockstep frame")
    parser.add_argument("--seconds", type=float, default=20.0, help="sustained phase")
    parser.add_argument("--rate", type=float, default=30.0, help="Hz in the sustained phase")
    parser.add_argument(
        "--fastdds-profile",
        default="shipped",
        help="Fast DDS profile for the node and this driver: shipped (config/fastdds.xml, what the launch "
        "file gives the node), none (Fast DDS's defaults), or a path; an environment that names one wins",
    )
    reduced = parser.add_mutually_exclusive_group()
    reduced.add_argument(
        "--int8",
        action="store_true",
        help="node and Predictor with backend onnxruntime, precision int8 (the weights calibrated on 8 "
        "camera-like frames first; a CPU with VNNI/AMX)",
    )
    reduced.add_argument(
        "--bf16", action="store_true", help="node and Predictor with precision bf16 (a CPU with native bf16)"
    )
    parser.add_argument("--name", default="node_cpu", help="results file name (default node_cpu)")
    parser.add_argument("--quick", action="store_true", help="a short check of the script (not a result)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:  # written beside the system's temporary files, never into bench/results
        args.frames, args.seconds = 5, 5.0
        if args.results == RESULTS:
            args.results = Path(tempfile.gettempdir()) / "mcn_bench_quick"
    return args


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples)
    return {f"p{q}_ms": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)} | {"n": len(samples)}


def overhead_figures(predict: list[float], node: list[float], resamples: int = 2000) -> dict[str, Any]:
    """``overhead_ratio`` from the p50s, its 95 % bootstrap interval (pairs resampled together) and the
    median of the per-pair ratios (node_i - predict_i) / predict_i."""
    predict_ms, node_ms = np.asarray(predict), np.asarray(node)
    if predict_ms.shape != node_ms.shape or predict_ms.size == 0:
        raise ValueError(f"need as many predict as node times, got {predict_ms.size} and {node_ms.size}")
    picks = np.random.default_rng(0).integers(0, predict_ms.size, (resamples, predict_ms.size))
    predict_p50 = np.median(predict_ms[picks], axis=1)
    ratios = (np.median(node_ms[picks], axis=1) - predict_p50) / predict_p50
    low, high = np.percentile(ratios, [2.5, 97.5])
    p50 = float(np.median(predict_ms))
    return {
        "overhead_ratio": round((float(np.median(node_ms)) - p50) / p50, 3),
        "overhead_ratio_ci95": [round(float(low), 3), round(float(high), 3)],
        "overhead_ratio_paired_median": round(float(np.median((node_ms - predict_ms) / predict_ms)), 3),
    }


def node_status(driver: Any) -> list[dict[str, str]]:
    """A holder of the latest key-values of the node's inference status on /diagnostics, with the message's
    stamp (``stamp_s``, when its statistics window ended): kept up to date, each message's values replacing
    the last ones at once, so that one read of ``[0]`` is one message's."""
    from diagnostic_msgs.msg import DiagnosticArray

    latest: list[dict[str, str]] = [{}]

    def record(message: Any) -> None:
        for status in message.status:
            if status.name.endswith(": inference"):
                values = {kv.key: kv.value for kv in status.values}
                stamp = message.header.stamp
                values["stamp_s"] = str(stamp.sec + stamp.nanosec * 1e-9)
                latest[0] = values

    driver.node.create_subscription(DiagnosticArray, "/diagnostics", record, 10)
    return latest


def runtime_settings(int8: bool, bf16: bool = False) -> dict[str, str]:
    """The node parameters (and Predictor arguments) of the measured runtime."""
    if int8:
        return {"backend": "onnxruntime", "precision": "int8"}
    return {"backend": "torch", "precision": "bf16" if bf16 else "fp32"}


def calibrate(weights: Path, folder: Path) -> None:
    """Write the int8 graph beside ``weights`` (where the node and Predictor look), calibrated on 8
    camera-like frames (bench/e2e_cpu.py's)."""
    import cv2
    from e2e_cpu import calibration_images

    from mcn_ros.model.quantize import quantize

    folder.mkdir()
    for index, frame in enumerate(calibration_images()):
        cv2.imwrite(str(folder / f"{index:02d}.png"), frame)
    quantize(weights, folder)


def paired_times(
    driver: Any, weights: Path, image: np.ndarray, pairs: int, settings: dict[str, str]
) -> tuple[list[float], list[float], list[float]]:
    """Milliseconds of ``Predictor.predict`` in this process and of one lockstep frame through the node,
    alternating ``pairs`` times (after one warm-up of each), and the wall time (s) each pair ended."""
    from mcn_ros.model.predictor import Predictor

    predictor = Predictor.from_weights(
        weights, device="cpu", precision=settings["precision"], backend=settings["backend"]
    )
    assert predictor.precision.name == settings["precision"], predictor.precision.note
    predict, node, ended = [], [], []
    for n in range(pairs + 1):
        start = time.perf_counter()
        predictor.predict(image, score_threshold=SCORE, pose_score_threshold=SCORE)
        elapsed = 1e3 * (time.perf_counter() - start)
        through_node = driver.lockstep(1, first_stamp=2_000_000_000 + n * 1_000_000)
        if n:
            predict.append(elapsed)
            node += through_node
            ended.append(time.time())
    return predict, node, ended


def window_split(
    status: dict[str, str], predict: list[float], lockstep: list[float], ended: list[float]
) -> dict[str, Any]:
    """Where the overhead goes, on one sample: the pairs that ended in the node's last statistics window
    (the 5 s before its /diagnostics stamp) and the node's own p50s over that window, in ms."""
    stamp = float(status.get("stamp_s", "nan"))
    inside = [i for i, t in enumerate(ended) if stamp - 5.0 <= t <= stamp]

    def p50(values: list[float]) -> float:
        return round(float(np.median(values)), 2) if values else float("nan")

    node = {
        key: round(float(status.get(f"{key}_p50_ms", "nan")), 2)
        for key in ("latency", "processing", "inference")
    }
    figures = {
        "pairs": len(inside),
        "predict_p50_ms": p50([predict[i] for i in inside]),
        "lockstep_p50_ms": p50([lockstep[i] for i in inside]),
        "node_received_to_published_p50_ms": node["latency"],
        "node_processing_p50_ms": node["processing"],
        "node_inference_p50_ms": node["inference"],
    }
    figures["transport_and_driver_ms"] = round(figures["lockstep_p50_ms"] - node["latency"], 2)
    figures["node_outside_inference_ms"] = round(node["processing"] - node["inference"], 2)
    figures["inference_minus_predict_ms"] = round(node["inference"] - figures["predict_p50_ms"], 2)
    return figures


def row(name: str, figures: dict[str, float]) -> str:
    return f"| {name} | {figures['p50_ms']} | {figures['p95_ms']} | {figures['p99_ms']} | {figures['n']} |"


def render(record: dict[str, Any]) -> str:
    cpu = cpu_description(record["machine"])
    predict, node = record["predict"], record["node_lockstep"]
    low, high = record["overhead_ratio_ci95"]
    return "\n".join(
        [
            "# The node's own cost (CPU)",
            "",
            f"`{record['command']}`",
            "",
            f"One 640x480 rgb8 camera, model `{record['model']}` (backend {record.get('backend', 'torch')}, "
            f"{record.get('precision', 'fp32')}), {cpu}, torch threads "
            f"{record['torch_threads']}. Latency: publish -> the last of detections, poses, segmentation. "
            f"Fast DDS profile (node and driver): {record['fastdds_profile'] or 'none (Fast DDS defaults)'}.",
            "",
            "| path | p50 ms | p95 ms | p99 ms | n |",
            "|---|---|---|---|---|",
            row("`Predictor.predict` in-process", predict),
            row("through the node over DDS (lockstep)", node),
            "",
            "The node's own figures (its /diagnostics over the last 5 s of the paired phase): frame taken by "
            f"the inference thread -> outputs published p50 {record['node_processing_p50_ms']} ms; frame "
            f"received -> outputs published p50 {record['node_received_to_published_p50_ms']} ms (the rest "
            "of the lockstep figure is the transport both ways and this driver).",
            "",
            *split_lines(record.get("window_split")),
            f"Sustained: {record['sustained']['throughput_fps']} frames/s answered, "
            f"{record['rate_hz']} Hz offered. **overhead_ratio {record['overhead_ratio']}** (target <= 0.1; "
            f"95 % bootstrap interval {low} .. {high}; median of the per-pair ratios "
            f"{record['overhead_ratio_paired_median']}).",
            "",
        ]
    )


def split_lines(split: dict[str, Any] | None) -> list[str]:
    """The overhead's split on the pairs of the node's last statistics window (see window_split)."""
    if not split:
        return []
    return [
        f"Where the overhead goes, on the {split['pairs']} pairs of that window (p50 ms): through the node "
        f"{split['lockstep_p50_ms']}, `predict` in this process {split['predict_p50_ms']}; in the node: "
        f"received -> published {split['node_received_to_published_p50_ms']}, of which processing "
        f"{split['node_processing_p50_ms']}, of which the model runtime's call "
        f"{split['node_inference_p50_ms']}. Transport both ways and this driver "
        f"{split['transport_and_driver_ms']}; the node's processing besides the call (image message in, "
        f"messages built and published) {split['node_outside_inference_ms']}; the call in the node less "
        f"`predict` here {split['inference_minus_predict_ms']}. Against the node's own call instead of "
        "`predict` here (the call ran on the node's thread settings: with ONNX Runtime torch's steps on one "
        "thread, here on the count recorded), the node's overhead is "
        f"{own_call_ratio(split)} ((through the node - the call) / the call).",
        "",
    ]


def own_call_ratio(split: dict[str, Any]) -> float:
    """What the node adds to its own model runtime call, over that call (the window's p50s)."""
    call = float(split["node_inference_p50_ms"])
    return round((float(split["lockstep_p50_ms"]) - call) / call, 3)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    command = shlex.join(["python", "bench/node_cpu.py", *(sys.argv[1:] if argv is None else argv)])
    os.environ.setdefault("ROS_DOMAIN_ID", str(claim_domain_id(150, 60)))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    profile = {"shipped": shipped_profile(), "none": None}.get(args.fastdds_profile, args.fastdds_profile)
    os.environ.update(profile_environment(os.environ, profile))  # before the driver's participant
    used_profile = os.environ.get(PROFILE_VARIABLES[0]) or os.environ.get(PROFILE_VARIABLES[1])
    if profile is None and used_profile is None:
        # The node loads config/fastdds.xml itself unless a profile is named: name one that changes nothing.
        os.environ.update(profile_environment(os.environ, shipped_profile(name=DEFAULTS_PROFILE_NAME)))
    from mcn_ros.model.config import ModelConfig

    config = ModelConfig.from_yaml(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_weights(args.config, Path(tmp) / "model.safetensors")
        settings = runtime_settings(args.int8, args.bf16)
        if args.int8:
            calibrate(weights, Path(tmp) / "calibration")
        command_line = node_command(
            weights, "node_bench", f"score_threshold:={SCORE}", f"pose_score_threshold:={SCORE}",
            "image_qos:=reliable",  # see the module docstring
            *(f"{key}:={value}" for key, value in settings.items()),
        )  # fmt: skip
        driver = Driver([""], args.rate, node="node_bench")
        status = node_status(driver)
        image = driver.images[""]
        node = subprocess.Popen(command_line, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            driver.wait_for_node()
            # Warm-up, and discovery of the node's outputs by this driver: frames flowing for a few seconds.
            driver.publish_for(5.0, first_stamp=1_000_000_000)
            time.sleep(6.0)  # the warm-up's frames leave the node's 5 s statistics window
            predict_times, lockstep, ended = paired_times(driver, weights, image, args.frames, settings)
            time.sleep(1.5)  # the next /diagnostics: the window's last paired frames
            snapshot = status[0]  # one message's values throughout
            processing_p50 = float(snapshot.get("processing_p50_ms", "nan"))
            in_node_p50 = float(snapshot.get("latency_p50_ms", "nan"))
            split = window_split(snapshot, predict_times, lockstep, ended)
            window = driver.publish_for(args.seconds, 3_000_000_000)
            sustained = driver.measure(window, args.seconds)
        finally:
            driver.close()
            node.terminate()
            node.wait(timeout=30)
    predict = percentiles(predict_times)
    node_stats = percentiles(lockstep)
    record = {
        "command": command,
        "quick": args.quick,
        "model": config.name,
        "input_size": list(config.input_size),
        **settings,
        "torch_threads": torch.get_num_threads(),
        "fastdds_profile": repo_relative(used_profile),
        "predict": predict,
        "node_lockstep": node_stats,
        "node_processing_p50_ms": round(processing_p50, 2),
        "node_received_to_published_p50_ms": round(in_node_p50, 2),
        "window_split": split,
        "rate_hz": args.rate,
        "sustained": {k: v for k, v in sustained.items() if k != "per_camera"},
        **overhead_figures(predict_times, lockstep),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions((*PACKAGES, "onnxruntime", "onnx")),
        "git": git_commit(),
    }
    write_record(args.results, args.name, record, render(record))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
