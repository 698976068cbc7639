"""What the CPU speed benchmarks share: interleaved timing, latency statistics, FLOP counts, the machine's
matrix-product rate, and the ultralytics peer networks (imported here only, never by mcn_ros).

Timing runs every contender once per round, in a shuffled order, so that a machine shared with other work
slows all of them alike; reports compare contenders of the same run only.
"""

from __future__ import annotations

import copy
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

#: The peer networks: one per task, built from ultralytics' own model YAMLs with the MCN's class counts
#: (:data:`YOLO_CLASSES`; random init, no download).
YOLO_FAMILIES: dict[str, tuple[str, ...]] = {
    "yolo26n": ("yolo26n.yaml", "yolo26n-pose.yaml", "yolo26n-sem.yaml"),
    "yolo11n": ("yolo11n.yaml", "yolo11n-pose.yaml", "yolo11n-seg.yaml"),
}


def interleaved(
    contenders: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    threads: int | None = None,
    settle: int = 0,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Run each contender ``warmup`` times, then ``rounds`` rounds of one call each, in an order shuffled
    anew each round (:func:`round_orders`); returns the wall times in milliseconds per contender.

    ``settle``: untimed calls of the same contender right before each timed one. An ONNX Runtime session's
    threads spin for a while after a call, and each session has its own pool: the next session's call was
    up to 60 % slower here (bench/int8_onnxruntime.py); the settling call takes that instead.

    ``threads``: torch's thread count, set again before every call (untimed), because ultralytics' predictor
    sets it to the CPU count less one when it selects its device, which would leave every torch contender
    after it on other threads than asked (one thread on a 2-core machine).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            if threads is not None:
                torch.set_num_threads(threads)
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for order in round_orders(names, rounds, seed):
        for name in order:
            if threads is not None:
                torch.set_num_threads(threads)
            for _ in range(settle):
                contenders[name]()
            start = time.perf_counter()
            contenders[name]()
            times[name].append(1000 * (time.perf_counter() - start))
    return times


def round_orders(names: list[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """The order of ``names`` in each of ``rounds`` rounds: a seeded shuffle per round.

    A call leaves the caches, the other core and the thread pools in a state the next call inherits (after
    ultralytics' three networks the MCN's preprocess and decode steps ran 2-3 ms slower here). A rotation
    keeps the cyclic order: within a round each contender runs behind the same one every time, so one could
    take that cost in most rounds and another in none; shuffled, each runs behind each of the others about
    equally often.
    """
    shuffle = random.Random(seed).shuffle
    orders = []
    for _ in range(rounds):
        order = list(names)
        shuffle(order)
        orders.append(order)
    return orders


def stats(samples: list[float]) -> dict[str, float]:
    """Median, 95th percentile, min and count of millisecond samples."""
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p95_ms": round(float(np.percentile(samples, 95)), 3),
        "min_ms": round(min(samples), 3),
        "n": len(samples),
    }


def gflops(fn: Callable[[], object]) -> float:
    """GFLOPs of one call of ``fn`` (torch's FLOP counter: 2 per multiply-add of convs and matmuls)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def matmul_gflops_per_s(size: int = 2048, repeats: int = 5) -> float:
    """The best rate of a ``size`` square float32 matrix product on this machine (GFLOP/s, torch threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def yolo_models(family: str) -> list[Any]:
    """The three ``ultralytics.YOLO`` networks of ``family`` (detect, pose, segmentation), random init."""
    try:
        from ultralytics import YOLO
    except ImportError as error:
        raise SystemExit(
            "the YOLO peers need ultralytics (make bench installs requirements/bench.txt; or put a "
            f"pip --target folder with it on PYTHONPATH): {error}"
        ) from error
    return [YOLO(str(yolo_config(name)), verbose=False) for name in YOLO_FAMILIES[family]]


#: Each peer's class count, as the MCN's tasks have them (80 detection classes, a person-only pose head, 80
#: segmentation classes + background); ultralytics' own YAMLs say 80 for pose (its COCO-pose training sets 1)
#: and 19 for semantic segmentation (Cityscapes), which would give the peers other work than the MCN's.
YOLO_CLASSES: dict[str, int] = {
    "yolo26n.yaml": 80,
    "yolo26n-pose.yaml": 1,
    "yolo26n-sem.yaml": 81,
    "yolo11n.yaml": 80,
    "yolo11n-pose.yaml": 1,
    "yolo11n-seg.yaml": 80,
}
_YOLO_CONFIGS = Path(tempfile.gettempdir()) / "mcn_bench_yolo_configs"


def yolo_config(name: str) -> Path:
    """ultralytics' model YAML ``name`` with the class count of :data:`YOLO_CLASSES`, written under the same
    file name (ultralytics reads the model scale from it) to a temporary folder."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    config = yaml_model_load(name)
    config["nc"] = YOLO_CLASSES[name]
    config.pop("yaml_file", None)
    path = _YOLO_CONFIGS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def yolo_forward_module(yolo: Any, device: str = "cpu") -> torch.nn.Module:
    """The torch module ultralytics' own predictor runs on ``device`` (eval mode, Conv+BN fused as its
    predictor fuses, and in the memory layout its AutoBackend picks: channels_last on an x86 CPU with oneDNN,
    the default layout elsewhere, CUDA included). Timed in the default layout on the CPU, YOLO26n x3 took 1.3x
    as long as in its own predictor's layout (bench/results/model_cpu.json before 2026-12-05)."""
    module = yolo.model.eval()
    module = module.fuse(verbose=False) if hasattr(module, "fuse") else module
    if torch.device(device).type == "cpu" and ultralytics_cpu_channels_last():
        module = module.to(memory_format=torch.channels_last)
    return module


def bf16_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A bfloat16, channels_last copy of ``module`` (weights converted outright, as the Predictor does)."""
    return copy.deepcopy(module).to(torch.bfloat16).to(memory_format=torch.channels_last)


def yolo_in_bf16(models: list[Any], image: np.ndarray, imgsz: int | tuple[int, int], conf: float) -> None:
    """Make each ultralytics model's predictor run a bfloat16 copy of its module (ultralytics has no CPU bf16
    switch of its own); calls to ``predict`` then need ``torch.autocast("cpu", dtype=torch.bfloat16)`` around
    them, which casts ultralytics' float32 input for the first conv."""
    for yolo in models:
        yolo.predict(image, imgsz=imgsz, conf=conf, device="cpu", verbose=False)  # makes its predictor
        backend = yolo.predictor.model.backend
        backend.model = bf16_copy(backend.model)


def ultralytics_cpu_channels_last() -> bool:
    """Whether ultralytics' AutoBackend runs a PyTorch model channels_last on this CPU (x86 Linux or
    Windows, oneDNN on)."""
    return (
        platform.system() in {"Linux", "Windows"}
        and platform.machine() in {"AMD64", "x86_64"}
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
    )


def onnxruntime_version() -> str | None:
    """The installed onnxruntime's version, or None."""
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError:
        return None
    return str(onnxruntime.__version__)
