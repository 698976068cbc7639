"""What the node's output messages cost per frame on the CPU: building them from Results, and rclpy's
conversion to the wire format that every publish does.

    python bench/messages_cpu.py [--rounds 200]

rclpy messages are Python objects, one per detection, person and keypoint, so this cost grows with what a
frame holds (bench/node_cpu.py measures the node with random weights, which detect nothing). For 1, 10 and
100 detections and persons (100 is the node's default ``max_detections``) and for class maps of 640x480 and
1280x720, the median time of ``mcn_ros.ros.messages``' converters and of ``serialize_message`` (the
conversion ``publish`` makes before handing the bytes to DDS): each case's steps in interleaved rounds.

Beside each converter, the plain way to write it, as the node did before (``keywords``): every message built
with keyword arguments. rosidl's generated constructors build each field's default first (a nested message,
17 keypoints) even when the argument replaces it, so that way builds about twice the objects; the node's
converters fill the defaults in place. Both must give equal messages (checked).

Writes bench/results/messages_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _common import git_commit, machine, versions, write_record
from _timing import interleaved, stats
from rclpy.serialization import serialize_message
from std_msgs.msg import Header
from vision_msgs.msg import BoundingBox2D, Detection2D, Detection2DArray, ObjectHypothesisWithPose

from mcn_ros.model.results import Detections, Poses
from mcn_ros.msg import HumanPose2D, HumanPose2DArray, Keypoint2D
from mcn_ros.ros import messages

ROOT = Path(__file__).resolve().parents[1]
COUNTS: tuple[int, ...] = (1, 10, 100)
IMAGES: tuple[tuple[int, int], ...] = ((480, 640), (720, 1280))
KEYPOINT_THRESHOLD = 0.3


def _keyword_boxes(boxes: np.ndarray) -> list[BoundingBox2D]:
    centres = ((boxes[:, :2] + boxes[:, 2:]) * 0.5).astype(float).tolist()
    sizes = (boxes[:, 2:] - boxes[:, :2]).astype(float).tolist()
    out = []
    for (cx, cy), (w, h) in zip(centres, sizes, strict=True):
        box = BoundingBox2D(size_x=w, size_y=h)
        box.center.position.x, box.center.position.y = cx, cy
        out.append(box)
    return out


def keyword_detections(header: Header, detections: Detections) -> Detection2DArray:
    """Detection2DArray built with keyword arguments throughout (the reference)."""
    out = []
    for box, class_id, score in zip(
        _keyword_boxes(detections.boxes),
        detections.class_ids.astype(str).tolist(),
        detections.scores.astype(float).tolist(),
        strict=True,
    ):
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = class_id, score
        out.append(Detection2D(header=header, results=[hypothesis], bbox=box))
    return Detection2DArray(header=header, detections=out)


def keyword_poses(header: Header, poses: Poses, keypoint_threshold: float) -> HumanPose2DArray:
    """HumanPose2DArray built with keyword arguments throughout (the reference)."""
    valid = (poses.keypoints[:, :, 2] >= keypoint_threshold).tolist()
    out = []
    for box, score, person, person_valid in zip(
        _keyword_boxes(poses.boxes),
        poses.scores.astype(float).tolist(),
        poses.keypoints.astype(float).tolist(),
        valid,
        strict=True,
    ):
        points = [
            Keypoint2D(x=x, y=y, score=s, valid=v) for (x, y, s), v in zip(person, person_valid, strict=True)
        ]
        out.append(HumanPose2D(score=score, bbox=box, keypoints=points))
    return HumanPose2DArray(header=header, poses=out)


def example_results(count: int, seed: int = 0) -> tuple[Detections, Poses]:
    """``count`` detections and persons with boxes inside a 640x480 image."""
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 400, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(5, 200, (count, 2)).astype(np.float32)], axis=1)
    scores = rng.uniform(0.3, 1.0, count).astype(np.float32)
    detections = Detections(boxes=boxes, scores=scores, class_ids=rng.integers(0, 80, count))
    keypoints = rng.uniform(0, 480, (count, 17, 3)).astype(np.float32)
    keypoints[:, :, 2] = rng.uniform(0, 1, (count, 17))
    return detections, Poses(boxes=boxes, scores=scores, keypoints=keypoints)


def contenders() -> tuple[dict[str, dict[str, Callable[[], object]]], dict[str, bool]]:
    """Per case (``<message> x<count>``, ``class map WxH``) its steps (``build``, ``keywords``,
    ``serialize``) -> one call each; and per message kind and count whether the node's converter and the
    keyword reference give equal messages."""
    header = Header(frame_id="camera")
    header.stamp.sec = 1
    calls: dict[str, dict[str, Callable[[], object]]] = {}
    same: dict[str, bool] = {}
    for count in COUNTS:
        detections, poses = example_results(count)
        builders: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            "detections": (
                partial(messages.detections_message, header, detections),
                partial(keyword_detections, header, detections),
            ),
            "poses": (
                partial(messages.poses_message, header, poses, KEYPOINT_THRESHOLD),
                partial(keyword_poses, header, poses, KEYPOINT_THRESHOLD),
            ),
        }
        for kind, (build, reference) in builders.items():
            name = f"{kind} x{count}"
            built = build()
            calls[name] = {
                "build": build,
                "keywords": reference,
                "serialize": partial(serialize_message, built),
            }
            same[name] = bool(built == reference())
    rng = np.random.default_rng(1)
    for h, w in IMAGES:
        class_map = rng.integers(0, 81, (h, w), dtype=np.uint8)
        name = f"class map {w}x{h}"
        image = messages.image_message(header, class_map, "mono8")
        calls[name] = {
            "build": partial(messages.image_message, header, class_map, "mono8"),
            "serialize": partial(serialize_message, image),
        }
    return calls, same


def render(record: dict[str, Any]) -> str:
    """The record as a table."""
    lines = [
        "# Output messages on the CPU: building them, and rclpy's conversion for publish",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git_commit']}; "
        f"{record['machine'].get('cpu')}; {record['rounds']} interleaved rounds, medians in microseconds).",
        "",
        "| message | build (the node's) | serialize | build + serialize | per object | "
        "build with keywords | build speed-up | equal |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in record["cases"].items():
        keywords = row.get("keywords_us")
        lines.append(
            f"| {name} | {row['build_us']:.0f} | {row['serialize_us']:.0f} | {row['total_us']:.0f} | "
            + (f"{row['per_object_us']:.1f}" if "per_object_us" in row else "")
            + " | "
            + (f"{keywords:.0f} | {row['build_speedup']:.2f}x | {row['equal']}" if keywords else " | | ")
            + " |"
        )
    lines += [
        "",
        "Per object: build + serialize over the detections or persons of the message (a person is 17 "
        "keypoints and a box). Keywords: the same messages built with keyword arguments (the node's way "
        "before; see the script).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    calls, same = contenders()
    cases: dict[str, Any] = {}
    for name, steps in calls.items():  # each case's steps interleaved with each other only: a step timed
        # right after another case's 1 MB class map ran several times slower than on its own
        times = {
            step: stats(samples)["median_ms"] for step, samples in interleaved(steps, args.rounds, 5).items()
        }
        build, serialize = times["build"], times["serialize"]
        row: dict[str, Any] = {
            "build_us": round(1000 * build, 1),
            "serialize_us": round(1000 * serialize, 1),
            "total_us": round(1000 * (build + serialize), 1),
        }
        if name in same:
            count = int(name.rpartition("x")[2])
            keywords = times["keywords"]
            row |= {
                "count": count,
                "per_object_us": round(1000 * (build + serialize) / count, 2),
                "keywords_us": round(1000 * keywords, 1),
                "build_speedup": round(keywords / build, 2),
                "equal": same[name],
            }
        cases[name] = row
    record: dict[str, Any] = {
        "command": shlex.join(["python", "bench/messages_cpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "git_commit": git_commit(),
        "rounds": args.rounds,
        "keypoint_threshold": KEYPOINT_THRESHOLD,
        "cases": cases,
    }
    write_record(args.out, "messages_cpu", record, render(record))
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
