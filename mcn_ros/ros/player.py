"""Replay a camera bag into a running mcn_ros node over DDS and record what it answers (the rclpy part).

The player holds every frame in memory before playback (serialized, as read from the bag, so nothing is
decoded or read from disk while timing) and publishes on the camera topic; waiting for the node, warming it
up and hearing its outputs is :class:`~mcn_ros.ros.node_link.NodeLink`'s. Two paces:

- ``lockstep``: the next frame goes out only when every output of the last one has arrived (no drops: the
  accuracy run); a frame unanswered after ``timeout_s`` ends the run with the topics that never answered.
- ``rate``: the bag's recorded times, ``rate_factor`` times as fast, whatever the node does (the latency,
  throughput and drops run).

Outputs go to a rosbag2 bag (mcap) with the receive time as bag time, as ``ros2 bag record`` would write
them; the bookkeeping (:mod:`mcn_ros.bag.pacing`) and the bag writer (:mod:`mcn_ros.bag.bagio`) are ROS-free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import CameraFrame, OutputBagWriter
from mcn_ros.bag.pacing import Arrivals, FrameRecord, ProcessMonitor, rate_schedule
from mcn_ros.bag.typestore import LABEL_INFO, POSE_INFO
from mcn_ros.ros.node_link import OUTPUTS, NodeLink


@dataclass
class PlayResult:
    """One replay: the per-frame records and a summary for replay.json."""

    records: list[FrameRecord]
    summary: dict[str, Any]


class Player(NodeLink):
    """Feeds one mcn_ros node and records its answers (the connection is :class:`NodeLink`'s).

    Use as a context manager: ``connect()`` once, then ``play()`` as often as wanted (lockstep, rate...).
    """

    #: The frames of the latest :meth:`play` that were sent: all of them, or as far as a failed playback went
    #: (a frame never sent has no record).
    records: Sequence[FrameRecord] = ()
    _monitor: ProcessMonitor | None = None
    _pace = ""

    # -- playback -----------------------------------------------------------------------------------------
    def play(
        self,
        frames: Sequence[CameraFrame],
        image_ids: Sequence[int | None],
        pace: str,
        out_bag: Path,
        *,
        rate_factor: float = 1.0,
        timeout_s: float = 10.0,
        node_pid: int | None = None,
    ) -> PlayResult:
        """Play ``frames`` at ``pace``; record the outputs into ``out_bag`` (a path that must not exist).

        Should the playback fail (a timeout, the node process gone, Ctrl-C), the outputs received until then
        stay in ``out_bag``, a complete bag, and :attr:`records` holds the frames sent until then; then the
        error is raised. With ``node_pid``, a node process that exits during the playback fails it (as does
        the ``abort_check`` of the link).
        """
        self.records = ()  # not the previous playback's, should this one fail before it starts
        if pace not in ("lockstep", "rate"):
            raise BagError(f"pace {pace!r}: expected lockstep or rate")
        keys = list(self.topics)
        stamps = [f.stamp_ns for f in frames]
        self.arrivals = Arrivals()  # a bag played again has the same stamps: each playback counts afresh
        self._counts = {}
        self._recording = set(stamps)
        writer = OutputBagWriter(out_bag, "mcap")
        for key, topic in self.topics.items():
            writer.add_topic(topic, OUTPUTS[key][1])
        for topic, (receive_ns, data) in sorted(self._latched.items()):
            writer.add_topic(topic, LABEL_INFO if topic.endswith("label_info") else POSE_INFO, latched=True)
            writer.write(topic, receive_ns, data)
        writing = threading.Thread(target=self._write_queue, args=(writer,), name="bag_writer", daemon=True)
        writing.start()
        monitor = ProcessMonitor(node_pid).start() if node_pid is not None else None
        self._monitor, self._pace = monitor, pace
        cpu_start = time.process_time()
        t0 = time.monotonic_ns()
        planned = [
            FrameRecord(i, f.stamp_ns, image_ids[i], 0, None, {k: None for k in keys})
            for i, f in enumerate(frames)
        ]
        records: list[FrameRecord] = []  # a frame's record joins when it is sent
        self.records = records
        try:
            if pace == "lockstep":
                self._lockstep(frames, planned, records, keys, t0, timeout_s)
            else:
                self._rate(frames, planned, records, keys, t0, rate_factor, timeout_s)
        finally:
            end_ns = time.monotonic_ns() - t0
            arrived, counts = self._stop_recording(writing, stamps)
            process = monitor.stop() if monitor is not None else None
            self._monitor = None
            writer.close()
            for record in records:
                for key, arrival in arrived[record.stamp_ns].items():
                    if key in record.arrivals_ns:
                        record.arrivals_ns[key] = arrival - t0
                record.counts = counts[record.stamp_ns]
        if monitor is not None and monitor.exited:  # gone after the last check
            raise _exited(monitor, pace)
        summary = {
            "pace": pace,
            "rate_factor": rate_factor if pace == "rate" else None,
            "frames": len(frames),
            "duration_s": round(end_ns / 1e9, 3),
            "timeout_s": timeout_s,
            "output_messages": dict(writer.counts),
            "node_process": process,
            "player_cpu_s": round(time.process_time() - cpu_start, 3),
        }
        return PlayResult(records, summary)

    def _stop_recording(
        self, writing: threading.Thread, stamps: Sequence[int]
    ) -> tuple[dict[int, dict[str, int]], dict[int, dict[str, int]]]:
        """Stop writing outputs to the bag; the arrivals and counts of ``stamps`` as they stood then (an
        output that comes later is in neither the bag nor the frame records)."""
        with self._output_lock:
            self._recording = set()
            arrived = {stamp: self.arrivals.of(stamp) for stamp in stamps}
            counts = {stamp: dict(self._counts.get(stamp, {})) for stamp in stamps}
        self._queue.put(None)
        writing.join()
        return arrived, counts

    def _write_queue(self, writer: OutputBagWriter) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            topic, receive_ns, data = item
            writer.write(topic, receive_ns, data)

    def _check_node(self) -> None:
        """Raise when the node will not answer any more: the link's ``abort_check`` (checked at most as
        often as it allows), or the monitored node process gone."""
        self._check_abort()
        monitor = self._monitor
        if monitor is not None and monitor.exited:
            raise _exited(monitor, self._pace)

    def _wait_for_outputs(self, stamp_ns: int, keys: list[str], timeout_s: float) -> bool:
        """Wait until every output of ``stamp_ns`` came (False on timeout), checking meanwhile that the node
        is still there."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if self.arrivals.wait([stamp_ns], keys, max(0.0, min(left, 0.25))):
                return True
            if left <= 0.25:
                return False
            self._check_node()

    def _lockstep(
        self,
        frames: Sequence[CameraFrame],
        planned: list[FrameRecord],
        records: list[FrameRecord],
        keys: list[str],
        t0: int,
        timeout_s: float,
    ) -> None:
        for frame, record in zip(frames, planned, strict=True):
            self._check_node()
            record.send_ns = time.monotonic_ns() - t0
            self._publisher.publish(frame.data)
            records.append(record)
            if not self._wait_for_outputs(frame.stamp_ns, keys, timeout_s):
                missing = self.arrivals.missing(frame.stamp_ns, keys)
                self._check_node()
                raise BagError(
                    f"lockstep: frame {record.index} (stamp {frame.stamp_ns} ns): no message on "
                    f"{', '.join(self.topics[k] for k in missing)} within {timeout_s:g} s "
                    f"(node {self.node_name}, lifecycle state: {self.lifecycle_state()})"
                )

    def _rate(
        self,
        frames: Sequence[CameraFrame],
        planned: list[FrameRecord],
        records: list[FrameRecord],
        keys: list[str],
        t0: int,
        rate_factor: float,
        timeout_s: float,
    ) -> None:
        # The node is checked before each frame and while waiting (the check limits its own frequency): a
        # node that died is an error, not frames dropped.
        offsets, period = rate_schedule([f.log_time_ns for f in frames], rate_factor)
        lead = 50_000_000  # start 50 ms after t0, so the first frame is paced like the others
        for frame, record, offset in zip(frames, planned, offsets, strict=True):
            self._check_node()
            target = t0 + lead + offset
            while (left := target - time.monotonic_ns()) > 0:
                if left > 100_000_000:
                    self._check_node()
                time.sleep(min(left / 1e9, 0.05))
            record.send_ns = time.monotonic_ns() - t0
            self._publisher.publish(frame.data)
            if records:
                records[-1].deadline_ns = record.send_ns
            records.append(record)
        records[-1].deadline_ns = records[-1].send_ns + period
        # Drain: until the last frame's outputs came (the earlier ones are answered or dropped) or timeout.
        last = frames[-1].stamp_ns
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.arrivals.missing(last, keys):
            self._check_node()
            time.sleep(0.02)
        time.sleep(0.2)  # stragglers of the frames before it
        self._check_node()


def _exited(monitor: ProcessMonitor, pace: str) -> BagError:
    return BagError(f"the node process (pid {monitor.pid}) exited during the {pace} replay")
