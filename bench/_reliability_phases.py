"""The four phases of ``bench/reliability.py``: soak, overload, bad inputs, lifecycle churn.

Each takes a connected :class:`_node_probe.Probe` and the node process, and returns a JSON-ready dict with a
``passed`` verdict and the figures behind it.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _node_probe import BadFrame, Probe, bad_weights

from mcn_ros.bag.bagio import CameraFrame, with_stamp
from mcn_ros.bag.pacing import process_memory_kib
from mcn_ros.bag.run import NodeProcess
from mcn_ros.ros.parameters import PARAMETERS, Applies, ParameterSpec

#: Stamps of the benchmark's frames: 1 ms apart from 1000 s on (the player's warm-up frames use 1, 2, ... ns).
_STAMPS: Iterator[int] = itertools.count(1_000 * 1_000_000_000, 1_000_000)


LEVELS = {"p50": 50, "p95": 95, "p99": 99, "max": 100}


def next_stamp() -> int:
    return next(_STAMPS)


def rss_mb(pid: int) -> float:
    return round(process_memory_kib(pid)["VmRSS"] * 1024 / 1e6, 1)


def percentile_ms(values_ns: list[int], q: float) -> float | None:
    return round(float(np.percentile(values_ns, q)) / 1e6, 2) if values_ns else None


def send_bad(probe: Probe, bad: BadFrame, timeout_s: float = 15.0) -> tuple[bool, str]:
    """Publish one bad frame; (the node counted it rejected, the error it reports in /diagnostics)."""
    before = probe.counts()["rejected"]
    (probe.compressed if bad.compressed else probe._publisher).publish(bad.data)
    rejected = probe.wait_for_report(lambda v: int(v.get("frames_rejected", -1)) > before, timeout_s)
    return rejected, probe.diagnostics().get("last_error", "")


def soak(
    probe: Probe, node: NodeProcess, goods: list[bytes], bads: list[BadFrame], frames: int
) -> dict[str, Any]:
    """``frames`` frames in lockstep, every 100th a bad one (the cases in turn); RSS at a tenth and at the
    end."""
    keys = list(probe.topics)
    checkpoint = max(1, frames // 10)
    latencies: list[int] = []
    unanswered: list[int] = []
    rejections: list[dict[str, Any]] = []
    rss: dict[str, float] = {}
    start = time.monotonic()
    before = probe.settled_counts()
    for index in range(1, frames + 1):
        if index % 100 == 0:
            bad = bads[(index // 100 - 1) % len(bads)]
            rejected, error = send_bad(probe, bad)
            rejections.append({"frame": index, "case": bad.case, "rejected": rejected, "error": error,
                               "reason_matches": rejected and bad.expect in error})  # fmt: skip
        else:
            stamp = next_stamp()
            sent = time.monotonic_ns()
            probe.publish(with_stamp(goods[index % len(goods)], stamp))
            if probe.arrivals.wait([stamp], keys, 30.0):
                latencies.append(max(probe.arrivals.of(stamp).values()) - sent)
            else:
                unanswered.append(index)
        if index in (checkpoint, frames):
            rss[str(index)] = rss_mb(node.pid)
        if index % 1000 == 0:
            print(f"  soak: {index}/{frames} frames, {len(unanswered)} unanswered, rss {rss_mb(node.pid)} MB")
    after = probe.settled_counts()
    growth = (rss[str(frames)] - rss[str(checkpoint)]) / rss[str(checkpoint)]
    good = frames - len(rejections)
    delta = {k: after[k] - before[k] for k in after}
    return {
        "frames": frames,
        "good_frames": good,
        "bad_frames": len(rejections),
        "good_answered": good - len(unanswered),
        "unanswered": unanswered[:50],
        "bad_rejected_with_reason": sum(r["reason_matches"] for r in rejections),
        "rejections": rejections,
        "rss_mb": rss,
        "rss_checkpoints": [checkpoint, frames],
        "rss_growth": round(growth, 4),
        "latency_ms": {q: percentile_ms(latencies, v) for q, v in LEVELS.items()},
        "node_counts": delta,
        "duration_s": round(time.monotonic() - start, 1),
        "passed": not unanswered and all(r["reason_matches"] for r in rejections) and growth < 0.05,
    }


def _sentinel(probe: Probe, frame: bytes, pause_s: float) -> int:
    """Send one last frame, again after ``pause_s`` until answered, so every gap before it is known; how
    many were sent."""
    stamp, sent = next_stamp(), 0
    while sent < 30:
        probe.publish(with_stamp(frame, stamp))
        sent += 1
        if probe.arrivals.wait([stamp], list(probe.topics), pause_s):
            return sent
    raise RuntimeError("the node never answered the closing frame of the overload phase")


def overload(
    probe: Probe, node: NodeProcess, goods: list[bytes], processing_s: float, seconds: float, out: Path
) -> dict[str, Any]:
    """Frames at twice the processable rate (1 / ``processing_s``) for ``seconds``, through the player."""
    rate_hz = 2.0 / processing_s
    count = max(2, round(seconds * rate_hz))
    period_ns = round(1e9 / rate_hz)
    frames = []
    for i in range(count):
        stamp = next_stamp()
        frames.append(CameraFrame(stamp, i * period_ns, with_stamp(goods[i % len(goods)], stamp)))
    before = probe.settled_counts()
    played = probe.play(
        frames, [None] * count, "rate", out / "overload_bag", timeout_s=10.0, node_pid=node.pid
    )
    # The node's own processing time (slot to publish) over the last seconds of the overload: on a shared
    # machine it is longer than in lockstep, and it is what a frame that waited one frame costs.
    node_processing_ms = float(probe.diagnostics().get("processing_p50_ms", "nan"))
    sentinels = _sentinel(probe, goods[0], max(1.0, 4 * processing_s))
    after = probe.settled_counts()
    delta = {k: after[k] - before[k] for k in after}
    latencies = [
        max(lat for k in record.arrivals_ns if (lat := record.latency_ns(k)) is not None)
        for record in played.records
        if record.complete()
    ]
    p95 = percentile_ms(latencies, 95)
    sent = count + sentinels
    lockstep_ms = processing_s * 1e3
    bound_ms = 2 * (node_processing_ms if math.isfinite(node_processing_ms) else lockstep_ms)
    process = played.summary.get("node_process") or {}
    return {
        "rate_hz": round(rate_hz, 2),
        "processing_ms": round(bound_ms / 2, 2),
        "processing_source": "node processing_p50_ms during the overload"
        if math.isfinite(node_processing_ms)
        else "lockstep latency p50",
        "lockstep_latency_p50_ms": round(lockstep_ms, 2),
        "duration_s": played.summary["duration_s"],
        "frames_sent": sent,
        "frames_answered": len(latencies),
        "node_counts": delta,
        "received_plus_lost": delta["received"] + delta["lost"],
        "latency_ms": {q: percentile_ms(latencies, v) for q, v in LEVELS.items()},
        "p95_bound_ms": round(bound_ms, 2),
        "p95_in_processing_times": None if p95 is None else round(p95 / (bound_ms / 2), 2),
        "node_cpu_percent": process.get("cpu_percent"),
        "node_peak_rss_mb": process.get("peak_rss_mb"),
        "passed": p95 is not None and p95 < bound_ms and delta["received"] + delta["lost"] == sent,
    }


def _log_since(node: NodeProcess, offset: int) -> str:
    return node.log_path.read_text(encoding="utf-8", errors="replace")[offset:]


def _configure_error(node: NodeProcess, offset: int, timeout_s: float = 5.0) -> str:
    """The node's 'configure failed: ...' line logged after ``offset``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in _log_since(node, offset).splitlines():
            if "configure failed:" in line:
                return line.split("configure failed:", 1)[1].strip()
        time.sleep(0.1)
    return "(no 'configure failed' line in the node's log)"


