"""The headline figures of the recorded benchmarks against issue 13's targets, in one table.

    python bench/summary.py            # writes bench/results/summary.md and the README's copies, prints it
    python bench/summary.py --check    # exit 1 if the README's copy differs from what the records give

Reads only the records under ``bench/results/`` (no measurement): each row names the record it comes from,
that record's commit and date, so a figure can be traced to the run that made it. A target is "met" or
"missed" by comparing the recorded value with it; rows without a target are context. The README's
"Benchmarks" section begins with this table between the markers below, which this script rewrites;
``--check`` (also a test) keeps that copy equal to the records, so no figure there is edited by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
README = REPO / "README.md"
#: The README's copy of the headline table sits between these two lines ...
BEGIN = "<!-- bench/summary.py: begin -->"
END = "<!-- bench/summary.py: end -->"
#: ... and of e2e_cpu's table at the camera's size between these.
E2E_BEGIN = "<!-- bench/summary.py: e2e begin -->"
E2E_END = "<!-- bench/summary.py: e2e end -->"
CAMERA = "640x480"


@dataclass(frozen=True)
class Target:
    """A bound on a figure: ``value <= bound`` (``at_most``) or ``value >= bound``."""

    bound: float
    at_most: bool = False

    def met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound

    def text(self, unit: str) -> str:
        return ("<= " if self.at_most else ">= ") + _number(self.bound, unit)


@dataclass(frozen=True)
class Row:
    """One headline: what it measures, the record it comes from, how to read its value(s) from that record."""

    label: str
    record: str
    values: Callable[[dict[str, Any]], list[tuple[str, float]]]  # (what, value) pairs, shown side by side
    unit: str = "x"
    target: Target | None = None
    note: str = ""


def _number(value: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * value:.1f} %"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.3f}" if unit == "ratio" else f"{value:.1f}"


def _e2e(key: str) -> Callable[[dict[str, Any]], list[tuple[str, float]]]:
    def read(record: dict[str, Any]) -> list[tuple[str, float]]:
        entry = record["speedups"][CAMERA][key]
        if "mcn_backend" in entry:
            backends = f"MCN {entry['mcn_backend']}, YOLO {entry['yolo26n_x3_backend']}"
        else:  # both in one backend: the entry's own, or the one its key names
            backends = entry.get("backend", key)
        return [(backends, entry["speedup"])]

    return read


def _model_cpu(key: str) -> Callable[[dict[str, Any]], list[tuple[str, float]]]:
    return lambda record: [(shape, record["headline"][shape][key]) for shape in ("square", "camera")]


def _decode_share(record: dict[str, Any]) -> list[tuple[str, float]]:
    rows = record["settings"]
    names = {"torch fp32": "demo@512", "onnxruntime fp32": "demo@512 onnxruntime", "bf16": "demo@512/bf16",
             "int8": "demo@512 onnxruntime/int8"}  # fmt: skip
    return [(what, rows[name]["decode_share"]) for what, name in names.items() if name in rows]


def _gpu_stn(record: dict[str, Any]) -> list[tuple[str, float]]:
    return [(f"{precision} {shape}", record["headline"][precision][shape]["mcn_vs_stn_speedup"])
            for precision in ("fp32/b1", "fp16/b1") for shape in ("square", "camera")]  # fmt: skip


def _overhead(what: str) -> Callable[[dict[str, Any]], list[tuple[str, float]]]:
    return lambda record: [(what, record["overhead_ratio"])]


def _replay(record: dict[str, Any]) -> list[tuple[str, float]]:
    return [("bbox AP", 100 * record["bbox_AP"]), ("keypoint AP", 100 * record["kp_AP"]),
            ("mIoU", 100 * record["mIoU"])]  # fmt: skip


ROWS: tuple[Row, ...] = (
    Row(
        "Forward: 3-task ResNet-18 MCN against its three single-task networks (CPU, PyTorch fp32; 512x512, "
        "camera-shaped 512x384)",
        "model_cpu",
        _model_cpu("mcn_vs_stn_speedup"),
        target=Target(2.5),
    ),
    Row(
        "The same on a GPU (fp32 and fp16, batch 1; 512x512, 512x384)",
        "model_gpu",
        _gpu_stn,
        note="paper, Figure 7: 17 / 7 ms = 2.4x",
    ),
    Row(
        "Forward: MCN against YOLO26n detect + pose + semantic (CPU, PyTorch fp32)",
        "model_cpu",
        _model_cpu("mcn_vs_yolo26n_speedup"),
    ),
    Row(
        f"End to end, {CAMERA} image in, results out: `e2e_vs_yolo26n_speedup` (the MCN's fastest backend "
        "against YOLO26n x3 in that same backend)",
        "e2e_cpu",
        _e2e("best"),
        target=Target(1.25),
        note="issue's definition; where that backend is PyTorch, most of YOLO's time is ultralytics' "
        "semantic postprocessing: read best against best",
    ),
    Row(
        f"End to end, {CAMERA}: each side's fastest CPU path (best against best)",
        "e2e_cpu",
        _e2e("best_vs_best"),
    ),
    Row(f"End to end, {CAMERA}: both in ONNX Runtime int8", "e2e_cpu", _e2e("onnxruntime_int8")),
    Row(f"End to end, {CAMERA}: each side's fastest fp32 path", "e2e_cpu", _e2e("best_vs_best_fp32")),
    Row(
        f"End to end, {CAMERA}, on a CPU with neither native bf16 nor int8 dot products (AVX2: fp32 only): "
        "`e2e_vs_yolo26n_speedup`",
        "e2e_cpu_avx2",
        _e2e("best"),
        target=Target(1.25),
        note="the MCN's 31 GFLOPs against YOLO26n x3's 11 (`model_cpu`), in the same fp32 kernels",
    ),
    Row(
        f"End to end, {CAMERA}, the same AVX2 CPU: the lighter variant (not the paper's) against YOLO26n x3, "
        "each in its fastest fp32 backend",
        "e2e_cpu_avx2",
        _e2e("light_best_vs_best_fp32"),
    ),
    Row(
        "Decoding / forward, trained demo weights, 512x384 input",
        "decode_share",
        _decode_share,
        unit="%",
        target=Target(0.05, at_most=True),
    ),
    Row(
        "Decoding / forward, trained demo weights, 512x384 input, on the AVX2 CPU (fp32 only)",
        "decode_share_avx2",
        _decode_share,
        unit="%",
        target=Target(0.05, at_most=True),
    ),
    *(
        Row(label, record, _overhead(what), unit="ratio", target=Target(0.10, at_most=True))
        for label, record, what in (
            (
                "`overhead_ratio`: the node over DDS against `Predictor.predict` (p50), PyTorch fp32",
                "node_cpu",
                "fp32",
            ),
            ("`overhead_ratio`, ONNX Runtime int8", "node_cpu_int8", "int8"),
            ("`overhead_ratio`, PyTorch bf16", "node_cpu_bf16", "bf16"),
        )
    ),
    Row(
        "`make demo`: the demo weights through the node, 100 replayed synthetic frames",
        "replay_synthetic",
        _replay,
        unit="",
        note="identical to the model runtime alone",
    ),
)


def _commit(record: dict[str, Any]) -> str:
    commit = record.get("git_commit") or record.get("git") or "?"
    return str(commit)[:7]


def _date(record: dict[str, Any]) -> str:
    return str(record.get("date") or record.get("created") or "?")[:10]


def _machine(record: dict[str, Any]) -> str:
    if "gpu" in record.get("device", {}):
        return str(record["device"]["gpu"])
    host = record.get("machine", {})
    flags = set(host.get("cpu_flags", []))
    extras = "AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    return f"{host.get('affinity', '?')}-core {extras}"


def render(results: Path = RESULTS) -> str:
    """The summary table from the records in ``results``."""
    records = {row.record: json.loads((results / f"{row.record}.json").read_text()) for row in ROWS}
    lines = [
        "| headline | recorded | target | record (commit, date, machine) |",
        "|---|---|---|---|",
    ]
    for row in ROWS:
        record = records[row.record]
        values = row.values(record)
        shown = ", ".join(f"{_number(value, row.unit)} ({what})" for what, value in values)
        target = "" if row.target is None else row.target.text(row.unit)
        if row.target is not None:
            met = [row.target.met(value) for _, value in values]
            target += ": met" if all(met) else ": missed" if not any(met) else ": met in part"
        label = row.label + (f" ({row.note})" if row.note else "")
        source = f"`{row.record}` {_commit(record)}, {_date(record)}, {_machine(record)}"
        lines.append(f"| {label} | {shown} | {target} | {source} |")
    return "\n".join(lines) + "\n"


def e2e_table(results: Path = RESULTS) -> str:
    """e2e_cpu's table of the MCN against YOLO26n x3 per backend at the camera's size, from its record."""
    from e2e_cpu import speedup_table  # the record's own rendering

    record = json.loads((results / "e2e_cpu.json").read_text())
    return "\n".join(speedup_table(record, (CAMERA,))) + "\n"


def _block(text: str, begin: str, end: str) -> tuple[int, int]:
    first, last = text.find(begin), text.find(end)
    if first < 0 or last < first:
        raise ValueError(f"the README has no {begin!r} ... {end!r} block")
    return first + len(begin), last


def readme_copy(text: str, begin: str = BEGIN, end: str = END) -> str:
    """The table between the README's markers (ValueError where they are missing)."""
    first, last = _block(text, begin, end)
    return text[first:last].strip("\n") + "\n"


def with_table(text: str, table: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` (the README) with ``table`` between its markers."""
    first, last = _block(text, begin, end)
    return text[:first] + "\n" + table + text[last:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare the README's copy with the records")
    args = parser.parse_args(argv)
    blocks = ((render(), BEGIN, END), (e2e_table(), E2E_BEGIN, E2E_END))
    if args.check:
        text = README.read_text()
        if any(readme_copy(text, begin, end) != table for table, begin, end in blocks):
            print("README.md's benchmark tables differ from bench/results: run python bench/summary.py",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    (RESULTS / "summary.md").write_text("# Benchmark headlines (from the records)\n\n" + blocks[0][0])
    text = README.read_text()
    for table, begin, end in blocks:
        text = with_table(text, table, begin, end)
    README.write_text(text)
    print(blocks[0][0], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
