"""Decoding's share of the forward on the CPU (or a CUDA GPU), with trained weights and at random init.

    python bench/decode_share.py [--images 100] [--rounds 2]
    python bench/decode_share.py --device cuda --precisions fp32 fp16   # writes decode_share_gpu.*

The demo weights (demo/mcn_demo.safetensors: ResNet-18, 80 classes, pose, segmentation, trained at 128x128)
and the same model at random init (seed 0), on the demo's held-out scenes rendered at 640x480 (the
generator scales its objects with the image), at two network inputs: the demo's own scale (128: 128x96
camera-shaped) and the paper's (512: 512x384). Trained heads let many peaks pass the node's default
thresholds (0.3), so decoding has more to do than at random init. Each setting (``Predictor.predict``
step by step, as bench/e2e_cpu.py splits it) is timed in its own block: an untimed settling call on the
first image, then every image in turn (alternating ONNX Runtime sessions, each with its own thread pool,
and torch call by call slowed the next call a lot here: README, bench/e2e_cpu.py). After one warm-up of
each, ``--rounds`` rounds run every setting's block once, in turn, so that drift falls on all of them; per
setting the medians of preprocess / forward / decode, decode / forward, and the detections and persons per
image. The target (issue 13) is decode <= 5 % of the forward.

On the CPU each of ``--backends`` (default all four the node ships): ``torch`` (fp32), ``bf16`` (torch, the
model's bfloat16 copy; skipped with a note on a CPU without native bf16), ``onnxruntime`` (fp32) and
``int8`` (ONNX Runtime, static int8 calibrated on 16 scenes of the demo's training split drawn at 640x480;
skipped with a note on a CPU without int8 dot products). Every backend hands decoding channels_last
maps (ONNX Runtime's fp32 graph since `export_onnx(channels_last=True)`, 2026-12-06; NCHW maps before).

``--device cuda``: the same on a GPU, each step ending with a synchronize (bench/e2e_cpu.py's SplitPredict),
at each of ``--precisions`` (fp16 / bf16 as CUDA autocast, as the node runs them); ``--cuda-graphs`` adds
each setting with the forward replayed from CUDA graphs (``Predictor(cuda_graphs=True)``).

Writes bench/results/decode_share.json and .md (decode_share_gpu.* for a CUDA device; ``--name`` another).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import PACKAGES, git_commit, machine, read_image, versions, write_record
from e2e_cpu import SCORE_THRESHOLD, SplitPredict
from seg_resampling import DEMO_VAL, DEMO_WEIGHTS

from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.precision import NATIVE_BF16_FLAGS, NATIVE_INT8_FLAGS, cpu_bf16_native, cpu_int8_native
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.quantize import image_files, quantize_graph
from mcn_ros.model.weights import load_weights
from mcn_training.synthetic import generate_dataset

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CAMERA = (480, 640)
INPUTS = (128, 512)


#: CPU backends (``--backends``): name -> (Predictor backend, precision).
CPU_BACKENDS = {
    "torch": ("torch", "fp32"),
    "bf16": ("torch", "bf16"),
    "onnxruntime": ("onnxruntime", "fp32"),
    "int8": ("onnxruntime", "int8"),
}
CALIBRATION_SCENES = 16


def predictors(
    threads: int,
    device: str = "cpu",
    precisions: tuple[str, ...] = ("fp32",),
    cuda_graphs: bool = False,
    backends: tuple[str, ...] = ("torch",),
    calibration: Path | None = None,
) -> dict[str, Predictor]:
    """``<weights>@<input>`` (`` <backend>`` unless torch, ``/<precision>`` unless fp32, ``+graphs`` for the
    CUDA-graph forward) -> Predictor, for the demo weights and the same model at random init; ``int8``
    graphs are calibrated on the images in ``calibration``."""
    torch.set_num_threads(threads)
    runs = [("torch", p, g) for g in ((False, True) if cuda_graphs else (False,)) for p in precisions]
    if torch.device(device).type == "cpu":
        runs = [(*CPU_BACKENDS[name], False) for name in backends]
    out = {}
    for backend, precision, graphs in runs:
        for side in INPUTS:
            for kind in ("demo", "random"):
                model, config, _ = load_weights(DEMO_WEIGHTS, device="cpu")
                if kind == "random":
                    torch.manual_seed(0)
                    model = MultitaskCenterNet(config).eval()
                config = dataclasses.replace(config, input_size=(side, side))
                name = f"{kind}@{side}" + ("" if backend == "torch" else f" {backend}")
                name += ("" if precision == "fp32" else f"/{precision}") + ("+graphs" if graphs else "")
                graph = None
                if precision == "int8":
                    assert calibration is not None
                    graph, _ = quantize_graph(model, config, image_files(calibration))
                out[name] = Predictor(
                    model, config, device=device, precision=precision, cuda_graphs=graphs, backend=backend,
                    int8_graph=graph,
                )  # fmt: skip
                if out[name].precision.name != precision or out[name].cuda_graphs != graphs:
                    note = out[name].precision.note or out[name].cuda_graphs_note
                    raise SystemExit(f"decode_share: {note}")
    return out


def camera_scenes(folder: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` held-out demo scenes, drawn at 640x480 (BGR)."""
    written = generate_dataset(folder, count, DEMO_VAL.seed, CAMERA, "val", DEMO_VAL.first_id)
    images = [read_image(path) for path in sorted(written["images"].glob("*.jpg"))]
    if len(images) != count:
        raise RuntimeError(f"{len(images)} of the {count} generated images in {written['images']}")
    return images


