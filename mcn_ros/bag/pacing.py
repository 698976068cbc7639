"""Pacing bookkeeping of a replay, without ROS: when each frame goes out, what came back when, the node
process's CPU and memory. The player (:mod:`mcn_ros.ros.player`) drives these; tests use them directly.

Times are ``time.monotonic_ns()`` of the player process, stored relative to the start of playback; only
differences of them (latencies) leave this process.

Per-frame records (``frames.jsonl``, one JSON object per line)::

    {"index": 0, "stamp": {"sec": 1700000000, "nanosec": 0}, "stamp_ns": 1700000000000000000,
     "image_id": 1, "send_s": 0.0, "deadline_s": 0.1,
     "arrival_s": {"detections": 0.043, "poses": 0.044, "segmentation": null},
     "latency_ms": {"detections": 43.0, "poses": 44.1, "segmentation": null},
     "counts": {"detections": 3, "persons": 1}}

``deadline_s`` is the next frame's send time in rate mode (the last frame: its send time plus one period) and
null in lockstep; an output that is null never came. Every record is of a frame that was sent: a replay that
failed lists the frames sent until then (in rate mode the last one's ``deadline_s`` can be null), none after.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcn_ros.bag.bagio import split_stamp

PACES = ("lockstep", "rate")


@dataclass
class FrameRecord:
    """What happened to one frame of a replay (times in ns since the start of playback)."""

    index: int
    stamp_ns: int
    image_id: int | None
    send_ns: int
    deadline_ns: int | None = None
    arrivals_ns: dict[str, int | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def latency_ns(self, key: str) -> int | None:
        arrival = self.arrivals_ns.get(key)
        return None if arrival is None else arrival - self.send_ns

    def answered(self) -> bool:
        """At least one output came for this frame (the node processed it)."""
        return any(v is not None for v in self.arrivals_ns.values())

    def complete(self) -> bool:
        """Every expected output came."""
        return bool(self.arrivals_ns) and all(v is not None for v in self.arrivals_ns.values())

    def on_time(self, key: str) -> bool:
        """Output ``key`` came, and (in rate mode) before the next frame was sent."""
        arrival = self.arrivals_ns.get(key)
        return arrival is not None and (self.deadline_ns is None or arrival <= self.deadline_ns)

    def to_json(self) -> dict[str, Any]:
        sec, nanosec = split_stamp(self.stamp_ns)
        return {
            "index": self.index,
            "stamp": {"sec": sec, "nanosec": nanosec},
            "stamp_ns": self.stamp_ns,
            "image_id": self.image_id,
            "send_s": self.send_ns / 1e9,
            "deadline_s": None if self.deadline_ns is None else self.deadline_ns / 1e9,
            "arrival_s": {k: None if v is None else v / 1e9 for k, v in self.arrivals_ns.items()},
            "latency_ms": {
                k: None if (lat := self.latency_ns(k)) is None else round(lat / 1e6, 3)
                for k in self.arrivals_ns
            },
            "counts": dict(self.counts),
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> FrameRecord:
        def ns(value: float | None) -> int | None:
            return None if value is None else round(float(value) * 1e9)

        send = ns(row["send_s"])
        assert send is not None
        return cls(
            index=int(row["index"]),
            stamp_ns=int(row["stamp_ns"]),
            image_id=None if row.get("image_id") is None else int(row["image_id"]),
            send_ns=send,
            deadline_ns=ns(row.get("deadline_s")),
            arrivals_ns={k: ns(v) for k, v in row.get("arrival_s", {}).items()},
            counts={k: int(v) for k, v in row.get("counts", {}).items()},
        )


def write_records(path: str | Path, records: Iterable[FrameRecord]) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_json()) + "\n")


def read_records(path: str | Path) -> list[FrameRecord]:
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(FrameRecord.from_json(json.loads(line)))
    return rows


def rate_schedule(log_times_ns: Sequence[int], rate_factor: float) -> tuple[list[int], int]:
    """Send offsets (ns from the first frame) replaying the recorded times ``rate_factor`` times as fast, and
    the period (ns) used as the last frame's deadline (the median gap)."""
    if rate_factor <= 0:
        raise ValueError(f"rate factor must be > 0, got {rate_factor}")
    first = log_times_ns[0]
    offsets = [round((t - first) / rate_factor) for t in log_times_ns]
    gaps = sorted(b - a for a, b in itertools.pairwise(offsets) if b > a)
    period = gaps[len(gaps) // 2] if gaps else round(1e8 / rate_factor)
    return offsets, period


class Arrivals:
    """First arrival time of each output (key) for each header stamp; thread-safe, waitable."""

    def __init__(self) -> None:
        self._times: dict[int, dict[str, int]] = {}
        self._changed = threading.Condition()

    def record(self, key: str, stamp_ns: int, time_ns: int) -> bool:
        """Note an arrival; False when ``key`` already came for this stamp (a duplicate)."""
        with self._changed:
            per_stamp = self._times.setdefault(stamp_ns, {})
            if key in per_stamp:
                return False
            per_stamp[key] = time_ns
            self._changed.notify_all()
            return True

    def of(self, stamp_ns: int) -> dict[str, int]:
        with self._changed:
            return dict(self._times.get(stamp_ns, {}))

    def missing(self, stamp_ns: int, keys: Iterable[str]) -> list[str]:
        with self._changed:
            have = self._times.get(stamp_ns, {})
            return [k for k in keys if k not in have]

    def wait(self, stamps: Sequence[int], keys: Sequence[str], timeout_s: float) -> bool:
        """Wait until every key came for every stamp; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while any(k not in self._times.get(s, {}) for s in stamps for k in keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.1))
            return True

    def wait_any(self, stamps: Sequence[int], keys: Sequence[str], timeout_s: float) -> int | None:
        """Wait until some stamp of ``stamps`` has every key; that stamp, or None on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for stamp in stamps:
                    if all(k in self._times.get(stamp, {}) for k in keys):
                        return stamp
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.1))


