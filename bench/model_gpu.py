"""Raw forward on a CUDA GPU: the MCN against its single-task networks and three YOLO nano networks, in fp32,
fp16 and bf16, at batch 1 and 6; and the demo weights' accuracy at each precision.

    python bench/model_gpu.py [--rounds 30] [--batches 1 6] [--quick] [--out bench/results]
    python bench/model_gpu.py --device cpu --quick --batches 1   # a check of the script, not a result

The networks of bench/model_cpu.py (every shipped ``*_512`` config, the single-task composites of the
paper's Table 4 / Figure 7 for ResNet-18 and DLA-34, YOLO26n x3 and YOLO11n x3 from ultralytics' own model
YAMLs when ultralytics is installed), random init, at 512x512 and at the camera-shaped 384x512. The MCN runs
as the node runs it: ``Predictor.forward`` (BatchNorms folded, channels_last, fp16 / bf16 as CUDA autocast,
outputs returned as float32). YOLO runs its fused module; fp16 as its predictor runs ``half=True`` (the
module and input converted to half), bf16 likewise (our choice: ultralytics has no bf16 mode), each shape
with its own copy so that its head does not rebuild anchors on every change of input shape. Each call ends
with ``torch.cuda.synchronize()``; interleaved rounds per precision and batch, after warm-up calls; cuDNN's
autotuner left off, as in the node. "fp32" is torch's default on CUDA, as the node runs it: cuDNN may run
float32 convolutions in TF32 (the setting is recorded with the GPU). bf16 only where the GPU has it natively
(``torch.cuda.is_bf16_supported(including_emulation=False)``).

Accuracy: the demo weights (demo/mcn_demo.safetensors) on the demo's 200 held-out synthetic images through
``Predictor.forward`` on the device at each precision, scored as training's validation does (as
bench/precision_cpu.py does for bf16 on a CPU): the AP change of reduced precision.

Headlines per precision, batch and shape: ``mcn_vs_stn_speedup`` (ResNet-18 and DLA-34: the sum of the
three single-task forwards over the three-task MCN's; the paper gives 17 / 7 ms for ResNet-18 on a V100 and
61 / 29 ms for DLA-34 on a P100), ``mcn_vs_yolo26n_speedup``, ``mcn_vs_yolo11n_speedup`` and
``light_vs_yolo26n_speedup``.

Needs a CUDA device (``--device cuda``, the default): without one it says so and exits 2, writing nothing.
``--quick``: ResNet-18 networks and YOLO26n only, 2 rounds, written to a temporary folder unless ``--out``.

Writes ``model_gpu.json`` (command, GPU, versions, git commit, every figure) and ``model_gpu.md``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import shlex
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from _common import PACKAGES, git_commit, machine, versions, write_record
from _timing import gflops, interleaved, stats, yolo_forward_module, yolo_models
from model_cpu import LIGHT, MCN, SHAPES, headline, mcn_networks
from precision_cpu import accuracy
from seg_resampling import generate_demo_val

from mcn_ros.evaluation import METRICS
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.heads import count_parameters
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
#: Half-precision dtypes of the YOLO modules (the MCN's precision goes through Predictor).
HALF_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
HEADLINES: tuple[str, ...] = (
    "mcn_vs_stn_speedup",
    "mcn_vs_yolo26n_speedup",
    "mcn_vs_yolo11n_speedup",
    "light_vs_yolo26n_speedup",
)
#: The paper's forward times (ms): three single-task networks against the three-task MCN.
PAPER_STN_VS_MCN_MS: dict[str, tuple[float, float, str]] = {
    "resnet18": (17.0, 7.0, "Figure 7, Tesla V100, 128x128 segmentation output"),
    "dla34": (61.0, 29.0, "Table 4, Tesla P100, 512x512 segmentation output"),
}


def device_facts(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: the GPU's name, memory and compute capability, CUDA and cuDNN."""
    if device.type != "cuda":
        return {"device": str(device)}
    props = torch.cuda.get_device_properties(device)
    return {
        "device": str(device),
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        **fp32_modes(),
    }


def fp32_modes() -> dict[str, str]:
    """How torch runs float32 convolutions and matmuls on CUDA ("tf32" or "ieee"), under either torch API."""
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if conv in (None, "none"):
        conv = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    if matmul in (None, "none"):
        matmul = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return {"conv_fp32_precision": str(conv), "matmul_fp32_precision": str(matmul)}


def precisions_of(device: torch.device) -> tuple[str, ...]:
    """The precisions measured on ``device``: fp32, and on CUDA fp16 and (where the GPU has it) bf16."""
    if device.type != "cuda":
        return ("fp32",)  # a CPU check of the script: no fast fp16 convolutions there
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return ("fp32", "fp16", "bf16") if native_bf16 else ("fp32", "fp16")


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA), so that a call's wall time covers its kernels."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def mcn_predictor(config: ModelConfig, precision: str, device: torch.device) -> tuple[Predictor, int]:
    """A random-init MCN in a :class:`Predictor` as the node makes it, and its parameter count."""
    model = MultitaskCenterNet(config).eval()
    return Predictor(model, config, device=device, precision=precision), count_parameters(model)


