"""The frames handed from the subscription callbacks to the inference thread (through the latest-frame
slots of :mod:`mcn_ros.ros.batching`), and their accounting.

Every frame a camera sends ends in exactly one of these counters, so that ``received + lost`` is what the
publishers sent (from the first frame the node heard of each) and ``received`` is ``processed + idle + dropped
+ rejected`` plus at most the frame waiting in the slot and the one being processed:

- ``lost``: never reached the node (best-effort transport, a full reader queue, an executor too busy to take
  it); counted from gaps in each publisher's ``publication_sequence_number`` (:class:`SequenceGaps`).
- ``dropped``: reached the node but was replaced in the latest-frame slot by a newer one (or was waiting there
  when the node deactivated).
- ``rejected``: unusable (bad encoding or size, corrupt data) or inference failed.
- ``idle``: taken but not run because nobody listened to any output.
- ``processed``: run and published.

No ROS imports: the policy and the numbers are tested on their own (rclpy's ``MessageInfo`` is a plain dict).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: rmw's RMW_MESSAGE_INFO_SEQUENCE_NUMBER_UNSUPPORTED (UINT64_MAX), which rclpy < 9 passes through as is.
SEQUENCE_UNSUPPORTED = 2**64 - 1


@dataclass
class Frame:
    """A received message waiting for inference."""

    message: Any
    compressed: bool
    received: float  # time.monotonic() at arrival


def publication_sequence(info: Mapping[str, Any] | None) -> tuple[Hashable, int | None]:
    """(publisher key, publication sequence number) from an rclpy ``MessageInfo`` dict.

    The key is the publisher's GID (rclpy >= 9, Kilted); rclpy 7 (Jazzy) gives no GID, so all publishers of
    a topic share the key None. The number is None where the middleware does not report it.
    """
    if not info:
        return None, None
    gid = info.get("publisher_gid")
    key: Hashable = bytes(gid["data"]) if isinstance(gid, Mapping) and "data" in gid else None
    sequence = info.get("publication_sequence_number")
    if not isinstance(sequence, int) or sequence <= 0 or sequence >= SEQUENCE_UNSUPPORTED:
        return key, None
    return key, sequence


class SequenceGaps:
    """Frames lost before reaching the node, from gaps in each publisher's publication sequence numbers.

    Only gaps between two frames that arrived count: frames a publisher sent before the node first heard of
    it, or after the last one that arrived, are not known. A number that does not increase means the
    publisher restarted: it starts afresh. At most ``max_publishers`` publishers are remembered (the least
    recently heard is forgotten).

    Without GIDs (rclpy 7) the publishers of one topic are told apart by their numbers: a frame continues
    the sequence whose last number is the highest below its own, or starts one (at most
    ``max_publishers`` per topic; a sequence not continued for ``idle_s`` seconds is forgotten, as a
    publisher that restarted leaves its old one behind). One publisher, an idle second one and a newcomer
    (it starts at 1, below the others) are exact; two publishers sending at once when the node starts
    listening, the lower numbers heard first, read as one jump of the difference; a restarted publisher
    whose new numbers pass its old last one within ``idle_s`` seconds loses that many from the count.
    """

    def __init__(self, max_publishers: int = 64, idle_s: float = 5.0) -> None:
        self._last: OrderedDict[Hashable, int] = OrderedDict()
        # Without GIDs: stream -> [last number, when] of each sequence, the least recently continued first.
        self._keyless: dict[Hashable, list[tuple[int, float]]] = {}
        self.max_publishers = max(1, max_publishers)
        self.idle_s = idle_s
        self.lost = 0
        self.restarts = 0
        self.numbered = 0
        self.keyless = 0

    def seen(
        self, publisher: Hashable, sequence: int | None, stream: Hashable = None, now: float = 0.0
    ) -> int:
        """Record a frame of ``publisher`` (a GID, or None) on ``stream`` (the subscription), arrived at
        ``now`` (seconds, monotonic); returns how many frames of that publisher were lost just before it."""
        if sequence is None:
            return 0
        self.numbered += 1
        if publisher is None:
            self.keyless += 1
            return self._continue_keyless(stream, sequence, now)
        key = (stream, publisher)
        last = self._last.pop(key, None)
        self._last[key] = sequence
        if len(self._last) > self.max_publishers:
            self._last.popitem(last=False)
        if last is None:
            return 0
        if sequence <= last:
            self.restarts += 1
            return 0
        return self._gap(last, sequence)

    def _continue_keyless(self, stream: Hashable, sequence: int, now: float) -> int:
        sequences = [
            (last, when) for last, when in self._keyless.get(stream, []) if now - when <= self.idle_s
        ]
        self._keyless[stream] = sequences
        below = [i for i, (last, _) in enumerate(sequences) if last < sequence]
        if not below:  # a publisher not heard of yet, or one that restarted
            if sequences:
                self.restarts += 1
            sequences.append((sequence, now))
            del sequences[: -self.max_publishers]
            return 0
        index = max(below, key=lambda i: (sequences[i][0], i))  # the closest below; the most recent on ties
        last, _ = sequences.pop(index)
        sequences.append((sequence, now))
        return self._gap(last, sequence)

    def _gap(self, last: int, sequence: int) -> int:
        gap = sequence - last - 1
        self.lost += gap
        return gap

    def forget(self) -> None:
        """Forget where each publisher was (on deactivate): what it sends meanwhile is not lost."""
        self._last.clear()
        self._keyless.clear()

    def method(self) -> str:
        """How losses are counted, for the diagnostics."""
        if not self.numbered:
            return "not counted (no frame with a publication sequence number yet)"
        if self.keyless:
            return "sequence numbers; no publisher GID in this rclpy: publishers told apart by numbers"
        return "sequence numbers per publisher GID"


@dataclass(frozen=True)
class FrameCounts:
    """Totals since the camera was configured (see the module docstring for what each means)."""

    received: int
    lost: int
    dropped: int
    rejected: int
    processed: int
    idle: int

    @property
    def sent(self) -> int:
        """What the publishers sent (from the first frame heard of each): received + lost."""
        return self.received + self.lost

    @property
    def pending(self) -> int:
        """Received but not yet accounted for: waiting in the slot or being processed (0 to 2)."""
        return self.received - self.dropped - self.rejected - self.processed - self.idle


class FrameStats:
    """Counters, rates and latency percentiles over a sliding time window (bounded memory)."""

    def __init__(self, window_s: float = 5.0, max_samples: int = 2048) -> None:
        self.window_s = window_s
        self._arrivals: deque[tuple[float, int]] = deque(maxlen=max_samples)  # (time, 1 + lost before it)
        # (time, latency from arrival, stamp age, processing time, inference time) of each processed frame
        self._done: deque[tuple[float, float, float, float, float]] = deque(maxlen=max_samples)
        self._idle: deque[float] = deque(maxlen=max_samples)
        self._rejected: deque[float] = deque(maxlen=max_samples)
        self._lock = threading.Lock()
        self.gaps = SequenceGaps()
        self.received = 0
        self.processed = 0
        self.rejected = 0
        self.idle_count = 0
        self._heard_at: float | None = None  # the last arrival, or when the subscriptions were made
        self._listening_since: float | None = None  # when the subscriptions were last made

    def arrived(self, now: float, info: Mapping[str, Any] | None = None, stream: Hashable = None) -> int:
        """Count an incoming frame with its rclpy ``MessageInfo``; returns the frames lost just before it.

        ``stream`` tells apart subscriptions whose publishers have no GIDs (Image and CompressedImage).
        """
        key, sequence = publication_sequence(info)
        with self._lock:
            lost = self.gaps.seen(key, sequence, stream, now)
            self.received += 1
            self._arrivals.append((now, 1 + lost))
            self._heard_at = now
        return lost

    def start_listening(self, now: float) -> None:
        """The subscriptions are made: :meth:`silence` counts from ``now`` until a frame arrives."""
        with self._lock:
            self._heard_at = now
            self._listening_since = now

    def silence(self, now: float) -> float | None:
        """Seconds since the last frame arrived (or since listening began, if none has); None while not
        listening."""
        with self._lock:
            return None if self._heard_at is None else now - self._heard_at

    def finished(
        self,
        now: float,
        latency_s: float,
        age_s: float | None,
        processing_s: float | None = None,
        inference_s: float | None = None,
    ) -> None:
        """Count a processed frame: ``latency_s`` from arrival to publish, ``age_s`` from its header stamp,
        ``processing_s`` from leaving the slot to publish (the latency less the wait in the slot),
        ``inference_s`` the model runtime's call that computed it (of its whole batch)."""
        nan = float("nan")
        with self._lock:
            self.processed += 1
            self._done.append(
                (
                    now,
                    latency_s,
                    nan if age_s is None else age_s,
                    nan if processing_s is None else processing_s,
                    nan if inference_s is None else inference_s,
                )
            )

    def idle(self, now: float) -> None:
        """Count a frame taken but not run because no output was wanted (nobody subscribed)."""
        with self._lock:
            self.idle_count += 1
            self._idle.append(now)

    def reject(self, now: float) -> None:
        """Count a frame that could not be used or whose inference failed."""
        with self._lock:
            self.rejected += 1
            self._rejected.append(now)

    def stop_listening(self) -> None:
        """The subscriptions go away: sequence numbers restart from the next frame heard."""
        with self._lock:
            self.gaps.forget()
            self._heard_at = None  # (the listening start stays: the rates of that time still divide by it)

    def counts(self, dropped: int) -> FrameCounts:
        """The totals, with the slot's ``dropped``."""
        with self._lock:
            return FrameCounts(
                received=self.received,
                lost=self.gaps.lost,
                dropped=dropped,
                rejected=self.rejected,
                processed=self.processed,
                idle=self.idle_count,
            )

    def _window(self, now: float) -> tuple[float, float]:
        """The window's start and the span its rates divide by (at least a second: not a rate from a single
        frame)."""
        start = now - self.window_s
        if self._listening_since is not None and self._listening_since > start:
            start = self._listening_since
        return start, max(now - start, min(1.0, self.window_s))

    def span(self, now: float) -> float:
        """The seconds :meth:`summary`'s rates divide by at ``now``."""
        with self._lock:
            return self._window(now)[1]

    def summary(self, now: float) -> dict[str, float]:
        """Rates (Hz) over the window: sent (received + lost), received, processed, idle, rejected;
        latency, stamp-age, processing-time and inference-time p50/p95 (ms) of the processed frames (the
        rest of processing is decoding the image message, building and publishing the outputs). In the first
        seconds of listening the window is the time since the subscriptions were made."""
        with self._lock:
            start, span = self._window(now)
            arrivals = [n for t, n in self._arrivals if t >= start]
            idle = sum(1 for t in self._idle if t >= start)
            rejected = sum(1 for t in self._rejected if t >= start)
            done = np.array([d for d in self._done if d[0] >= start], dtype=np.float64).reshape(-1, 5)
        out = {
            "input_rate_hz": sum(arrivals) / span,
            "received_rate_hz": len(arrivals) / span,
            "processed_rate_hz": len(done) / span,
            "idle_rate_hz": idle / span,
            "rejected_rate_hz": rejected / span,
        }
        for name, column in (("latency", 1), ("stamp_age", 2), ("processing", 3), ("inference", 4)):
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