# -- the node process, from /proc ----------------------------------------------------------------------------
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` from field 3 (the state) on: after "pid (comm) ", where comm may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat`` utime + stime)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def process_state(pid: int) -> str | None:
    """A process's state letter (``Z``: exited, not yet reaped by its parent); None when it is gone."""
    try:
        return _stat_fields(pid)[0]
    except (OSError, IndexError):
        return None


def process_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak over the process's life) in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class ProcessMonitor:
    """Samples a process's CPU time and resident memory every ``period_s`` on a thread, from ``/proc``.

    ``summary()`` gives CPU seconds and mean utilisation (100 = one core) over the sampled span, the peak
    resident memory seen while sampling and the process's lifetime peak (VmHWM) in MB (10^6 bytes), and the
    samples themselves, ``[seconds, cpu seconds, rss MB]``; with ``error`` when sampling stopped early (the
    process exited: :attr:`exited`).
    """

    def __init__(self, pid: int, period_s: float = 0.1) -> None:
        self.pid = pid
        self.period_s = period_s
        self.samples: list[tuple[float, float, int]] = []  # (monotonic s, cpu s, rss KiB)
        self.error: str | None = None
        #: The process is gone (no /proc entry) or a zombie (it exited; its parent has not reaped it yet).
        self.exited = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _sample(self) -> bool:
        if self.exited:
            return False
        try:
            cpu = process_cpu_s(self.pid)
            memory = process_memory_kib(self.pid)
        except (FileNotFoundError, ProcessLookupError):
            self.exited = True
            self.error = f"process {self.pid} exited (no /proc/{self.pid})"
            return False
        except (OSError, ValueError, IndexError) as error:
            self.error = f"cannot read /proc/{self.pid}: {error}"
            return False
        if "VmRSS" not in memory:  # a zombie: exited, not yet reaped (a kernel thread is never monitored)
            self.exited = True
            self.error = f"process {self.pid} exited (a zombie, not yet reaped by its parent)"
            return False
        rss = memory["VmRSS"]
        self.samples.append((time.monotonic() - self._t0, cpu, rss))
        return True

    def start(self) -> ProcessMonitor:
        self._t0 = time.monotonic()
        self._stop.clear()
        if self._sample():
            self._thread = threading.Thread(target=self._loop, name="proc_monitor", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            if not self._sample():
                return

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        if len(self.samples) < 2:
            return {"pid": self.pid, "error": self.error or "too few samples"}
        (t0, c0, _), (t1, c1, _) = self.samples[0], self.samples[-1]
        try:
            hwm = process_memory_kib(self.pid).get("VmHWM")
        except OSError:
            hwm = None
        error = {"error": self.error} if self.error is not None else {}
        return {
            **error,
            "pid": self.pid,
            "wall_s": round(t1 - t0, 3),
            "cpu_s": round(c1 - c0, 3),
            "cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 1) if t1 > t0 else None,
            "peak_rss_mb": round(max(s[2] for s in self.samples) * 1024 / 1e6, 1),
            "lifetime_peak_rss_mb": None if hwm is None else round(hwm * 1024 / 1e6, 1),
            "samples": [[round(t, 3), round(c, 3), round(r * 1024 / 1e6, 1)] for t, c, r in self.samples],
        }