def mcn_call(predictor: Predictor, batch: int, shape: tuple[int, int]) -> Callable[[], object]:
    """One ``Predictor.forward`` of a random batch (laid out as ``preprocess`` lays it out)."""
    images = torch.randn(batch, 3, *shape, device=predictor.device)
    if predictor.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    tasks = predictor.config.tasks
    return lambda: predictor.forward(images, tasks)


def yolo_module(yolo: Any, precision: str, device: torch.device) -> torch.nn.Module:
    """A copy of the fused module ultralytics' predictor runs, on ``device``, in fp16 / bf16 when asked."""
    module = copy.deepcopy(yolo_forward_module(yolo, str(device))).to(device)
    return module.to(HALF_DTYPES[precision]) if precision in HALF_DTYPES else module


def yolo_call(module: torch.nn.Module, batch: int, shape: tuple[int, int]) -> Callable[[], object]:
    """One forward of a random batch in the module's own dtype."""
    parameter = next(module.parameters())
    images = torch.randn(batch, 3, *shape, device=parameter.device, dtype=parameter.dtype)

    def run() -> object:
        with torch.inference_mode():
            return module(images)

    return run


def yolo_families(quick: bool) -> list[str]:
    """The YOLO families to measure: none without ultralytics (an optional benchmark dependency)."""
    if importlib.util.find_spec("ultralytics") is None:
        return []
    return ["yolo26n"] if quick else ["yolo26n", "yolo11n"]


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, Any]]:
    """Every network's facts and, per ``<precision>/b<batch>`` and shape, its latency figures."""
    precisions = precisions_of(device)
    sync = synchronizer(device)
    torch.manual_seed(0)
    nets: dict[str, dict[str, Any]] = {}
    predictors: dict[tuple[str, str], Predictor] = {}
    for name, config in mcn_networks(args.quick).items():
        nets[name] = {"kind": "mcn", "backbone": config.backbone, "tasks": sorted(config.tasks)}
        for precision in precisions:
            predictors[(name, precision)], nets[name]["params"] = mcn_predictor(config, precision, device)
        fp32 = predictors[(name, "fp32")]
        nets[name]["gflops"] = {s: round(gflops(mcn_call(fp32, 1, hw)), 3) for s, hw in SHAPES.items()}
    modules: dict[tuple[str, str, str], torch.nn.Module] = {}  # (name, precision, shape)
    for family in yolo_families(args.quick):
        for yolo in yolo_models(family):
            name = Path(str(yolo.model.yaml.get("yaml_file", yolo.task))).stem or yolo.task
            params = sum(p.numel() for p in yolo.model.parameters())  # before fusing, as ours
            nets[name] = {"kind": family, "task": yolo.task, "params": params}
            for precision in precisions:
                for shape_name in SHAPES:
                    modules[(name, precision, shape_name)] = yolo_module(yolo, precision, device)
            nets[name]["gflops"] = {
                s: round(gflops(yolo_call(modules[(name, "fp32", s)], 1, hw)), 3) for s, hw in SHAPES.items()
            }
    for precision in precisions:
        for batch in args.batches:
            setting = f"{precision}/b{batch}"
            calls: dict[str, Callable[[], object]] = {}
            for shape_name, shape in SHAPES.items():
                for (name, p), predictor in predictors.items():
                    if p == precision:
                        calls[f"{name}@{shape_name}"] = mcn_call(predictor, batch, shape)
                for (name, p, s), module in modules.items():
                    if p == precision and s == shape_name:
                        calls[f"{name}@{shape_name}"] = yolo_call(module, batch, shape)
            timed = {key: (lambda call=call: (call(), sync())) for key, call in calls.items()}
            times = interleaved(timed, args.rounds, warmup=args.warmup)
            for key, samples in times.items():
                name, shape_name = key.split("@")
                figures = stats(samples)
                seconds = figures["median_ms"] / 1000
                figures["tflops_per_s"] = round(nets[name]["gflops"][shape_name] * batch / seconds / 1000, 3)
                nets[name].setdefault("latency", {}).setdefault(setting, {})[shape_name] = figures
                print(f"{setting:9s} {key:48s} {figures['median_ms']:8.2f} ms", flush=True)
    return nets


