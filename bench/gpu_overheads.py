"""Where the time goes around the network on a CUDA GPU: launch overhead in the forward and decoding, and the
peak search.

    python bench/gpu_overheads.py [--images 50] [--rounds 20] [--out bench/results]

On a fast GPU the MCN's forward is bound by launching its kernels one by one (bench/results/model_gpu.json:
ResNet-18 3-task at batch 6 costs little more than at batch 1), and decoding is many small ops. Three
measurements, each interleaved in one process:

- **Forward, eager against a CUDA graph**: ``Predictor.forward`` as the node runs it, against the same call
  captured once in a ``torch.cuda.CUDAGraph`` and replayed (input copied into the captured buffer), as the
  ``cuda_graphs`` option does; the largest output difference between the two. The paper's three-task
  configs (ResNet-18, DLA-34: with deformable convolutions, which that option refuses because they do not
  replay correctly) and the lighter variant, at 384x512 (a 640x480 camera), batch 1, fp32 and fp16.
- **Decoding, candidate listing against top-k**: ``decode_batch`` on the demo weights' outputs for the
  demo's held-out scenes at 640x480 (network inputs 512x384 and 128x96), with the peak searches listing
  candidates (the CPU's way: a host synchronisation per listing) and with the top-k over the max-pooled map
  (``peaks.TOPK_SEARCH_DEVICES``, the default on CUDA); the results compared (same detections and poses).
- **Predict, eager against CUDA graphs**: ``Predictor.predict`` of the same scenes (image in, results out,
  demo weights, fp32) eager, with ``cuda_graphs`` (the forward replayed, decoding eager) and with
  ``graph_decoding`` as well (forward and decoding replayed from one graph); the graphed results compared
  with the eager ones.

Needs a CUDA device: without one it says so and exits 2, writing nothing. Writes ``gpu_overheads.json`` and
``gpu_overheads.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import git_commit, machine, versions, write_record
from _timing import interleaved, stats
from decode_share import camera_scenes
from e2e_cpu import SCORE_THRESHOLD
from model_gpu import device_facts
from seg_resampling import DEMO_WEIGHTS

from mcn_ros.model import peaks
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.cuda_graphs import GraphedCalls
from mcn_ros.model.decode import DecodeOptions, decode_batch
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.preprocess import preprocess
from mcn_ros.model.results import Results
from mcn_ros.model.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
FORWARD_CONFIGS = (
    "resnet18_det80_seg80_pose_512",
    "resnet18_det80_seg80_pose_light_512",
    "dla34_det80_seg80_pose_512",
)
FORWARD_SHAPE = (384, 512)
CAMERA = (480, 640)
DECODE_INPUTS = (512, 128)


def graph_forward(predictor: Predictor, batch: torch.Tensor) -> tuple[Callable[[], object], dict[str, Any]]:
    """``predictor.forward`` of ``batch`` replayed from a CUDA graph (:class:`GraphedCalls`, as the
    ``cuda_graphs`` option runs it, here without its refusal of deformable convolutions): a call copies
    ``batch`` into the captured input and replays; also the outputs' largest difference from the eager
    forward."""
    tasks = predictor.config.tasks
    graphs: GraphedCalls[dict[str, torch.Tensor]] = GraphedCalls(predictor.forward)
    captured = graphs(batch, tasks)  # captures, then replays
    eager = predictor.forward(batch, tasks)
    torch.cuda.synchronize()
    if graphs.failure is not None:
        raise RuntimeError(graphs.failure)
    difference = max(float((captured[k] - eager[k]).abs().max()) for k in eager)

    def replay() -> object:
        return graphs(batch, tasks)

    return replay, {"max_abs_difference": difference}


def forward_contenders(device: torch.device) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """``<config>/<precision>:eager|graph`` -> a synchronized call, and each graph's output difference."""
    calls: dict[str, Callable[[], object]] = {}
    checks: dict[str, Any] = {}
    for name in FORWARD_CONFIGS:
        config = ModelConfig.from_yaml(ROOT / "config" / "models" / f"{name}.yaml")
        for precision in ("fp32", "fp16"):
            torch.manual_seed(0)
            predictor = Predictor(
                MultitaskCenterNet(config).eval(), config, device=device, precision=precision
            )
            batch = torch.randn(1, 3, *FORWARD_SHAPE, device=device).contiguous(
                memory_format=torch.channels_last
            )
            try:
                replay, checks[f"{name}/{precision}"] = graph_forward(predictor, batch)
            except RuntimeError as error:  # an op that cannot be captured: say which, time the eager call
                checks[f"{name}/{precision}"] = {"capture_error": str(error).splitlines()[0]}
                replay = None

            def eager(p: Predictor = predictor, b: torch.Tensor = batch) -> object:
                out = p.forward(b, p.config.tasks)
                torch.cuda.synchronize()
                return out

            def graphed(r: Callable[[], object] | None = replay) -> object:
                assert r is not None
                out = r()
                torch.cuda.synchronize()
                return out

            calls[f"{name}/{precision}:eager"] = eager
            if replay is not None:
                calls[f"{name}/{precision}:graph"] = graphed
    return calls, checks


