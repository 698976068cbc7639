"""Latest-frame hand-off between the subscription callbacks and the inference thread, and frame statistics.

No ROS imports: the policy and the numbers are tested on their own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Frame:
    """A received message waiting for inference."""

    message: Any
    compressed: bool
    received: float  # time.monotonic() at arrival


class LatestFrameSlot:
    """Holds at most one waiting frame: a newer frame replaces the waiting one, which counts as dropped.

    So the node never queues without bound and always works on the newest image it has.
    """

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._ready = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        """Offer a frame; replaces (and counts as dropped) any frame still waiting."""
        with self._ready:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._ready.notify()

    def take(self, timeout: float) -> Frame | None:
        """Wait up to ``timeout`` seconds for a frame and remove it from the slot."""
        with self._ready:
            if self._frame is None:
                self._ready.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def clear(self) -> None:
        """Forget a waiting frame (on deactivate) without counting it."""
        with self._ready:
            self._frame = None


class FrameStats:
    """Rates and latency percentiles over a sliding time window (bounded memory)."""

    def __init__(self, window_s: float = 5.0, max_samples: int = 2048) -> None:
        self.window_s = window_s
        self._arrivals: deque[float] = deque(maxlen=max_samples)
        self._done: deque[tuple[float, float, float]] = deque(maxlen=max_samples)  # (time, latency, age)
        self._idle: deque[float] = deque(maxlen=max_samples)
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.rejected = 0
        self.idle_count = 0

    def arrived(self, now: float) -> None:
        """Count an incoming frame."""
        with self._lock:
            self.received += 1
            self._arrivals.append(now)

    def finished(self, now: float, latency_s: float, age_s: float | None) -> None:
        """Count a processed frame: ``latency_s`` from arrival to publish, ``age_s`` from its header stamp."""
        with self._lock:
            self.processed += 1
            self._done.append((now, latency_s, age_s if age_s is not None else float("nan")))

    def idle(self, now: float) -> None:
        """Count a frame taken but not run because no output was wanted (nobody subscribed)."""
        with self._lock:
            self.idle_count += 1
            self._idle.append(now)

    def summary(self, now: float) -> dict[str, float]:
        """Input and processed rate (Hz), latency and stamp-age p50/p95 (ms) over the window."""
        with self._lock:
            start = now - self.window_s
            arrivals = [t for t in self._arrivals if t >= start]
            idle = [t for t in self._idle if t >= start]
            done = np.array([d for d in self._done if d[0] >= start], dtype=np.float64).reshape(-1, 3)
        out = {
            "input_rate_hz": len(arrivals) / self.window_s,
            "processed_rate_hz": len(done) / self.window_s,
            "idle_rate_hz": len(idle) / self.window_s,
        }
        for name, column in (("latency", 1), ("stamp_age", 2)):
            values = done[:, column]
            values = values[np.isfinite(values)]
            for q in (50, 95):
                out[f"{name}_p{q}_ms"] = (
                    float(np.percentile(values, q) * 1e3) if values.size else float("nan")
                )
        return out


def monotonic() -> float:
    """The clock used for latency figures."""
    return time.monotonic()
