"""The nearest segmentation map brought to image pixels on the CPU: runs repeated against fancy indexing.

    python bench/sample_grid.py [--rounds 300]

``preprocess.sample_grid`` (what decoding runs for ``segmentation_resampling="nearest"``) repeats runs of
map rows and columns (``np.repeat``) where the letterbox's pixel-to-cell indices never decrease; before, it
indexed the map with them (``map[:, cols][rows]`` in numpy, still its fallback). Both on uint8 class maps of
the sizes the shipped configs give (stride-4 maps of the demo's 128 input and the paper's 512, camera-shaped)
to 640x480 and 1280x720 images, with the pixel-to-cell tables as decoding caches them; interleaved rounds,
medians, and a check that both give the same map.

Writes bench/results/sample_grid.json and .md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import git_commit, machine, versions, write_record
from _timing import interleaved, stats

from mcn_ros.model.preprocess import letterbox_for, nearest_cells, rect_input_size, sample_grid

ROOT = Path(__file__).resolve().parents[1]
#: (image (h, w), network input side): each image letterboxed camera-shaped at that scale.
CASES: tuple[tuple[tuple[int, int], int], ...] = (
    ((480, 640), 128),
    ((480, 640), 512),
    ((720, 1280), 512),
)
STRIDE = 4


def contenders(classes: int = 81) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """``<image>@<input>:runs|indexing`` -> one resampling call, and per case the map size and whether the
    two agree."""
    rng = np.random.default_rng(0)
    calls: dict[str, Callable[[], object]] = {}
    checks: dict[str, Any] = {}
    for (h, w), side in CASES:
        input_hw = rect_input_size([(h, w)], (side, side))
        box = letterbox_for((h, w), input_hw)
        map_hw = (input_hw[0] // STRIDE, input_hw[1] // STRIDE)
        class_map = torch.from_numpy(rng.integers(0, classes, map_hw, dtype=np.uint8))
        rows, cols = nearest_cells(box, (h, w), STRIDE, map_hw, torch.device("cpu"))
        values, row_index, col_index = class_map.numpy(), rows.numpy(), cols.numpy()
        name = f"{w}x{h}@{side}"

        def runs(m: torch.Tensor = class_map, r: torch.Tensor = rows, c: torch.Tensor = cols) -> object:
            return sample_grid(m, r, c)

        def indexing(v: np.ndarray = values, r: np.ndarray = row_index, c: np.ndarray = col_index) -> object:
            return torch.from_numpy(v[:, c][r])

        calls[f"{name}:runs"], calls[f"{name}:indexing"] = runs, indexing
        sampled = sample_grid(class_map, rows, cols).numpy()
        same = bool(np.array_equal(sampled, values[:, col_index][row_index]))
        checks[name] = {"map": list(map_hw), "image": [h, w], "same": same}
    return calls, checks


def render(record: dict[str, Any]) -> str:
    """The record as a table."""
    lines = [
        "# Nearest segmentation map to image pixels (CPU): runs repeated against fancy indexing",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git_commit']}; "
        f"{record['machine'].get('cpu')}; {record['rounds']} interleaved rounds, medians).",
        "",
        "| image | network input | class map | runs (np.repeat) us | indexing us | speed-up | same map |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for name, row in record["cases"].items():
        image, side = name.split("@")
        lines.append(
            f"| {image} | {side} | {row['map'][1]}x{row['map'][0]} | {row['runs_us']:.0f} | "
            f"{row['indexing_us']:.0f} | {row['speedup']:.2f}x | {row['same']} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    calls, checks = contenders()
    times = interleaved(calls, args.rounds, warmup=5)
    cases: dict[str, Any] = {}
    for name, check in checks.items():
        runs, indexing = stats(times[f"{name}:runs"]), stats(times[f"{name}:indexing"])
        cases[name] = {
            **check,
            "runs_us": round(1000 * runs["median_ms"], 1),
            "indexing_us": round(1000 * indexing["median_ms"], 1),
            "speedup": round(indexing["median_ms"] / runs["median_ms"], 2),
        }
    record: dict[str, Any] = {
        "command": shlex.join(["python", "bench/sample_grid.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "git_commit": git_commit(),
        "rounds": args.rounds,
        "cases": cases,
    }
    write_record(args.out, "sample_grid", record, render(record))
    return 0 if all(row["same"] for row in cases.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