@contextmanager
def search_devices(devices: frozenset[str]) -> Iterator[None]:
    """``peaks.TOPK_SEARCH_DEVICES`` set to ``devices`` for the block."""
    before = peaks.TOPK_SEARCH_DEVICES
    peaks.TOPK_SEARCH_DEVICES = devices
    try:
        yield
    finally:
        peaks.TOPK_SEARCH_DEVICES = before


def decode_contenders(
    device: torch.device, images: list[np.ndarray]
) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """``<input>:listing|topk`` -> decoding one scene's outputs (the next scene each call), and the check that
    both searches give the same results on every scene."""
    model, base, _ = load_weights(DEMO_WEIGHTS, device="cpu")
    options = DecodeOptions.from_config(
        base.decode, score_threshold=SCORE_THRESHOLD, pose_score_threshold=SCORE_THRESHOLD
    )
    calls: dict[str, Callable[[], object]] = {}
    checks: dict[str, Any] = {}
    for side in DECODE_INPUTS:
        config = dataclasses.replace(base, input_size=(side, side))
        predictor = Predictor(model, config, device=device)
        scenes = []
        for image in images:
            batch, boxes = preprocess(
                [image], predictor.input_size([CAMERA]), config.mean, config.std, device, "bgr", True
            )
            scenes.append((predictor.forward(batch, config.tasks), boxes))
        with search_devices(frozenset()):
            listed = [decode_batch(o, b, [CAMERA], config, None, options)[0] for o, b in scenes]
        with search_devices(frozenset({device.type})):
            topk = [decode_batch(o, b, [CAMERA], config, None, options)[0] for o, b in scenes]
        checks[str(side)] = compare(listed, topk)
        for mode, devices in (("listing", frozenset()), ("topk", frozenset({device.type}))):
            calls[f"{side}:{mode}"] = cycling_decode(scenes, config, options, devices)
    return calls, checks


def cycling_decode(
    scenes: list[tuple[dict[str, torch.Tensor], Any]],
    config: ModelConfig,
    options: DecodeOptions,
    devices: frozenset[str],
) -> Callable[[], object]:
    """A call decoding the next of ``scenes`` with the peak searches of ``devices``."""
    position = [0]

    def call() -> object:
        outputs, boxes = scenes[position[0] % len(scenes)]
        position[0] += 1
        with search_devices(devices):
            return decode_batch(outputs, boxes, [CAMERA], config, None, options)

    return call


#: Each way of predicting: the Predictor's (cuda_graphs, graph_decoding).
PREDICT_MODES: dict[str, tuple[bool, bool]] = {
    "eager": (False, False),
    "graphs": (True, False),
    "graph_decoding": (True, True),
}


