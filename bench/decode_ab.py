"""Decoding of an earlier commit against this tree's, side by side on the same head outputs (CPU).

    python bench/decode_ab.py --base 551c651 [--images 40] [--rounds 6]

The base commit's ``mcn_ros/model/decode.py`` and ``peaks.py`` (read with ``git show``) run over this tree's
other modules; both decode the same raw outputs of this tree's PyTorch forward (channels_last maps), so only
the decoding code differs. Settings as bench/decode_share.py's: the demo weights and the same model at
random init, at the demo's input (128: 128x96 for the 640x480 scenes) and the paper's (512: 512x384), every
task, score thresholds 0.3. Each round decodes every scene with one version, then with the other (the order
alternating between rounds); the first two rounds warm up, the others are timed. Per setting: the median of
the rounds' mean milliseconds per scene for each version, their ratio, and whether the two gave the same
detections, poses (keypoints and scores) and segmentation maps.

Writes bench/results/decode_ab.json and .md (``--name`` another).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from _common import PACKAGES, cpu_description, git_commit, machine, versions, write_record
from decode_share import CAMERA, INPUTS, camera_scenes
from e2e_cpu import SCORE_THRESHOLD
from seg_resampling import DEMO_WEIGHTS

from mcn_ros.model import decode
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.preprocess import preprocess
from mcn_ros.model.results import Results
from mcn_ros.model.weights import load_weights

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
WARM_UP_ROUNDS = 2


def base_decoding(commit: str, folder: Path) -> ModuleType:
    """The decode module of ``commit`` with that commit's peaks module, loaded under other names."""
    modules = {}
    for name in ("peaks", "decode"):
        path = folder / f"base_{name}.py"
        source = subprocess.run(
            ["git", "show", f"{commit}:mcn_ros/model/{name}.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if source.returncode != 0:
            raise SystemExit(f"decode_ab: git show {commit}:mcn_ros/model/{name}.py: {source.stderr.strip()}")
        path.write_text(source.stdout)
        spec = importlib.util.spec_from_file_location(f"base_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
        modules[name] = module
    modules["decode"].peaks = modules["peaks"]  # type: ignore[attr-defined]
    return modules["decode"]


def same_results(a: Results, b: Results) -> bool:
    """Whether two results hold the same detections, poses and segmentation map, bit for bit."""
    fields = []
    if a.detections is not None and b.detections is not None:
        fields += [(a.detections.boxes, b.detections.boxes), (a.detections.scores, b.detections.scores)]
        fields += [(a.detections.class_ids, b.detections.class_ids)]
    if a.poses is not None and b.poses is not None:
        fields += [(a.poses.boxes, b.poses.boxes), (a.poses.scores, b.poses.scores)]
        fields += [(a.poses.keypoints, b.poses.keypoints)]
    if a.segmentation is not None and b.segmentation is not None:
        fields += [(a.segmentation, b.segmentation)]
    return len(fields) == 7 and all(np.array_equal(x, y) for x, y in fields)


def measure(base: ModuleType, images: list[np.ndarray], side: int, kind: str, rounds: int) -> dict[str, Any]:
    """One setting: ``rounds`` rounds of both versions decoding every scene's outputs."""
    model, config, _ = load_weights(DEMO_WEIGHTS, device="cpu")
    if kind == "random":
        torch.manual_seed(0)
        model = MultitaskCenterNet(config).eval()
    config = dataclasses.replace(config, input_size=(side, side))
    predictor = Predictor(model, config)
    size = predictor.input_size([CAMERA])
    options = decode.DecodeOptions.from_config(
        config.decode, score_threshold=SCORE_THRESHOLD, pose_score_threshold=SCORE_THRESHOLD
    )
    scenes = []
    for image in images:
        batch, boxes = preprocess(
            [image], size, config.mean, config.std, predictor.device, "bgr", predictor.channels_last
        )
        scenes.append((predictor.forward(batch, config.tasks), boxes))
    decoders = {"base": base, "head": decode}
    means: dict[str, list[float]] = {name: [] for name in decoders}
    last: dict[str, list[Results]] = {}
    for round_ in range(rounds + WARM_UP_ROUNDS):
        order = list(decoders) if round_ % 2 == 0 else list(reversed(decoders))
        for name in order:
            start = time.perf_counter()
            last[name] = [
                decoders[name].decode_batch(outputs, boxes, [CAMERA], config, None, options)[0]
                for outputs, boxes in scenes
            ]
            if round_ >= WARM_UP_ROUNDS:
                means[name].append(1000 * (time.perf_counter() - start) / len(scenes))
    medians = {name: round(float(np.median(values)), 3) for name, values in means.items()}
    return {
        "network_input": list(size),
        "median_ms": medians,
        "head_vs_base": round(medians["head"] / medians["base"], 3),
        "same_results": all(same_results(a, b) for a, b in zip(last["base"], last["head"], strict=True)),
        "rounds": rounds,
    }


def render(record: dict[str, Any]) -> str:
    lines = [
        "# Decoding: an earlier commit's against this tree's (CPU)",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git_commit']}; "
        f"{cpu_description(record['machine'])}, torch threads {record['threads']}). The base's decode.py and "
        f"peaks.py ({record['base']}) over this tree's other modules, on the same PyTorch outputs of "
        f"{record['images']} demo scenes at 640x480, every task, thresholds {record['score_threshold']}; "
        f"{record['rounds']} rounds after {WARM_UP_ROUNDS} warm-up, the versions alternating.",
        "",
        "| weights | network input | base ms | head ms | head / base | same results |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, row in record["settings"].items():
        kind, _, _ = name.partition("@")
        height, width = row["network_input"]
        lines.append(
            f"| {'demo (trained)' if kind == 'demo' else 'random init'} | {width}x{height} | "
            f"{row['median_ms']['base']} | {row['median_ms']['head']} | {row['head_vs_base']} | "
            f"{'yes' if row['same_results'] else 'no'} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base", required=True, help="the earlier commit (anything git show accepts)")
    parser.add_argument("--images", type=int, default=40, help="held-out scenes (at most 200)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per setting (default 6)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads; default 2")
    parser.add_argument("--name", default="decode_ab", help="results file name (default decode_ab)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 1 <= args.images <= 200 or args.rounds < 1:
        parser.error("--images must be 1..200 and --rounds at least 1")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = base_decoding(args.base, Path(tmp))
        images = camera_scenes(Path(tmp), args.images)
        settings = {
            f"{kind}@{side}": measure(base, images, side, kind, args.rounds)
            for side in INPUTS
            for kind in ("demo", "random")
        }
    resolved = subprocess.run(
        ["git", "rev-parse", args.base], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    record = {
        "command": shlex.join(["python", "bench/decode_ab.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": resolved,
        "images": args.images,
        "rounds": args.rounds,
        "threads": args.threads,
        "score_threshold": SCORE_THRESHOLD,
        "settings": settings,
        "machine": machine(),
        "versions": versions(PACKAGES),
        "git_commit": git_commit(),
    }
    write_record(args.results, args.name, record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
