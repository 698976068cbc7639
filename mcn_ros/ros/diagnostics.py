"""The node's /diagnostics status: its level, message and key-values from the frame accounting.

:func:`assess` and :func:`status_values` are plain functions of numbers (tested without ROS); only
:func:`diagnostic_array` builds the message.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcn_ros.ros.frames import FrameCounts

if TYPE_CHECKING:
    from diagnostic_msgs.msg import DiagnosticArray

OK, WARN, ERROR = "OK", "WARN", "ERROR"
#: The last status of a node shut down (finalized): nothing it reported before holds any longer.
STALE = "STALE"
#: A camera from which no frame has arrived for this long while active is reported (WARN).
NO_INPUT_WARN_S = 5.0


def worst(levels: Collection[str]) -> str:
    """The most severe of ``levels`` (OK when there are none)."""
    return max(levels, key=(OK, WARN, ERROR).index, default=OK)


@dataclass(frozen=True)
class Knobs:
    """What the node runs with now: the settings that decide how fast a frame is processed."""

    input_size: tuple[int, int] | None  # the network input (height, width); None when unconfigured
    tasks: Sequence[str]  # computed for the last frame
    flip_test: bool
    device: str
    precision: str = "fp32"  # the precision the forward runs at (after any fallback)
    cpu_bf16: bool = False  # the CPU has native bf16 (precision bf16 would run there)
    cpu_amx_bf16: bool = False  # ... with AMX tiles, where bf16 was measured about 3x faster than fp32
    cpu_int8: bool = False  # the CPU has int8 dot products and onnxruntime is installed (int8 would run)
    cuda_graphs: bool = False  # the forward replays CUDA graphs
    cuda_graphs_possible: bool = False  # cuda_graphs would replay graphs here (CUDA, torch, no DCN)
    omp_spinning: bool = False  # torch's forward on the CPU with OpenMP workers that wait actively


def speed_hint(knobs: Knobs) -> str:
    """What would make processing faster, naming the parameters and their values now."""
    hints = []
    if knobs.input_size is not None:
        height, width = knobs.input_size
        hints.append(f"a smaller input_size (now {height}x{width})")
    if len(knobs.tasks) > 1:
        hints.append(f"fewer tasks (computing {','.join(sorted(knobs.tasks))})")
    if knobs.flip_test:
        hints.append("flip_test off")
    if knobs.device.startswith("cuda"):
        if knobs.cuda_graphs_possible and not knobs.cuda_graphs:
            hints.append("cuda_graphs:=true")
        if knobs.precision == "fp32":  # measured, not assumed (bench/results/model_gpu.md)
            hints.append("precision:=fp16 or bf16 (GPU-dependent: at batch 1 on an H200 fp16 was slower)")
    else:
        hints.append(f"a CUDA device (device is {knobs.device})")
        if knobs.cpu_int8 and knobs.precision != "int8":
            hints.append(
                "backend:=onnxruntime precision:=int8 (this CPU has VNNI/AMX; calibrate once with "
                "python -m mcn_ros.model.quantize)"
            )
        if knobs.cpu_bf16 and knobs.precision == "fp32":
            # bench/results/precision_cpu*.md and README: 3.3x on a Xeon with AMX; without AMX 1.86x on an
            # AMD EPYC, 0.57x on an Intel Xeon.
            if knobs.cpu_amx_bf16:
                hints.append("precision:=bf16 (this CPU has AMX: about 3x the fp32 forward)")
            else:
                hints.append(
                    "precision:=bf16 (native here, but CPU-dependent: faster on an AMD EPYC, slower on an "
                    "Intel Xeon without AMX)"
                )
    if knobs.omp_spinning:
        hints.append(OMP_HINT)
    return ", ".join(hints)


#: Where torch's OpenMP workers wait actively and other processes load the cores, a forward can take many
#: times longer (18x beside a 2-thread job on 2 cores: 567 against 31 ms, 2026-12-06).
OMP_HINT = (
    "OMP_WAIT_POLICY=PASSIVE in the node's environment if other processes load these cores (torch's "
    "workers spin otherwise: a forward took 18x longer beside another busy process here)"
)


#: What helps when frames are lost before the node, not dropped by it.
TRANSPORT_HINT = (
    "frames lost in transport are not the model's speed: with Fast DDS give the camera driver and the node "
    "a profile with a shared-memory segment that holds a frame (config/fastdds.xml, which the launch file "
    "sets for the node; README, Camera frames and Fast DDS), or check the link and the QoS"
)


def assess(
    summary: Mapping[str, float],
    *,
    configured: bool,
    active: bool,
    tolerance: float,
    knobs: Knobs,
    silence_s: float | None = None,
    inputs: str = "its input topic",
    last_error: str = "",
    pending_rate_hz: float = 0.0,
    losses_counted: bool = True,
) -> tuple[str, str]:
    """(level, message). WARN when unconfigured. While active: WARN when no frame has arrived for
    :data:`NO_INPUT_WARN_S` (``silence_s``, on ``inputs``); ERROR when frames arrived and every one was
    rejected; WARN when more than ``tolerance`` (a fraction of the input rate) of them were rejected, or when
    frames are handled (processed, idle or rejected) more slowly than the publishers send them by more than
    ``tolerance``. Rates are those of ``summary`` (the statistics window); ``pending_rate_hz``: the frames
    received but not yet handled (waiting, or being processed) over the window's span, which count as
    handled (a camera at 0.5 Hz has a third of its window's frames in flight at times, none lost);
    ``losses_counted`` False: frames lost in transport are not counted (Humble's rclpy), so not told apart."""
    if not configured:
        return WARN, "unconfigured: no model loaded"
    if not active:
        return OK, "inactive"
    if silence_s is not None and silence_s >= NO_INPUT_WARN_S:
        return WARN, (
            f"no input: no frame on {inputs} for {silence_s:.0f} s (is the camera publishing there, and with "
            "a QoS that image_qos can receive?)"
        )
    sent = summary["input_rate_hz"]
    rejected = summary["rejected_rate_hz"]
    served = summary["processed_rate_hz"] + summary["idle_rate_hz"]
    reason = last_error or "see the log"
    if rejected > 0 and served == 0:
        return ERROR, f"every frame rejected ({rejected:.1f} frames/s): {reason}"
    problems = []
    if rejected > tolerance * sent:
        problems.append(f"rejecting {rejected:.1f} of {sent:.1f} frames/s sent ({reason})")
    handled = served + rejected + pending_rate_hz
    if sent > 0 and handled < (1.0 - tolerance) * sent:
        # Frames lost before the node (transport) and frames the node dropped (too slow) want other cures.
        lost = max(0.0, sent - summary.get("received_rate_hz", sent))
        dropped = max(0.0, sent - handled - lost)
        cures = []
        if dropped >= 0.25 * (sent - handled):
            cures.append(f"to keep up try {speed_hint(knobs)}")
        if lost >= 0.25 * (sent - handled) or not losses_counted:
            cures.append(TRANSPORT_HINT)
        split = (
            f"{100 * lost / sent:.0f}% lost in transport, {100 * dropped / sent:.0f}% dropped by the node"
            if losses_counted
            else f"{100 * dropped / sent:.0f}% dropped by the node; losses in transport are not counted here"
        )
        problems.append(
            f"processing {handled:.1f} of {sent:.1f} frames/s sent ({100 * (1 - handled / sent):.0f}% lost "
            f"or dropped: {split}; more than rate_warn_tolerance={tolerance:g}): {'; '.join(cures)}"
        )
    if problems:
        return WARN, "; ".join(problems)
    return OK, "active"


def status_values(
    summary: Mapping[str, float],
    counts: FrameCounts,
    *,
    loss_counting: str,
    tasks: Collection[str],
    device: str,
    last_error: str,
    precision: str = "fp32",
    cuda_graphs: str = "off",
    torch_compile: str = "off",
) -> dict[str, str]:
    """The status's key-values: rates and latencies over the window, then the totals since configure."""
    return {
        **{key: f"{value:.2f}" for key, value in summary.items()},
        "frames_sent": str(counts.sent),
        "frames_received": str(counts.received),
        "frames_lost": str(counts.lost),
        "frames_dropped": str(counts.dropped),
        "frames_rejected": str(counts.rejected),
        "frames_processed": str(counts.processed),
        "frames_idle": str(counts.idle),
        "frames_pending": str(counts.pending),
        "loss_counting": loss_counting,
        "tasks_computed": ",".join(sorted(tasks)),
        "device": device,
        "precision": precision,
        "cuda_graphs": cuda_graphs,
        "torch_compile": torch_compile,
        "last_error": last_error,
    }


def parse_values(values: Sequence[Any]) -> dict[str, str]:
    """A DiagnosticStatus's KeyValue list as a dict (for the node's readers: tests, bench)."""
    return {str(kv.key): str(kv.value) for kv in values}


#: One status: (name, level, message, key-values).
Status = tuple[str, str, str, Mapping[str, str]]


def diagnostic_array(statuses: Sequence[Status], hardware_id: str, stamp: Any) -> DiagnosticArray:
    """The DiagnosticArray of ``statuses``."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    array = DiagnosticArray(
        status=[
            DiagnosticStatus(
                name=name,
                hardware_id=hardware_id,
                level={
                    OK: DiagnosticStatus.OK,
                    WARN: DiagnosticStatus.WARN,
                    ERROR: DiagnosticStatus.ERROR,
                    STALE: DiagnosticStatus.STALE,
                }[level],
                message=message,
                values=[KeyValue(key=key, value=value) for key, value in values.items()],
            )
            for name, level, message, values in statuses
        ]
    )
    array.header.stamp = stamp
    return array