def predict_contenders(
    device: torch.device, images: list[np.ndarray]
) -> tuple[dict[str, Callable[[], object]], dict[str, Any], dict[str, Predictor]]:
    """``<input>:<mode>`` (:data:`PREDICT_MODES`) -> ``Predictor.predict`` of the next scene (synchronized by
    its copy to the host), and per input and graphed mode the comparison of its results with the eager ones
    on every scene. Off CUDA the graphed modes warn and run eagerly (the calls still work)."""
    model, base, _ = load_weights(DEMO_WEIGHTS, device="cpu")
    calls: dict[str, Callable[[], object]] = {}
    checks: dict[str, Any] = {}
    graphed: dict[str, Predictor] = {}
    for side in DECODE_INPUTS:
        config = dataclasses.replace(base, input_size=(side, side))
        results: dict[str, list[Results]] = {}
        for mode, (graphs, graph_decoding) in PREDICT_MODES.items():
            predictor = Predictor(
                model, config, device=device, cuda_graphs=graphs, graph_decoding=graph_decoding
            )

            def predict(image: np.ndarray, p: Predictor = predictor) -> Results:
                thresholds = SCORE_THRESHOLD, SCORE_THRESHOLD  # detections, poses
                result = p.predict(image, None, "bgr", *thresholds)
                assert isinstance(result, Results)
                return result

            results[mode] = [predict(image) for image in images]
            calls[f"{side}:{mode}"] = cycling_predict(predict, images)
            if graphs:
                graphed[f"{side}:{mode}"] = predictor
        for mode in PREDICT_MODES:
            if mode != "eager":
                checks[f"{side}:{mode}"] = compare(results["eager"], results[mode])
    return calls, checks, graphed


def cycling_predict(
    predict: Callable[[np.ndarray], object], images: list[np.ndarray]
) -> Callable[[], object]:
    """A call predicting the next of ``images``."""
    position = [0]

    def call() -> object:
        image = images[position[0] % len(images)]
        position[0] += 1
        return predict(image)

    return call


def compare(listed: list[Results], topk: list[Results]) -> dict[str, Any]:
    """How far two ways' results differ over the scenes (counts, largest box / keypoint gap, segmentation)."""
    same_counts, box_gap, keypoint_gap, detections, same_segmentation = True, 0.0, 0.0, 0, True
    for a, b in zip(listed, topk, strict=True):
        if a.segmentation is not None and b.segmentation is not None:
            same_segmentation &= bool(np.array_equal(a.segmentation, b.segmentation))
        assert a.detections is not None and b.detections is not None and a.poses is not None
        assert b.poses is not None
        if len(a.detections) != len(b.detections) or len(a.poses) != len(b.poses):
            same_counts = False
            continue
        detections += len(a.detections)
        if len(a.detections):
            box_gap = max(box_gap, float(np.abs(a.detections.boxes - b.detections.boxes).max()))
        if len(a.poses):
            keypoint_gap = max(keypoint_gap, float(np.abs(a.poses.keypoints - b.poses.keypoints).max()))
    return {
        "same_counts": same_counts,
        "detections": detections,
        "max_box_difference_px": round(box_gap, 4),
        "max_keypoint_difference": round(keypoint_gap, 4),
        "same_segmentation": same_segmentation,
    }