def headlines(nets: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``setting`` -> shape -> headline ratios (ResNet-18; ``dla34_mcn_vs_stn_speedup`` for DLA-34)."""
    settings = list(dict.fromkeys(s for net in nets.values() for s in net.get("latency", {})))  # as measured
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for setting in settings:
        view = {
            name: {**net, "latency": net["latency"][setting]}
            for name, net in nets.items()
            if setting in net.get("latency", {})
        }
        for shape in SHAPES:
            ratios = headline(view, shape)
            ratios["dla34_mcn_vs_stn_speedup"] = headline(view, shape, "dla34")["mcn_vs_stn_speedup"]
            out.setdefault(setting, {})[shape] = ratios
    return out


def render(record: dict[str, Any]) -> str:
    """The record as tables."""
    gpu = record["device"]
    where = gpu.get("gpu", gpu["device"])
    lines = [
        "# Raw forward on a GPU: MCN, its single-task networks, YOLO nano x3",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git_commit']}; {where}, CUDA "
        f"{gpu.get('cuda')}, cuDNN {gpu.get('cudnn')}; torch {record['versions'].get('torch')}; "
        f"{record['rounds']} interleaved rounds, random init)."
        + (" **--quick: a check of the script, not a result.**" if record["quick"] else ""),
        "",
        "| precision / batch | shape | MCN vs STN, ResNet-18 | MCN vs STN, DLA-34 | MCN vs YOLO26n x3 | "
        "MCN vs YOLO11n x3 | light vs YOLO26n x3 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    for setting, shapes in record["headline"].items():
        for shape, values in shapes.items():
            keys = ("mcn_vs_stn_speedup", "dla34_mcn_vs_stn_speedup", *HEADLINES[1:])
            lines.append(f"| {setting} | {shape} | " + " | ".join(ratio(values.get(k)) for k in keys) + " |")
    settings = list(record["headline"])
    accuracy_rows = record["accuracy"]
    baseline = accuracy_rows["fp32"]
    lines += [
        "",
        f"Accuracy: the demo weights on the demo's {baseline['num_images']} held-out synthetic images, "
        "`Predictor.forward` on this device (points; change against fp32):",
        "",
        "| precision | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for precision, metrics in accuracy_rows.items():
        cells = []
        for key in METRICS:
            value, base = metrics.get(key), baseline.get(key)
            if value is None:
                cells.append("n/a")
            elif precision == "fp32" or base is None:
                cells.append(f"{100 * value:.1f}")
            else:
                cells.append(f"{100 * value:.1f} ({100 * (value - base):+.1f})")
        lines.append(f"| {precision} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Median ms per forward (whole batch), 512x512 / 384x512:",
        "",
        "| network | kind | params (M) | GFLOPs 512² | " + " | ".join(settings) + " |",
        "|---|---|---:|---:|" + "---:|" * len(settings),
    ]
    for name, net in record["networks"].items():
        cells = []
        for setting in settings:
            shapes = net.get("latency", {}).get(setting, {})
            cells.append(" / ".join(f"{shapes[s]['median_ms']:.2f}" for s in SHAPES if s in shapes))
        lines.append(
            f"| {name} | {net['kind']} | {net['params'] / 1e6:.2f} | {net['gflops']['square']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "The paper's forward times, three single-task networks / the three-task MCN: "
        + "; ".join(
            f"{backbone} {stn:.0f} / {mcn:.0f} ms ({stn / mcn:.1f}x, {where_measured})"
            for backbone, (stn, mcn, where_measured) in PAPER_STN_VS_MCN_MS.items()
        )
        + ".",
        "MCN: `Predictor.forward` as the node runs it (fp16 / bf16 = CUDA autocast). YOLO: ultralytics' "
        "fused module (fp16 = weights and input converted, as its predictor does with half=True; bf16 "
        "likewise, our choice). fp32 = torch's default on CUDA: convolutions "
        f"{gpu.get('conv_fp32_precision', 'n/a')}, matmuls {gpu.get('matmul_fp32_precision', 'n/a')} "
        "(tf32: cuDNN may use TF32 tensor cores). GFLOPs from torch's FLOP counter at batch 1 (it does not "
        "count the deformable convolutions of DLA-34 with DCN).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure on the device, write the record (nothing without the device asked for)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu only to check")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (30; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each network first")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--quick", action="store_true", help="ResNet-18 networks and YOLO26n only")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results (temp with --quick)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("model_gpu: no CUDA device here (torch.cuda.is_available() is False); nothing written")
        return 2
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    args.rounds = args.rounds or (2 if args.quick else 30)
    nets = measure(args, device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = generate_demo_val(Path(tmp) / "demo")
        measured = {p: accuracy(folder, p, device) for p in precisions_of(device)}
    record: dict[str, Any] = {
        "command": shlex.join(["python", "bench/model_gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "device": device_facts(device),
        "machine": machine(),
        "versions": versions((*PACKAGES, "ultralytics")),
        "git_commit": git_commit(),
        "rounds": args.rounds,
        "batches": args.batches,
        "shapes": {k: list(v) for k, v in SHAPES.items()},
        "mcn_networks": MCN,
        "light_network": LIGHT,
        "paper_stn_vs_mcn_ms": {k: list(v) for k, v in PAPER_STN_VS_MCN_MS.items()},
        "networks": nets,
    }
    record["headline"] = headlines(nets)
    record["accuracy"] = measured
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else ROOT / "bench" / "results")
    write_record(out, "model_gpu", record, render(record))
    print(f"wrote {out / 'model_gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