def measure(settings: dict[str, Predictor], images: list[np.ndarray], rounds: int) -> dict[str, Any]:
    """Each setting in its own block (an untimed settling call on the first image, then every image), the
    blocks in turn ``rounds`` times after one warm-up of each."""
    split = {name: SplitPredict(predictor, images[0]) for name, predictor in settings.items()}
    found: dict[str, dict[str, list[int]]] = {name: {"detections": [], "persons": []} for name in settings}
    for call in split.values():
        call()
        for part in call.parts.values():
            part.clear()
    for _ in range(rounds):
        for name, call in split.items():
            call.image = images[0]
            call()  # settling: takes what the block before left on the cores
            for part in call.parts.values():
                part.pop()
            for image in images:
                call.image = image
                (result,) = call()
                assert result.detections is not None and result.poses is not None  # all tasks run
                found[name]["detections"].append(len(result.detections.scores))
                found[name]["persons"].append(len(result.poses.scores))
    record = {}
    for name, call in split.items():
        medians = {part: round(float(np.median(ms)), 2) for part, ms in call.parts.items()}
        record[name] = {
            "median_ms": medians,
            "decode_share": round(medians["decode"] / medians["forward"], 4),
            "detections_per_image": round(float(np.mean(found[name]["detections"])), 2),
            "persons_per_image": round(float(np.mean(found[name]["persons"])), 2),
            "network_input": list(settings[name].input_size([CAMERA])),
            "backend": settings[name].backend,
            "precision": settings[name].precision.name,
            "calls": len(call.parts["forward"]),
        }
    return record


