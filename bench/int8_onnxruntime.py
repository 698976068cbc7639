"""Int8 in ONNX Runtime (``precision: int8``): the accuracy it costs, the forward it saves, against YOLO26n.

    python bench/int8_onnxruntime.py [--rounds 15] [--passes 3] [--calibration 64]

1. accuracy: the demo weights (128x128) quantised by the shipped command's code
   (``mcn_ros.model.quantize.quantize``, calibrated on ``--calibration`` scenes of the demo's training set)
   and scored by its own validation (``Predictor`` fp32 and int8 in ONNX Runtime, pycocotools) on the
   demo's 200 held-out images;
2. speed, the forward alone at 512x384 (a 640x480 camera's network input), 2 threads: the ResNet-18
   three-task 512 model (random init, seed 0) in PyTorch fp32 (the default backend), ONNX Runtime fp32
   and int8 (``Predictor.forward``); and YOLO26n detect + pose + segmentation exported by ultralytics to
   ONNX at that shape, in ONNX Runtime fp32 and int8 (quantised by the same function,
   ``quantize_onnx``), in sessions with the MCN's own session options: as exported, and with the semantic
   graph cut at its logits (:func:`semantic_logits_graph`; the ratios use this one). Both calibrated on 16
   synthetic 384x512 scenes. Each contender timed in blocks of its own (``--rounds`` calls after a
   warm-up), all blocks ``--passes`` times in turn (a runtime's threads slowed whichever other runtime or
   session came next when calls were interleaved one by one); the ratios of each pass alone are kept beside
   the pooled ones.

Int8 convolutions are fast only where the CPU has VNNI (avx512_vnni, avx_vnni) or AMX; without them the
script stops with a note. Writes bench/results/int8_onnxruntime.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import torch
from _common import PACKAGES, git_commit, machine, read_image, versions, write_record
from e2e_cpu import yolo_int8_files, yolo_onnx_files
from multicamera_cpu import make_weights
from precision_cpu import METRICS
from seg_resampling import DEMO_WEIGHTS, generate_demo_val

from mcn_ros.model.backends import session_options
from mcn_ros.model.precision import cpu_int8_native
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.quantize import image_files, network_input, quantize, quantize_graph
from mcn_ros.model.weights import load_weights
from mcn_training.synthetic import generate_dataset

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SPEED_CONFIG = REPO / "config" / "models" / "resnet18_det80_seg80_pose_512.yaml"
CAMERA_INPUT = (384, 512)
THREADS = 2
#: Suffix of YOLO26n x3's forward with its semantic graph cut at the classifier's logits
#: (:func:`semantic_logits_graph`): the like-for-like forward, which the ratios use.
LOGITS = "_to_logits"


def accuracy(folder: Path, calibration: int) -> dict[str, dict[str, float | None]]:
    """The demo weights' validation metrics (percent), fp32 and int8, from the shipped command's code."""
    scenes = generate_dataset(folder / "calib", calibration, 0, (128, 128), "train")["images"]
    val = generate_demo_val(folder / "val")
    annotations = [val / "annotations" / f"{kind}_val.json" for kind in ("instances", "person_keypoints")]
    summary = quantize(
        DEMO_WEIGHTS, scenes, folder / "demo.int8.onnx", calibration, (annotations, val / "images" / "val")
    )
    checked = summary["validation"]
    assert isinstance(checked, dict), checked
    return checked


def semantic_logits_graph(path: Path) -> Path:
    """YOLO's semantic-segmentation ONNX file cut where its classifier's logits leave the network (stride
    8), as the MCN's forward ends at its stride-4 logits: ultralytics' ONNX export builds the bilinear
    upsampling of every class's logits to the input size and the argmax over them into the graph, which the
    MCN does in its decoding instead. A graph without that ArgMax (the detect and pose files) is returned
    as it is. Writes ``<stem>_logits.onnx`` beside ``path``."""
    import onnx
    import onnx.shape_inference
    import onnx.utils

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))  # the Extractor needs value_infos
    producer = {output: node for node in model.graph.node for output in node.output}
    argmax = [node for node in model.graph.node if node.op_type == "ArgMax"]
    if not argmax:
        return path
    node = producer[argmax[0].input[0]]
    while node.op_type in ("DequantizeLinear", "QuantizeLinear", "Cast"):  # an int8 file's QDQ pairs
        node = producer[node.input[0]]
    if node.op_type != "Resize":
        raise SystemExit(
            f"int8_onnxruntime: expected Resize before {path.name}'s ArgMax, found {node.op_type}"
        )
    target = path.with_name(f"{path.stem}_logits.onnx")
    # The Extractor on the loaded model: onnx.utils.extract_model first checks the file, and ultralytics'
    # metadata repeats keys, which the checker refuses.
    onnx.save(onnx.utils.Extractor(model).extract_model(["images"], [node.input[0]]), str(target))
    return target


def run_sessions(sessions: list[Any], pixels: np.ndarray) -> list[Any]:
    """One forward of each ONNX Runtime session (YOLO's three networks) on ``pixels``."""
    return [session.run(None, {"images": pixels}) for session in sessions]


def forwards(folder: Path) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """The timed forwards (a fixed 384x512 input each) and facts about them."""
    weights = make_weights(SPEED_CONFIG, folder / "speed.safetensors")
    model, config, _ = load_weights(weights, device="cpu")
    config = dataclasses.replace(config, input_size=CAMERA_INPUT)
    scenes = image_files(generate_dataset(folder / "calib512", 16, 0, CAMERA_INPUT, "train")["images"])
    graph, _ = quantize_graph(model, config, scenes)
    images = [read_image(path) for path in scenes]
    batch = torch.from_numpy(network_input(images[0], config))
    mcn = {
        "torch_fp32": Predictor(model, config),
        "onnxruntime_fp32": Predictor(model, config, backend="onnxruntime"),
        "onnxruntime_int8": Predictor(
            model, config, backend="onnxruntime", precision="int8", int8_graph=graph
        ),
    }
    calls: dict[str, Callable[[], object]] = {}
    for name, predictor in mcn.items():
        ready = batch.contiguous(memory_format=torch.channels_last) if predictor.channels_last else batch
        calls[f"mcn_{name}"] = functools.partial(predictor.forward, ready, predictor.tasks)
    fp32_files = yolo_onnx_files("yolo26n", CAMERA_INPUT, folder / "yolo")
    pixels = np.ascontiguousarray(
        np.stack([cv2.resize(images[0], CAMERA_INPUT[::-1])[:, :, ::-1].transpose(2, 0, 1)]), np.float32
    ) / np.float32(255)
    for kind, files in (("fp32", fp32_files), ("int8", yolo_int8_files(fp32_files, images))):
        for suffix, paths in (
            ("", [path for path, _ in files]),
            (LOGITS, [semantic_logits_graph(p) for p, _ in files]),
        ):
            sessions = [
                ort.InferenceSession(
                    str(path), session_options(ort, THREADS), providers=["CPUExecutionProvider"]
                )
                for path in paths
            ]
            calls[f"yolo26n_x3_onnxruntime_{kind}{suffix}"] = functools.partial(
                run_sessions, sessions, pixels
            )
    return calls, {"mcn_config": config.name, "input": list(CAMERA_INPUT)}


def timed(calls: dict[str, Callable[[], object]], rounds: int, passes: int) -> list[dict[str, list[float]]]:
    """Milliseconds of each call, per pass: in each pass every call runs a block of ``rounds`` after a
    warm-up call of its own."""
    out = []
    for _ in range(passes):
        times: dict[str, list[float]] = {name: [] for name in calls}
        for name, call in calls.items():
            torch.set_num_threads(THREADS)
            call()
            for _ in range(rounds):
                start = time.perf_counter()
                call()
                times[name].append(1e3 * (time.perf_counter() - start))
        out.append(times)
    return out


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """Median milliseconds per call."""
    return {name: round(float(np.median(values)), 1) for name, values in times.items()}


def ratios(ms: dict[str, float]) -> dict[str, float]:
    """The headline ratios of median milliseconds ``ms``."""
    return {
        "int8_speedup_onnxruntime": round(ms["mcn_onnxruntime_fp32"] / ms["mcn_onnxruntime_int8"], 2),
        "int8_vs_torch_fp32": round(ms["mcn_torch_fp32"] / ms["mcn_onnxruntime_int8"], 2),
        "mcn_vs_yolo26n_fp32_onnxruntime": round(
            ms[f"yolo26n_x3_onnxruntime_fp32{LOGITS}"] / ms["mcn_onnxruntime_fp32"], 2
        ),
        "mcn_vs_yolo26n_int8_onnxruntime": round(
            ms[f"yolo26n_x3_onnxruntime_int8{LOGITS}"] / ms["mcn_onnxruntime_int8"], 2
        ),
        "mcn_vs_yolo26n_fp32_onnxruntime_as_exported": round(
            ms["yolo26n_x3_onnxruntime_fp32"] / ms["mcn_onnxruntime_fp32"], 2
        ),
        "mcn_vs_yolo26n_int8_onnxruntime_as_exported": round(
            ms["yolo26n_x3_onnxruntime_int8"] / ms["mcn_onnxruntime_int8"], 2
        ),
    }


def render(record: dict[str, Any]) -> str:
    host, acc, ms = record["machine"], record["accuracy"], record["forward_ms"]
    vnni = ", ".join(f for f in host.get("cpu_flags", []) if "vnni" in f or "amx" in f) or "none"
    spread = "; ".join(
        f"`{key}` " + " / ".join(str(one[key]) for one in record["per_pass"])
        for key in (
            "int8_vs_torch_fp32",
            "mcn_vs_yolo26n_fp32_onnxruntime",
            "mcn_vs_yolo26n_int8_onnxruntime",
        )
    )
    lines = [
        "# Int8 in ONNX Runtime (`precision: int8`)",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git']}; {host.get('cpu')}, "
        f"{host.get('affinity')} CPUs, {THREADS} threads; VNNI/AMX flags: {vnni}). "
        "`mcn_ros.model.quantize`: QDQ, per-channel int8 weights, uint8 activations, MinMax calibration "
        f"({record['calibration_images']} training scenes for the demo, 16 for the timed models).",
        "",
        "| demo weights, 200 held-out images (%) | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for kind in ("fp32", "int8"):
        lines.append(f"| ONNX Runtime {kind} | " + " | ".join(str(acc[kind][m]) for m in METRICS) + " |")
    lines += [
        "",
        f"| forward at 512x384 ({record['mcn_config']}; YOLO26n x3 = detect + pose + sem) | median ms |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in ms.items()),
        "",
        f"MCN int8 / fp32 in ONNX Runtime: **{record['int8_speedup_onnxruntime']}x**; MCN int8 against "
        f"PyTorch fp32 (the default backend): **{record['int8_vs_torch_fp32']}x**. Like for like, the MCN "
        f"against YOLO26n x3 in ONNX Runtime: fp32 **{record['mcn_vs_yolo26n_fp32_onnxruntime']}x**, int8 "
        f"**{record['mcn_vs_yolo26n_int8_onnxruntime']}x** (forward only, each network to its raw outputs: "
        f"YOLO's `{LOGITS}` rows; end to end: e2e_cpu.md). Against YOLO's files as ultralytics exports them, "
        "whose semantic graph also upsamples every class's logits bilinearly to the input and takes their "
        "argmax (the MCN does that in its decoding): "
        f"fp32 {record['mcn_vs_yolo26n_fp32_onnxruntime_as_exported']}x, "
        f"int8 {record['mcn_vs_yolo26n_int8_onnxruntime_as_exported']}x. All "
        f"{record['passes']} passes pooled; each pass alone: {spread}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="calls per timing block")
    parser.add_argument("--passes", type=int, default=3, help="timing blocks of each call, in turn")
    parser.add_argument(
        "--calibration", type=int, default=64, help="training scenes for the demo's calibration"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not cpu_int8_native():
        print("this CPU has no VNNI/AMX: precision int8 falls back to fp32 here; nothing to measure")
        return 1
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = accuracy(Path(tmp) / "demo", args.calibration)
        calls, facts = forwards(Path(tmp) / "speed")
        passes = timed(calls, args.rounds, args.passes)
    forward_ms = medians({name: [t for one in passes for t in one[name]] for name in calls})
    record: dict[str, Any] = {
        "command": shlex.join(
            ["python", "bench/int8_onnxruntime.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "calibration_images": args.calibration,
        "rounds": args.rounds,
        "passes": args.passes,
        **facts,
        "accuracy": metrics,
        "forward_ms": forward_ms,
        **ratios(forward_ms),
        "per_pass": [ratios(medians(one)) for one in passes],
        "machine": machine(),
        "versions": versions((*PACKAGES, "ultralytics", "onnxruntime", "onnx")),
        "git": git_commit(),
    }
    write_record(args.results, "int8_onnxruntime", record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
