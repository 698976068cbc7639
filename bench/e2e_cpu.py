"""End to end on the CPU: a numpy camera image in, results out; the MCN against YOLO26n x3, per backend.

    python bench/e2e_cpu.py [--weights W.safetensors] [--threads 2] [--rounds 30] [--repeats 3] [--quick]
        [--out DIR] [--name e2e_cpu]

For a 640x480 and a 1280x720 BGR uint8 image: ``Predictor.predict`` (all three tasks, score threshold 0.3)
with the PyTorch backend (camera-shaped input, the default, and the square 512x512 input) and with ONNX
Runtime; and ultralytics' own ``YOLO.predict`` of YOLO26n detect + pose + semantic segmentation (random init
from ultralytics' YAMLs, ``imgsz=512``: its rectangular letterbox, the same input resolution as ours) in
PyTorch and, exported by ultralytics to ONNX at that input shape, in ONNX Runtime (its sessions made as
the MCN's, and again in ultralytics' own: :func:`load_yolo`); on a CPU with VNNI or AMX also both in int8
(``onnxruntime_int8``: the MCN through ``precision="int8"``, YOLO's three ONNX files quantised by the same
function, each calibrated on 8 camera-like images); on a CPU with native bf16 (``avx512_bf16`` or
``amx_bf16``) also both in PyTorch bf16 (``torch_bf16``: the MCN through ``precision="bf16"``, its
bfloat16 copy; YOLO's predictors given a bfloat16 copy of their modules, as bench/precision_cpu.py does).
Interleaved rounds (each backend's runs among themselves; torch's thread count set again before every
call), batch 1, fp32 unless int8 or bf16, in ``--repeats`` passes over all contenders: the tables pool every
pass, and the headlines of each pass alone are recorded beside them (``per_repeat``), because this kind of
shared machine moves by more between minutes than within one.
Both sides decode at the same score threshold, 0.3 (``SCORE_THRESHOLD``; YOLO's ``predict`` gets it as
``conf``, whose default is 0.25). The MCN's time is split into preprocess / forward / decode (timed inside
the same calls), YOLO's into ultralytics' own preprocess / inference / postprocess sums.

Also ``e2e_cpu.png``: the split per network and backend. ``--name`` writes the three files under another
name (``e2e_cpu_avx2``: a machine other than the one behind ``e2e_cpu``, whose record stays).

Headline ``e2e_vs_yolo26n_speedup``: at 640x480, the MCN's fastest CPU backend against YOLO26n x3 in the
same backend (YOLO26n x3 median / MCN median; the rows with ``torch_compile`` beside them, in no headline);
``e2e_best_vs_best_speedup``: each side's fastest;
``e2e_fp32_best_vs_best_speedup``: the same among the fp32 backends; ``e2e_bf16_vs_yolo26n_speedup``:
both in PyTorch bf16 (where bf16 is native); ``e2e_light_fp32_best_vs_best_speedup``:
the lighter variant (PyTorch and ONNX Runtime, fp32, random init) likewise;
``e2e_light_int8_vs_yolo26n_speedup``: the lighter variant in int8 against YOLO26n x3 in int8 (where int8
runs). Random weights unless
``--weights`` (that file's model, run at ``--input`` like the random one: trained heads let more peaks
pass the threshold, so decoding does more). ``--quick``: 640x480 only, 2 rounds, a temporary output
folder unless ``--out``: a check of the script, not a result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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
import torch
from _common import PACKAGES, git_commit, machine, provenance_opening, versions
from _timing import YOLO_FAMILIES, interleaved, onnxruntime_version, stats, yolo_in_bf16, yolo_models

from mcn_ros.model.backends import session_options
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.decode import DecodeOptions, decode_batch
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.precision import cpu_bf16_native, cpu_int8_native
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.preprocess import preprocess, rect_input_size
from mcn_ros.model.quantize import image_files, quantize_graph
from mcn_ros.model.results import Results
from mcn_ros.model.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
SIZES: dict[str, tuple[int, int]] = {"640x480": (480, 640), "1280x720": (720, 1280)}
DEFAULT_CONFIG = ROOT / "config" / "models" / "resnet18_det80_seg80_pose_512.yaml"
#: The lighter variant (not the paper's), timed in PyTorch and ONNX Runtime fp32 beside the paper's config
#: (random init).
LIGHT_CONFIG = ROOT / "config" / "models" / "resnet18_det80_seg80_pose_light_512.yaml"
SCORE_THRESHOLD = 0.3
#: Boxes (and, separately, persons) kept per image on both sides: the MCN's default, also given to YOLO,
#: whose own default is 300 per network (the records before 2026-12-06's last left YOLO at its 300).
MAX_DETECTIONS = DecodeOptions.max_detections
#: Backend groups of the contenders; torch_bf16 = the torch backend with precision bf16, onnxruntime_int8 =
#: the onnxruntime backend with precision int8.
BACKENDS = ("torch", "torch_bf16", "onnxruntime", "onnxruntime_int8")
#: The backend groups in a reduced precision (left out of the fp32 headlines).
REDUCED_PRECISION = frozenset({"torch_bf16", "onnxruntime_int8"})
#: The lighter variant's rows: (backend, key in :func:`speedups`' output).
LIGHT_ROWS = (
    ("torch", "light"),
    ("torch_bf16", "light_torch_bf16"),
    ("onnxruntime", "light_onnxruntime"),
    ("onnxruntime_int8", "light_onnxruntime_int8"),
)
#: The paper config's rows with ``Predictor(torch_compile=True)``: (backend, key in :func:`speedups`' output);
#: beside the tables, in no headline (YOLO runs uncompiled, as ultralytics runs it).
COMPILED_ROWS = (("torch", "compiled"), ("torch_bf16", "compiled_bf16"))
#: YOLO26n x3 in ultralytics' own ONNX Runtime sessions (``yolo26n_x3`` runs in the MCN's session settings).
ULTRALYTICS_SESSIONS = "yolo26n_x3_ultralytics_sessions"


def camera_image(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A deterministic BGR picture with texture, edges and blobs (not noise alone)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    for _ in range(12):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(h // 20, h // 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + size // 2, y + size), colour, -1)
        cv2.circle(image, (x, y), size // 4, colour[::-1], -1)
    return image


class SplitPredict:
    """``Predictor.predict`` done step by step (the same calls), recording each step's milliseconds. On a
    CUDA device each step ends with a synchronize, so that its time covers its own kernels (without it the
    forward's would be counted in the decode's first copy to the host)."""

    def __init__(self, predictor: Predictor, image: np.ndarray) -> None:
        self.predictor = predictor
        self.image = image
        self.options = DecodeOptions.from_config(
            predictor.config.decode, score_threshold=SCORE_THRESHOLD, pose_score_threshold=SCORE_THRESHOLD
        )
        self.parts: dict[str, list[float]] = {"preprocess": [], "forward": [], "decode": []}

    def __call__(self) -> list[Results]:
        p, size = self.predictor, (int(self.image.shape[0]), int(self.image.shape[1]))
        tasks = p.config.tasks
        start = time.perf_counter()
        batch, boxes = preprocess(
            [self.image], p.input_size([size]), p.config.mean, p.config.std, p.device, "bgr", p.channels_last
        )
        self._sync()
        middle = time.perf_counter()
        outputs = p.forward(batch, tasks)
        self._sync()
        end = time.perf_counter()
        results = decode_batch(outputs, boxes, [size], p.config, tasks, self.options)
        done = time.perf_counter()
        for name, value in (
            ("preprocess", middle - start),
            ("forward", end - middle),
            ("decode", done - end),
        ):
            self.parts[name].append(1000 * value)
        return results

    def _sync(self) -> None:
        if self.predictor.device.type == "cuda":
            torch.cuda.synchronize(self.predictor.device)


class YoloTrio:
    """Three ultralytics networks predicting one image one after another (at the MCN's score threshold);
    records their own speed split."""

    def __init__(
        self, models: list[Any], image: np.ndarray, imgsz: int | tuple[int, int], bf16: bool = False
    ) -> None:
        self.models, self.image, self.imgsz, self.bf16 = models, image, imgsz, bf16
        self.parts: dict[str, list[float]] = {"preprocess": [], "forward": [], "decode": []}

    def __call__(self) -> object:
        totals = dict.fromkeys(self.parts, 0.0)
        outputs = []
        for model in self.models:
            # bf16 (_timing.yolo_in_bf16): autocast casts ultralytics' float32 input for the bf16 module
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                result = model.predict(
                    self.image,
                    imgsz=self.imgsz,
                    conf=SCORE_THRESHOLD,
                    max_det=MAX_DETECTIONS,
                    device="cpu",
                    verbose=False,
                )[0]
            totals["preprocess"] += result.speed["preprocess"]
            totals["forward"] += result.speed["inference"]
            totals["decode"] += result.speed["postprocess"]
            outputs.append(result)
        for name, value in totals.items():
            self.parts[name].append(value)
        return outputs


def yolo_onnx_files(family: str, shape: tuple[int, int], folder: Path) -> list[tuple[Path, str]]:
    """The family's three networks exported by ultralytics to ONNX at ``shape`` (static): (file, task)."""
    files = []
    for yolo, yaml_name in zip(yolo_models(family), YOLO_FAMILIES[family], strict=True):
        cwd = Path.cwd()
        target = folder / f"{Path(yaml_name).stem}_{shape[0]}x{shape[1]}"
        target.mkdir(parents=True, exist_ok=True)
        os.chdir(target)  # ultralytics writes the file next to the model's name
        try:
            path = yolo.export(format="onnx", imgsz=shape, simplify=False, dynamic=False, verbose=False)
        finally:
            os.chdir(cwd)
        files.append((Path(path) if Path(path).is_absolute() else target / path, str(yolo.task)))
    return files


def yolo_int8_files(files: list[tuple[Path, str]], images: list[np.ndarray]) -> list[tuple[Path, str]]:
    """Each ONNX file quantised as ``mcn_ros.model.quantize`` quantises the MCN (the same settings, the
    same function), calibrated on ``images`` (BGR) letterboxed to its input and scaled to [0, 1] RGB as
    ultralytics feeds it; ultralytics' metadata kept, so ``YOLO(file)`` reads the int8 file like its own."""
    import onnx

    from mcn_ros.model.quantize import quantize_onnx

    out = []
    for path, task in files:
        dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
        shape = (int(dims[2].dim_value), int(dims[3].dim_value))
        feeds = (
            {"images": preprocess([im], shape, (0.0,) * 3, (1.0,) * 3, "cpu", "bgr", False)[0].numpy()}
            for im in images
        )
        target = path.with_name(f"{path.stem}_int8.onnx")
        quantize_onnx(path, target, feeds)
        out.append((target, task))
    return out


def load_yolo(
    files: list[tuple[Path, str]], image: np.ndarray, imgsz: tuple[int, int], threads: int | None
) -> list[Any]:
    """ultralytics YOLO models of ONNX files, run in ONNX Runtime by ultralytics' own backend.

    ``threads``: each network's session is replaced by one with the MCN's session settings
    (:func:`mcn_ros.model.backends.session_options`: that many intra-op threads that do not spin between
    calls), so that the two sides' forwards run alike; None keeps ultralytics' sessions (ONNX Runtime's
    defaults: a spinning pool per session, sized by the cores). Three spinning pools take the cores from
    each other and from the torch steps around them: YOLO26n x3 ran 1.85x slower end to end that way at
    640x480 here (bench/results/e2e_cpu.json of 2026-12-05).
    """
    from ultralytics import YOLO

    models = [YOLO(str(path), task=task) for path, task in files]
    if threads is None:
        return models
    import onnxruntime as ort  # type: ignore[import-untyped]

    for model, (path, _) in zip(models, files, strict=True):
        # makes its predictor and session
        model.predict(image, imgsz=imgsz, conf=SCORE_THRESHOLD, device="cpu", verbose=False)
        backend: Any = getattr(getattr(model.predictor, "model", None), "backend", None)
        if not isinstance(getattr(backend, "session", None), ort.InferenceSession):
            raise SystemExit(
                "e2e_cpu: this ultralytics keeps its ONNX Runtime session elsewhere than "
                "predictor.model.backend.session; use the version requirements/bench.txt pins"
            )
        backend.session = ort.InferenceSession(
            str(path), session_options(ort, threads), providers=["CPUExecutionProvider"]
        )
    return models


def calibration_images(count: int = 8) -> list[np.ndarray]:
    """Camera-like pictures for int8 calibration at both sizes (other seeds than the timed images)."""
    return [camera_image(hw, seed) for seed in range(1, count // 2 + 1) for hw in SIZES.values()]


def build(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """Contenders keyed ``backend:network@size`` and facts about the runs."""
    torch.manual_seed(0)
    if args.weights:
        model, config, _ = load_weights(args.weights, device=torch.device("cpu"))
    else:
        config = ModelConfig.from_yaml(DEFAULT_CONFIG)
        model = MultitaskCenterNet(config)
    config = dataclasses.replace(config, input_size=(args.input, args.input))  # YOLO's imgsz too
    has_ort = onnxruntime_version() is not None
    predictors = {
        "torch:mcn": Predictor(model, config),
        "torch:mcn_square": Predictor(model, config, rect=False),
    }
    if not args.weights:
        light = dataclasses.replace(ModelConfig.from_yaml(LIGHT_CONFIG), input_size=config.input_size)
        predictors["torch:mcn_light"] = Predictor(MultitaskCenterNet(light), light)
    predictors["torch:mcn_compiled"] = Predictor(model, config, torch_compile=True)
    bf16 = cpu_bf16_native()
    if bf16:
        predictors["torch_bf16:mcn"] = Predictor(model, config, precision="bf16")
        predictors["torch_bf16:mcn_compiled"] = Predictor(model, config, precision="bf16", torch_compile=True)
        if "torch:mcn_light" in predictors:
            light_model = predictors["torch:mcn_light"].model
            predictors["torch_bf16:mcn_light"] = Predictor(light_model, light, precision="bf16")
    int8 = has_ort and cpu_int8_native()
    calibration = calibration_images() if int8 else []
    if has_ort:
        predictors["onnxruntime:mcn"] = Predictor(model, config, backend="onnxruntime")
        if "torch:mcn_light" in predictors:
            light_model = predictors["torch:mcn_light"].model
            predictors["onnxruntime:mcn_light"] = Predictor(light_model, light, backend="onnxruntime")
    if int8:
        frames = folder / "calibration"
        frames.mkdir()
        for index, image in enumerate(calibration):
            cv2.imwrite(str(frames / f"{index:02d}.png"), image)
        graph, _ = quantize_graph(model, config, image_files(frames))
        predictors["onnxruntime_int8:mcn"] = Predictor(
            model, config, backend="onnxruntime", precision="int8", int8_graph=graph
        )
        if "torch:mcn_light" in predictors:
            light_model = predictors["torch:mcn_light"].model
            light_graph, _ = quantize_graph(light_model, light, image_files(frames))
            predictors["onnxruntime_int8:mcn_light"] = Predictor(
                light_model, light, backend="onnxruntime", precision="int8", int8_graph=light_graph
            )
    contenders: dict[str, Callable[[], object]] = {}
    facts: dict[str, Any] = {
        "mcn_config": config.name,
        "weights": args.weights or "random init",
        "inputs": {},
        "int8": "onnxruntime_int8 rows: static int8 (QDQ) calibrated on 8 camera-like images, both networks"
        if int8
        else "no int8 rows: " + ("no onnxruntime" if not has_ort else "this CPU has no VNNI/AMX"),
        "bf16": "torch_bf16 rows: weights and input in bfloat16, both networks"
        if bf16
        else "no torch_bf16 rows: this CPU has no native bf16 (avx512_bf16 / amx_bf16)",
    }
    sizes = {"640x480": SIZES["640x480"]} if args.quick else SIZES
    for size_name, hw in sizes.items():
        torch.manual_seed(0)  # the same YOLO weights at every size
        yolo_torch = yolo_models("yolo26n")  # per size: a shared one would rebuild anchors at every call
        image = camera_image(hw)
        shape = rect_input_size([hw], config.input_size)
        facts["inputs"][size_name] = {"mcn_rect": list(shape), "mcn_square": list(config.input_size)}
        for key, predictor in predictors.items():
            contenders[f"{key}@{size_name}"] = SplitPredict(predictor, image)
        contenders[f"torch:yolo26n_x3@{size_name}"] = YoloTrio(yolo_torch, image, config.input_size[1])
        if bf16:
            torch.manual_seed(0)
            yolo_bf16 = yolo_models("yolo26n")
            yolo_in_bf16(yolo_bf16, image, config.input_size[1], SCORE_THRESHOLD)
            contenders[f"torch_bf16:yolo26n_x3@{size_name}"] = YoloTrio(
                yolo_bf16, image, config.input_size[1], bf16=True
            )
        groups = [("onnxruntime", yolo_onnx_files("yolo26n", shape, folder))] if has_ort else []
        if int8:
            groups.append(("onnxruntime_int8", yolo_int8_files(groups[0][1], calibration)))
        for backend, files in groups:  # sessions as the MCN's (like for like), and ultralytics' own
            for network, threads in (("yolo26n_x3", args.threads), (ULTRALYTICS_SESSIONS, None)):
                models = load_yolo(files, image, shape, threads)
                contenders[f"{backend}:{network}@{size_name}"] = YoloTrio(models, image, shape)
    return contenders, facts


def main(argv: list[str] | None = None) -> int:
    """Build, time interleaved, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", default=None, help="MCN weights (default: random init of the R18 3-task 512)"
    )
    parser.add_argument("--input", type=int, default=512, help="input side (MCN input_size, YOLO imgsz); 512")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads; default 2")
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds; default 30 (2 with --quick)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="passes over all contenders; default 3 (1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="640x480 only, 2 rounds: a check of the script")
    parser.add_argument(
        "--out", default=None, help="output folder (default bench/results; temp with --quick)"
    )
    parser.add_argument("--name", default="e2e_cpu", help="results file name (default e2e_cpu)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 30)
    repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as folder:
        contenders, facts = build(args, Path(folder))
        print(f"{len(contenders)} contenders, {repeats} x {rounds} rounds", flush=True)
        passes = [time_backends(contenders, rounds, args.threads, seed) for seed in range(repeats)]
    # A compilation refused or failed, or inputs past the recompile limit, served eagerly (each sets the
    # note): those rows would be eager times under a compiled name.
    failed = {
        key: call.predictor.torch_compile_note
        for key, call in contenders.items()
        if isinstance(call, SplitPredict)
        and ":mcn_compiled@" in key
        and call.predictor.torch_compile_note is not None
    }
    if failed:
        raise SystemExit(f"e2e_cpu: torch_compile asked for but not used, no record written: {failed}")
    times = {key: [t for p in passes for t in p[0][key]] for key in passes[0][0]}
    splits = {
        key: {part: [t for p in passes for t in p[1][key][part]] for part in parts}
        for key, parts in passes[0][1].items()
    }
    rows = table(times, splits)
    for key, row in rows.items():
        print(f"{key:40s} {row['median_ms']:9.1f} ms (p95 {row['p95_ms']:.1f}) {row['split_median_ms']}")
    report: dict[str, Any] = {
        "command": shlex.join(["python", *(sys.argv if argv is None else ["bench/e2e_cpu.py", *argv])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions((*PACKAGES, "ultralytics", "onnxruntime", "onnx")),
        "git_commit": git_commit(),
        "threads": args.threads,
        "rounds": rounds,
        "repeats": repeats,
        "score_threshold": SCORE_THRESHOLD,
        "max_detections": MAX_DETECTIONS,
        **facts,
        "speedups": speedups(rows),
        "runs": rows,
    }
    report |= headlines(report["speedups"])
    # The same headlines from each repeat alone: the spread of this machine over the run.
    # With each pass's choice of the MCN's fastest backend, which the headline key follows.
    each = [speedups(table(*one)) for one in passes]
    report["per_repeat"] = [
        {**headlines(one), "e2e_vs_yolo26n_backend": one["640x480"]["best"]["backend"]} for one in each
    ]
    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.mkdtemp()) if args.quick else ROOT / "bench" / "results")
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(markdown(report))
    plot(report, out / f"{args.name}.png")
    print(json.dumps(report["speedups"], indent=1))
    print(f"e2e_vs_yolo26n_speedup {report['e2e_vs_yolo26n_speedup']}; wrote {out / f'{args.name}.json'}")
    return 0


def time_backends(
    contenders: dict[str, Callable[[], object]], rounds: int, threads: int, seed: int = 0
) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    """One pass over every contender: wall milliseconds per timed call, and each timed call's split
    (``seed``: of the rounds' shuffled orders, one per pass, so that passes do not repeat one order).

    Each backend's contenders are timed among themselves: ONNX Runtime's and torch's thread pools kept the
    cores busy for a while after a call and slowed whichever of the other backend ran next. The ONNX
    Runtime sessions (ours and YOLO's three, each with its own pool) do the same to each other: there each
    timed call follows an untimed one of the same contender."""
    times: dict[str, list[float]] = {}
    splits: dict[str, dict[str, list[float]]] = {}
    for backend in sorted({key.split(":")[0] for key in contenders}):
        group = {key: fn for key, fn in contenders.items() if key.startswith(f"{backend}:")}
        settle = 1 if backend.startswith("onnxruntime") else 0
        times |= interleaved(group, rounds, threads=threads, settle=settle, seed=seed)
        every = settle + 1  # the timed call is the last of each round's calls
        for key in group:
            parts = getattr(contenders[key], "parts", {})
            splits[key] = {
                name: values[-rounds * every :][every - 1 :: every] for name, values in parts.items()
            }
    return times, splits


def table(times: dict[str, list[float]], splits: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """One row per contender: its statistics and the median of each step."""
    rows: dict[str, Any] = {}
    for key, samples in times.items():
        backend_net, size = key.split("@")
        backend, network = backend_net.split(":")
        row = {"backend": backend, "network": network, "size": size, **stats(samples)}
        row["split_median_ms"] = {k: round(float(np.median(v)), 3) for k, v in splits[key].items()}
        rows[key] = row
    return rows


def headlines(ratios: dict[str, Any]) -> dict[str, float | None]:
    """The headline keys at 640x480 from :func:`speedups`' output."""
    at = ratios.get("640x480", {})
    keys = {
        "e2e_vs_yolo26n_speedup": "best",
        "e2e_best_vs_best_speedup": "best_vs_best",
        "e2e_fp32_best_vs_best_speedup": "best_vs_best_fp32",
        "e2e_bf16_vs_yolo26n_speedup": "torch_bf16",
        "e2e_light_vs_yolo26n_speedup": "light",
        "e2e_light_fp32_best_vs_best_speedup": "light_best_vs_best_fp32",
        "e2e_light_int8_vs_yolo26n_speedup": "light_onnxruntime_int8",
    }
    return {key: at[name]["speedup"] if name in at else None for key, name in keys.items()}


def speedups(rows: dict[str, Any]) -> dict[str, Any]:
    """Per size and backend: YOLO26n x3 median / MCN median; ``best``: the MCN's fastest backend's."""
    out: dict[str, Any] = {}
    for size in sorted({r["size"] for r in rows.values()}):
        per: dict[str, Any] = {}
        for backend in BACKENDS:
            mcn, yolo = rows.get(f"{backend}:mcn@{size}"), rows.get(f"{backend}:yolo26n_x3@{size}")
            if mcn and yolo:
                per[backend] = {
                    "mcn_ms": mcn["median_ms"],
                    "yolo26n_x3_ms": yolo["median_ms"],
                    "speedup": round(yolo["median_ms"] / mcn["median_ms"], 3),
                }
                if own := rows.get(f"{backend}:{ULTRALYTICS_SESSIONS}@{size}"):
                    per[backend]["yolo26n_x3_ultralytics_sessions_ms"] = own["median_ms"]
                    per[backend]["speedup_vs_ultralytics_sessions"] = round(
                        own["median_ms"] / mcn["median_ms"], 3
                    )
        if per:
            measured = [b for b in BACKENDS if b in per]
            fastest = min(measured, key=lambda b: per[b]["mcn_ms"])
            per["best"] = {"backend": fastest, **per[fastest]}
            # Each side's fastest backend: YOLO's may not be the one the MCN is fastest in.
            per["best_vs_best"] = _best_vs_best(per, measured)
            per["best_vs_best_fp32"] = _best_vs_best(per, [b for b in measured if b not in REDUCED_PRECISION])
        light_backends = []
        for backend, name in LIGHT_ROWS:
            if light := _beside(rows, backend, "mcn_light", size):
                per[name] = light
                if backend not in REDUCED_PRECISION:
                    light_backends.append(name)
        for backend, name in COMPILED_ROWS:
            if compiled := _beside(rows, backend, "mcn_compiled", size):
                per[name] = compiled
        if light_backends and "best_vs_best_fp32" in per:
            # The lighter variant's fastest fp32 backend against YOLO26n x3's fastest fp32 one.
            fastest = min(light_backends, key=lambda name: per[name]["mcn_ms"])
            yolo_best = per["best_vs_best_fp32"]["yolo26n_x3_backend"]
            per["light_best_vs_best_fp32"] = {
                "mcn_backend": per[fastest]["backend"],
                "yolo26n_x3_backend": yolo_best,
                "speedup": round(per[yolo_best]["yolo26n_x3_ms"] / per[fastest]["mcn_ms"], 3),
            }
        out[size] = per
    return out


def _beside(rows: dict[str, Any], backend: str, network: str, size: str) -> dict[str, Any] | None:
    """``network`` (an MCN row beside the paper config's) against YOLO26n x3 in ``backend`` at ``size``; None
    where either was not timed."""
    mcn, yolo = rows.get(f"{backend}:{network}@{size}"), rows.get(f"{backend}:yolo26n_x3@{size}")
    if not (mcn and yolo):
        return None
    return {
        "backend": backend,
        "mcn_ms": mcn["median_ms"],
        "yolo26n_x3_ms": yolo["median_ms"],
        "speedup": round(yolo["median_ms"] / mcn["median_ms"], 3),
    }


def _best_vs_best(per: dict[str, Any], backends: list[str]) -> dict[str, Any]:
    mcn = min(backends, key=lambda b: per[b]["mcn_ms"])
    yolo = min(backends, key=lambda b: per[b]["yolo26n_x3_ms"])
    return {
        "mcn_backend": mcn,
        "yolo26n_x3_backend": yolo,
        "speedup": round(per[yolo]["yolo26n_x3_ms"] / per[mcn]["mcn_ms"], 3),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency per network and backend: stacked preprocess / forward / decode bars, one panel per size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes = sorted({row["size"] for row in report["runs"].values()})
    figure = Figure(figsize=(4.5 * len(sizes), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(sizes), squeeze=False)[0]
    colours = {"preprocess": "#4c72b0", "forward": "#dd8452", "decode": "#55a868"}
    for ax, size in zip(axes, sizes, strict=True):
        rows = [(k.split("@")[0], r) for k, r in report["runs"].items() if r["size"] == size]
        bottom = np.zeros(len(rows))
        for part, colour in colours.items():
            values = np.array([r["split_median_ms"].get(part, 0.0) for _, r in rows])
            ax.bar(range(len(rows)), values, bottom=bottom, color=colour, label=part)
            bottom += values
        labels = [name.replace(":", " ").replace("_x3", " x3") for name, _ in rows]
        ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=40, ha="right", rotation_mode="anchor")
        ax.set_title(f"{size} image in, results out")
        ax.set_ylabel("median ms")
    axes[0].legend(fontsize=7)
    figure.savefig(path, dpi=100)


def headline_note(report: dict[str, Any]) -> str:
    """Which backends the 640x480 headlines compared, and, where the MCN's fastest is a PyTorch one, that
    the same-backend figure is then mostly ultralytics' PyTorch postprocessing."""
    at = report.get("speedups", {}).get("640x480", {})
    best, pair = at.get("best", {}), at.get("best_vs_best", {})
    if not best or not pair:
        return ""
    note = (
        f" (MCN's fastest: {best['backend']}; best against best: the MCN in {pair['mcn_backend']} against "
        f"YOLO26n x3 in {pair['yolo26n_x3_backend']})"
    )
    if str(best["backend"]).startswith("torch"):
        note += (
            ". The MCN's fastest backend is a PyTorch one here, so `e2e_vs_yolo26n_speedup` compares against "
            "ultralytics' PyTorch predictor, most of whose time is its semantic postprocessing: "
            "`e2e_best_vs_best_speedup` is the figure about the networks"
        )
    return note


def per_repeat_text(per_repeat: list[dict[str, Any]]) -> str:
    """The headlines of each repeat alone, the issue's key with the MCN backend each repeat chose (records
    before it was kept say none)."""
    keys = (
        "e2e_vs_yolo26n_speedup",
        "e2e_best_vs_best_speedup",
        "e2e_fp32_best_vs_best_speedup",
        "e2e_light_fp32_best_vs_best_speedup",
        "e2e_light_int8_vs_yolo26n_speedup",
        "e2e_bf16_vs_yolo26n_speedup",
    )

    def value(one: dict[str, Any], key: str) -> str:
        backend = one.get("e2e_vs_yolo26n_backend") if key == keys[0] else None
        return f"{one.get(key)}" + (f" ({backend})" if backend else "")

    return "; ".join(f"`{key}` " + " / ".join(value(one, key) for one in per_repeat) for key in keys)


def speedup_table(report: dict[str, Any], sizes: tuple[str, ...] | None = None) -> list[str]:
    """The MCN against YOLO26n x3 per image size (``sizes``, default all) and backend, as table lines."""
    lines = [
        "| size | backend | MCN ms | YOLO26n x3 ms | speed-up | YOLO26n x3 ms, ultralytics' sessions | "
        "speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for size in sizes or tuple(report["speedups"]):
        per = report["speedups"][size]
        for backend in BACKENDS:
            if backend in per:
                v = per[backend]
                figures = f"{v['mcn_ms']:.1f} | {v['yolo26n_x3_ms']:.1f} | {v['speedup']:.2f}x | "
                if "yolo26n_x3_ultralytics_sessions_ms" in v:
                    figures += (
                        f"{v['yolo26n_x3_ultralytics_sessions_ms']:.1f} | "
                        f"{v['speedup_vs_ultralytics_sessions']:.2f}x"
                    )
                else:
                    figures += " |"
                lines.append(f"| {size} | {backend} | {figures} |")
        for rows_of, label in ((LIGHT_ROWS, "light variant"), (COMPILED_ROWS, "torch.compile")):
            for _, name in rows_of:
                if name in per:
                    v = per[name]
                    figures = f"{v['mcn_ms']:.1f} | {v['yolo26n_x3_ms']:.1f} | {v['speedup']:.2f}x |  |"
                    lines.append(f"| {size} | {v['backend']}, {label} | {figures} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as tables."""
    lines = [
        "# End to end on the CPU: image in, results out (MCN vs YOLO26n x3)",
        "",
        provenance_opening(report)
        + f"{report['threads']} threads, {report.get('repeats', 1)} x {report['rounds']} interleaved rounds, "
        f"MCN {report['mcn_config']} "
        f"({report['weights']}), score threshold {report['score_threshold']}"
        + (
            f", at most {report['max_detections']} boxes and persons per image on both sides"
            if "max_detections" in report
            else ", YOLO at its own 300 detections per network, the MCN at 100"
        )
        + ")."
        + (" **--quick: a check of the script, not a result.**" if report["quick"] else ""),
        "",
        "**e2e_vs_yolo26n_speedup** (640x480, the MCN's fastest backend against YOLO26n x3 in the same "
        f"backend): **{report['e2e_vs_yolo26n_speedup']}**; each side's fastest backend "
        f"(`e2e_best_vs_best_speedup`): **{report.get('e2e_best_vs_best_speedup')}**; in fp32 only "
        f"(`e2e_fp32_best_vs_best_speedup`): **{report.get('e2e_fp32_best_vs_best_speedup')}**; the lighter "
        f"variant (`mcn_light`) in PyTorch fp32: **{report.get('e2e_light_vs_yolo26n_speedup')}**, its "
        f"fastest fp32 backend against YOLO's (`e2e_light_fp32_best_vs_best_speedup`): "
        f"**{report.get('e2e_light_fp32_best_vs_best_speedup')}**, in int8 against YOLO's int8 "
        f"(`e2e_light_int8_vs_yolo26n_speedup`): **{report.get('e2e_light_int8_vs_yolo26n_speedup')}**; "
        "both in PyTorch bf16 (`e2e_bf16_vs_yolo26n_speedup`): "
        f"**{report.get('e2e_bf16_vs_yolo26n_speedup')}**{headline_note(report)}. "
        "All rounds of the run pooled; each repeat alone: " + per_repeat_text(report.get("per_repeat", [])),
        "",
        *speedup_table(report),
    ]
    lines += [
        "",
        "| run | median ms | p95 | preprocess | forward | decode / postprocess |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, row in report["runs"].items():
        split = row["split_median_ms"]
        lines.append(
            f"| {key} | {row['median_ms']:.1f} | {row['p95_ms']:.1f} | {split.get('preprocess', 0):.1f} | "
            f"{split.get('forward', 0):.1f} | {split.get('decode', 0):.1f} |"
        )
    lines += [
        "",
        "`mcn_compiled`: `mcn` with `Predictor(torch_compile=True)` (its first call, untimed, compiles;",
        "YOLO runs uncompiled, as ultralytics runs it: in no headline).",
        "`mcn` letterboxes to the camera shape (`Predictor(rect=True)`, the default), `mcn_square` to",
        "512x512. `mcn_light` is config/models/resnet18_det80_seg80_pose_light_512.yaml (one head conv per",
        "task, a narrower up-path; not the paper's), camera-shaped like `mcn`.",
        "YOLO's split is ultralytics' own per-call speed figures summed over its three networks. In ONNX",
        "Runtime, `yolo26n_x3` runs ultralytics' own predictor with each network's session made as the MCN's",
        f"({report['threads']} intra-op threads that do not spin between calls): the speed-ups and headlines",
        f"use it. `{ULTRALYTICS_SESSIONS}` keeps ultralytics' sessions (ONNX Runtime's defaults: one",
        "spinning pool per network, sized by the cores), as a user gets them out of the box.",
        f"int8: {report.get('int8')}; YOLO's ONNX files quantised by the same function",
        "(`mcn_ros.model.quantize.quantize_onnx`) and run by ultralytics' own ONNX Runtime backend.",
        f"bf16: {report.get('bf16')}; YOLO's predictors run a bfloat16 copy of their modules, their float32",
        "input cast by `torch.autocast` (ultralytics has no CPU bf16 switch of its own).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