def render(record: dict[str, Any]) -> str:
    host = record["machine"]
    gpu = record.get("gpu")
    lines = [
        f"# Decoding's share of the forward ({'GPU' if gpu else 'CPU'})",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git']}; "
        + (f"{gpu}, CUDA {record.get('cuda')}, host " if gpu else "")
        + f"{host.get('cpu')}, {host.get('affinity')} CPUs, torch threads {record['threads']}). "
        "The demo's held-out scenes at "
        f"640x480 ({record['images']} images x {record['rounds']} rounds), score thresholds "
        f"{record['score_threshold']}, segmentation resampling nearest; medians.",
        "",
        "| weights | network input | backend | precision | detections / image | persons / image | "
        "preprocess ms | forward ms | decode ms | decode / forward |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in record["settings"].items():
        kind = "demo (trained)" if name.startswith("demo") else "random init"
        height, width = row["network_input"]
        ms = row["median_ms"]
        precision = row.get("precision", name.partition("/")[2].removesuffix("+graphs") or "fp32")
        precision += ", CUDA graphs" if name.endswith("+graphs") else ""
        lines.append(
            f"| {kind} | {width}x{height} | {row.get('backend', 'torch')} | {precision} | "
            f"{row['detections_per_image']} | "
            f"{row['persons_per_image']} | "
            f"{ms['preprocess']} | {ms['forward']} | {ms['decode']} | {100 * row['decode_share']:.1f} % |"
        )
    notes = [f"Not measured: {note}" for note in record.get("skipped", [])]
    return "\n".join([*lines, "", "Target: decode <= 5 % of the forward.", *notes, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=100, help="held-out scenes (at most 200)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads; default 2")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], help="CUDA: fp32 (default), fp16, bf16")
    parser.add_argument("--cuda-graphs", action="store_true", help="each setting also with cuda_graphs")
    parser.add_argument(
        "--backends", nargs="+", choices=list(CPU_BACKENDS), default=list(CPU_BACKENDS),
        help="CPU only: torch (fp32), bf16 (torch), onnxruntime (fp32), int8 (ONNX Runtime); default all",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--name", help="results file name (default decode_share, or decode_share_gpu on a CUDA device)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.images <= DEMO_VAL.images:
        parser.error(f"--images must be 1..{DEMO_VAL.images}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("decode_share: no CUDA device here (torch.cuda.is_available() is False); nothing written")
        return 2
    skipped = []
    native = {"int8": (cpu_int8_native, NATIVE_INT8_FLAGS), "bf16": (cpu_bf16_native, NATIVE_BF16_FLAGS)}
    for name, (has_it, flags) in native.items():  # the reduced precisions this CPU does not compute natively
        if name in args.backends and device.type == "cpu" and not has_it():
            args.backends.remove(name)
            skipped.append(f"{name}: this CPU has none of {', '.join(flags)} (the node runs fp32 there)")
    with tempfile.TemporaryDirectory() as tmp:
        images = camera_scenes(Path(tmp), args.images)
        calibration = None
        if "int8" in args.backends and device.type == "cpu":
            calibration = generate_dataset(Path(tmp) / "calibration", CALIBRATION_SCENES, 0, CAMERA, "train")
        settings = predictors(
            args.threads, args.device, tuple(args.precisions), args.cuda_graphs, tuple(args.backends),
            None if calibration is None else calibration["images"],
        )  # fmt: skip
    record: dict[str, Any] = {
        "command": shlex.join(["python", "bench/decode_share.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images": args.images,
        "rounds": args.rounds,
        "threads": args.threads,
        "score_threshold": SCORE_THRESHOLD,
        "settings": measure(settings, images, args.rounds),
        "skipped": skipped,
        "machine": machine(),
        "versions": versions((*PACKAGES, "onnxruntime", "onnx")),
        "git": git_commit(),
    }
    # A capture that failed during the timing served eagerly: those rows are not graph timings.
    failed = {
        name: p.cuda_graphs_note for name, p in settings.items() if "+graphs" in name and p.cuda_graphs_note
    }
    if failed:
        raise SystemExit(f"decode_share: CUDA graphs asked for but not used, no record written: {failed}")
    if device.type == "cuda":
        record["gpu"], record["cuda"] = torch.cuda.get_device_name(device), torch.version.cuda
    record["decode_share_max"] = max(row["decode_share"] for row in record["settings"].values())
    name = args.name or ("decode_share_gpu" if device.type == "cuda" else "decode_share")
    write_record(args.results, name, record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