def _log_size(node: NodeProcess) -> int:
    return len(node.log_path.read_text(encoding="utf-8", errors="replace"))


def _bad_values(spec: ParameterSpec) -> list[Any]:
    """Values ``spec`` must refuse: out of its range, not one of its choices, of another type."""
    values: list[Any] = []
    if spec.value_range is not None:
        low, high = spec.value_range
        if spec.type == "integer":
            values += [int(low) - 1, int(high) + 1]
        else:
            values += [float(low) - 1.0, float(high) + 1.0]
    if spec.choices:
        values.append("not_a_choice")
    if spec.name == "device":
        values.append("tpu")
    wrong_type = {"bool": "yes", "integer": "many", "double": "high", "string": 3}
    values.append(wrong_type.get(spec.type, 1.5))
    return values


def bad_inputs(
    probe: Probe, node: NodeProcess, good: bytes, bads: list[BadFrame], weights: Path, folder: Path
) -> dict[str, Any]:
    """Every bad input once, each followed by a good frame that must be answered; then a cleanup/configure
    cycle."""
    rows: list[dict[str, Any]] = []

    def serving() -> bool:
        return probe.serves(good, next_stamp())

    for bad in bads:
        rejected, error = send_bad(probe, bad)
        rows.append({"kind": "frame", "case": bad.case, "refused": rejected and bad.expect in error,
                     "error": error, "still_serving": serving()})  # fmt: skip

    def refuse(case: str, name: str, value: Any, active: bool) -> None:
        accepted, reason = probe.set_parameter(name, value)
        rows.append({"kind": "parameter", "case": case, "refused": not accepted, "error": reason,
                     "still_serving": serving() if active else None})  # fmt: skip

    refuse("unknown task", "tasks", ["detection", "teleportation"], True)
    for spec in PARAMETERS:
        for value in _bad_values(spec):
            refuse(f"{spec.name} = {value!r} (while active)", spec.name, value, True)

    # Configure-time parameters and weights files, tried while unconfigured.
    if not (probe.transition("deactivate") and probe.transition("cleanup")):
        raise RuntimeError("deactivate/cleanup failed before the configure-time cases")
    for spec in PARAMETERS:
        if spec.applies is Applies.CONFIGURE and spec.name != "weights":
            for value in _bad_values(spec):
                refuse(f"{spec.name} = {value!r} (while unconfigured)", spec.name, value, False)
    for case, path in bad_weights(weights, folder):
        offset = _log_size(node)
        set_ok, reason = probe.set_parameter("weights", str(path))
        configured = probe.transition("configure") if set_ok else False
        error = _configure_error(node, offset) if set_ok else reason
        rows.append({"kind": "weights", "case": case, "refused": not configured, "error": error,
                     "still_serving": None})  # fmt: skip
        if configured:
            probe.transition("cleanup")
    restored = probe.set_parameter("weights", str(weights))[0]
    cycle = restored and probe.transition("configure") and probe.transition("activate") and serving()
    passed = cycle and all(r["refused"] and r["still_serving"] is not False for r in rows)
    return {"cases": rows, "cleanup_configure_cycle_ok": cycle, "passed": passed}


