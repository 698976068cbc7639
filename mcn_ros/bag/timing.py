"""A replay's timing from its frame records: frames sent / processed / dropped / late, latency, throughput."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mcn_ros.bag.pacing import FrameRecord
from mcn_ros.bag.plots import latency_stats


def timing_summary(records: Sequence[FrameRecord], topics: Mapping[str, str]) -> dict[str, Any]:
    """Frames, latencies (per output topic, and of a frame's last output) and throughput of one replay.

    ``topics`` maps the records' output keys to topic names (the keys of ``latency_by_topic_ms``).
    """
    keys = list(records[0].arrivals_ns) if records else []
    answered = [r for r in records if r.answered()]
    arrivals = [a for r in records for a in r.arrivals_ns.values() if a is not None]
    span_s = (max(arrivals) - records[0].send_ns) / 1e9 if arrivals else 0.0
    sends = [r.send_ns for r in records]
    # Late: some output came after the next frame was sent (one that never came: incomplete, not late).
    late = sum(1 for r in answered if any(r.arrivals_ns[k] is not None and not r.on_time(k) for k in keys))
    return {
        "frames": {
            "sent": len(records),
            "processed": len(answered),
            "dropped": len(records) - len(answered),
            "incomplete": sum(1 for r in answered if not r.complete()),
            "late": late,
        },
        "latency_ms": latency_stats(frame_latencies_ms(records)),
        "latency_by_topic_ms": {
            topics.get(key, key): latency_stats(values) for key, values in topic_latencies_ms(records).items()
        },
        "throughput_fps": round(len(answered) / span_s, 3) if span_s > 0 else None,
        "send_rate_fps": round((len(sends) - 1) / ((sends[-1] - sends[0]) / 1e9), 3)
        if len(sends) > 1 and sends[-1] > sends[0]
        else None,
    }


def topic_latencies_ms(records: Sequence[FrameRecord]) -> dict[str, list[float | None]]:
    """Per output key, each frame's latency in ms (None: the output never came)."""
    keys = list(records[0].arrivals_ns) if records else []
    return {key: [None if (lat := r.latency_ns(key)) is None else lat / 1e6 for r in records] for key in keys}


def frame_latencies_ms(records: Sequence[FrameRecord]) -> list[float | None]:
    """Each frame's latency to its last output in ms (None unless every output came)."""
    return [max(r.latency_ns(k) or 0 for k in r.arrivals_ns) / 1e6 if r.complete() else None for r in records]