def render(record: dict[str, Any]) -> str:
    """The record as three tables."""
    gpu = record["device"]
    forward, decoding = record["forward"], record["decode"]
    lines = [
        "# GPU overheads: eager forward against a CUDA graph; peak search by listing against top-k",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git_commit']}; {gpu.get('gpu')}, CUDA "
        f"{gpu.get('cuda')}; torch {record['versions'].get('torch')}; {record['rounds']} interleaved "
        "rounds).",
        "",
        f"Forward at {FORWARD_SHAPE[1]}x{FORWARD_SHAPE[0]}, batch 1, random init (median ms):",
        "",
        "| network | precision | eager | CUDA graph | speed-up | largest output difference |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, row in forward.items():
        name, precision = key.split("/")
        if "graph" not in row:
            lines.append(f"| {name} | {precision} | {row['eager']['median_ms']:.2f} | not captured: "
                         f"{row['capture_error']} | | |")  # fmt: skip
            continue
        lines.append(
            f"| {name} | {precision} | {row['eager']['median_ms']:.2f} | {row['graph']['median_ms']:.2f} | "
            f"{row['speedup']:.2f}x | {row['max_abs_difference']:.1e} |"
        )
    lines += [
        "",
        f"Decoding the demo weights' outputs ({record['images']} held-out scenes at 640x480, thresholds "
        f"{SCORE_THRESHOLD}; median ms):",
        "",
        "| network input | listing candidates | top-k of the map | speed-up | same counts | detections | "
        "largest box difference (px) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for side, row in decoding.items():
        check = row["check"]
        lines.append(
            f"| {side} | {row['listing']['median_ms']:.2f} | {row['topk']['median_ms']:.2f} | "
            f"{row['speedup']:.2f}x | {check['same_counts']} | {check['detections']} | "
            f"{check['max_box_difference_px']} |"
        )
    if "predict" in record:  # records before graph_decoding have no such table
        lines += [
            "",
            "`Predictor.predict` of the same scenes (640x480 BGR image in, results out; demo weights, fp32; "
            "median ms), and whether the graphed results equal the eager ones (counts, boxes, keypoints, "
            "segmentation):",
            "",
            "| network input | eager | cuda_graphs | + graph_decoding | speed-up over eager | same results |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for side, row in record["predict"].items():
            same = all(
                check["same_counts"] and check["same_segmentation"] and check["max_box_difference_px"] == 0
                and check["max_keypoint_difference"] == 0
                for check in row["checks"].values()
            )  # fmt: skip
            lines.append(
                f"| {side} | {row['eager']['median_ms']:.2f} | {row['graphs']['median_ms']:.2f} | "
                f"{row['graph_decoding']['median_ms']:.2f} | {row['speedup']:.2f}x | {same} |"
            )
        for key, note in record.get("predict_graph_failures", {}).items():
            lines.append(f"\n**{key} did not run from CUDA graphs** (its times are eager ones): {note}")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    """Measure on the GPU and write the record (nothing without one)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=50, help="held-out scenes to decode (at most 200)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_overheads: no CUDA device here (torch.cuda.is_available() is False); nothing written")
        return 2
    device = torch.device("cuda")
    forward_calls, graph_checks = forward_contenders(device)
    forward_times = interleaved(forward_calls, args.rounds, warmup=3)
    with tempfile.TemporaryDirectory() as tmp:
        images = camera_scenes(Path(tmp), args.images)
    decode_calls, decode_checks = decode_contenders(device, images)
    decode_times = interleaved(decode_calls, args.rounds * len(images) // 5, warmup=len(images))
    forward: dict[str, Any] = {}
    for key, check in graph_checks.items():
        eager = stats(forward_times[f"{key}:eager"])
        forward[key] = {"eager": eager, **check}
        if f"{key}:graph" in forward_times:
            graph = stats(forward_times[f"{key}:graph"])
            forward[key] |= {"graph": graph, "speedup": round(eager["median_ms"] / graph["median_ms"], 2)}
    decoding: dict[str, Any] = {}
    for side, check in decode_checks.items():
        listing, topk = stats(decode_times[f"{side}:listing"]), stats(decode_times[f"{side}:topk"])
        speedup = round(listing["median_ms"] / topk["median_ms"], 2)
        decoding[side] = {"listing": listing, "topk": topk, "speedup": speedup, "check": check}
    predict_calls, predict_checks, graphed = predict_contenders(device, images)
    predict_times = interleaved(predict_calls, args.rounds * len(images) // 5, warmup=len(images))
    # A capture that failed served eagerly from then on: its timings are not the graphs'.
    graph_failures = {key: p.cuda_graphs_note for key, p in graphed.items() if p.cuda_graphs_note}
    predicting: dict[str, Any] = {}
    for network in DECODE_INPUTS:
        row: dict[str, Any] = {mode: stats(predict_times[f"{network}:{mode}"]) for mode in PREDICT_MODES}
        row["speedup"] = round(row["eager"]["median_ms"] / row["graph_decoding"]["median_ms"], 2)
        row["checks"] = {m: predict_checks[f"{network}:{m}"] for m in PREDICT_MODES if m != "eager"}
        predicting[str(network)] = row
    record: dict[str, Any] = {
        "command": shlex.join(
            ["python", "bench/gpu_overheads.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_facts(device),
        "machine": machine(),
        "versions": versions(),
        "git_commit": git_commit(),
        "rounds": args.rounds,
        "images": args.images,
        "forward": forward,
        "predict_graph_failures": graph_failures,
        "decode": decoding,
        "predict": predicting,
    }
    write_record(args.out, "gpu_overheads", record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