def churn(probe: Probe, node: NodeProcess, goods: list[bytes], cycles: int) -> dict[str, Any]:
    """``cycles`` deactivate/cleanup/configure/activate cycles while frames flow at about 10 Hz. RSS is taken
    serving (frames flowing, before the first cycle and after each) and unconfigured (after each cleanup);
    the last of each must be within 5 % of the first."""
    stop = threading.Event()

    def flow() -> None:
        for i in itertools.count():
            if stop.wait(0.1):
                return
            probe.publish(with_stamp(goods[i % len(goods)], next_stamp()))

    failures: list[str] = []
    serving: list[float] = []
    unconfigured: list[float] = []
    flowing = threading.Thread(target=flow, name="churn_frames", daemon=True)
    flowing.start()
    try:
        time.sleep(2.0)  # the node serving the flow, as after every cycle
        if not probe.serves(goods[0], next_stamp()):
            failures.append("no answer before the first cycle")
        serving.append(rss_mb(node.pid))
        for cycle in range(cycles):
            for label in ("deactivate", "cleanup", "configure", "activate"):
                if label == "configure":
                    unconfigured.append(rss_mb(node.pid))
                if not probe.transition(label):
                    failures.append(f"cycle {cycle}: {label} failed")
            if not probe.serves(goods[0], next_stamp()):
                failures.append(f"cycle {cycle}: no answer after activate")
            serving.append(rss_mb(node.pid))
    finally:
        stop.set()
        flowing.join()
    growth = {
        "serving": round((serving[-1] - serving[0]) / serving[0], 4),
        "unconfigured": round((unconfigured[-1] - unconfigured[0]) / unconfigured[0], 4)
        if unconfigured
        else 0,
    }
    return {
        "cycles": cycles,
        "rss_serving_mb": serving,
        "rss_unconfigured_mb": unconfigured,
        "rss_start_mb": serving[0],
        "rss_end_mb": serving[-1],
        "rss_max_mb": max(serving),
        "rss_growth": max(growth.values()),
        "rss_growth_by_state": growth,
        "failures": failures,
        "passed": not failures and max(growth.values()) < 0.05,
    }


def timed(name: str, phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    print(f"{name} ...")
    start = time.monotonic()
    result = phase()
    result["phase_s"] = round(time.monotonic() - start, 1)
    print(f"{name}: {'passed' if result['passed'] else 'FAILED'} ({result['phase_s']} s)")
    return result
