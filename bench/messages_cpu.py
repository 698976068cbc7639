"""What the node's outputs cost per frame on the CPU: building each message from Results, and rclpy's
conversion to the wire format that every publish does.

    python bench/messages_cpu.py [--rounds 200]

rclpy messages are Python objects, one per detection, person and keypoint, so this cost grows with what a
frame holds (bench/node_cpu.py measures the node with random weights, which detect nothing). For 1, 10 and
100 detections and persons (100 is the node's default ``max_detections``), and at 640x480 and 1280x720 for
the class map, its coloured image (``~/segmentation/color``) and the debug image (the segmentation blended
in, 10 boxes and 3 skeletons drawn; both topics are what RViz shows), the median time of the node's
converters and of ``serialize_message`` (the conversion ``publish`` makes before handing the bytes to DDS):
each case's steps in interleaved rounds.

Beside a converter, the plain way to write it, as the node did before (``reference``): detections and poses
built with keyword arguments (rosidl's generated constructors build each field's default first, a nested
message, 17 keypoints, even when the argument replaces it, so that way builds about twice the objects; the
node's converters fill the defaults in place; the messages must be equal), and the colouring and blend in
numpy (palette indexing, a float blend under a mask; the node uses OpenCV: applyColorMap, addWeighted, copyTo;
the pictures may differ by 1 in a channel, from rounding).

Writes bench/results/messages_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
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

from mcn_ros.model.results import Detections, Poses, Results
from mcn_ros.msg import HumanPose2D, HumanPose2DArray, Keypoint2D
from mcn_ros.ros import messages
from mcn_ros.visualize import color_palette, colorize, draw_results

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


def numpy_colorize(class_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The class map coloured by numpy indexing (the reference)."""
    return palette[np.minimum(class_map, len(palette) - 1)]


def numpy_debug_image(
    image: np.ndarray, results: Results, palette: np.ndarray, blend: float = 0.45
) -> np.ndarray:
    """The debug image with the segmentation blended in numpy under a mask (the reference), then drawn."""
    assert results.segmentation is not None
    canvas = image.copy()
    mask = results.segmentation > 0
    overlay = numpy_colorize(results.segmentation, palette)
    canvas[mask] = (canvas[mask] * (1.0 - blend) + overlay[mask] * blend).astype(np.uint8)
    drawn = Results(image_size=results.image_size, detections=results.detections, poses=results.poses)
    return draw_results(canvas, drawn, CLASSES, palette, KEYPOINT_THRESHOLD)


CLASSES = [f"class {i}" for i in range(80)]


@dataclass
class Case:
    """One case's timed steps (``build``, ``serialize``, optionally ``reference``) and its check."""

    steps: dict[str, Callable[[], object]]
    reference: str = ""  # what the reference step is
    equal: bool | None = None  # node's and reference's messages equal
    max_difference: int | None = None  # largest pixel difference between the node's and the reference's
    count: int | None = None  # detections or persons in the message


def contenders() -> dict[str, Case]:
    """The cases, by name (``detections x10``, ``debug image 640x480``, ...)."""
    header = Header(frame_id="camera")
    header.stamp.sec = 1
    cases: dict[str, Case] = {}
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
            built = build()
            steps: dict[str, Callable[[], object]] = {
                "build": build,
                "reference": reference,
                "serialize": partial(serialize_message, built),
            }
            cases[f"{kind} x{count}"] = Case(
                steps, "keyword arguments", bool(built == reference()), count=count
            )
    rng = np.random.default_rng(1)
    palette = color_palette(80)
    for h, w in IMAGES:
        class_map = np.zeros((h, w), np.uint8)  # a road, two objects, background elsewhere
        class_map[h // 2 :] = 7
        class_map[h // 4 : h // 2, w // 8 : w // 3] = 3
        class_map[h // 3 : 2 * h // 3, w // 2 : 3 * w // 4] = 12
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        detections, poses = example_results(10)
        scale = np.array([w / 640, h / 480, w / 640, h / 480], np.float32)
        detections = Detections(detections.boxes * scale, detections.scores, detections.class_ids)
        people = Poses(poses.boxes[:3] * scale, poses.scores[:3], poses.keypoints[:3] * [w / 640, h / 480, 1])
        results = Results(image_size=(h, w), detections=detections, poses=people, segmentation=class_map)
        size = f"{w}x{h}"

        def color_message(m: np.ndarray = class_map) -> object:
            return messages.image_message(header, colorize(m, palette), "rgb8")

        def numpy_color_message(m: np.ndarray = class_map) -> object:
            return messages.image_message(header, numpy_colorize(m, palette), "rgb8")

        def debug_message(i: np.ndarray = image, r: Results = results) -> object:
            return messages.image_message(
                header, draw_results(i, r, CLASSES, palette, KEYPOINT_THRESHOLD), "rgb8"
            )

        def numpy_debug_message(i: np.ndarray = image, r: Results = results) -> object:
            return messages.image_message(header, numpy_debug_image(i, r, palette), "rgb8")

        cases[f"class map {size}"] = Case(
            {
                "build": partial(messages.image_message, header, class_map, "mono8"),
                "serialize": partial(serialize_message, messages.image_message(header, class_map, "mono8")),
            }
        )
        colored = colorize(class_map, palette)
        cases[f"coloured class map {size}"] = Case(
            {
                "build": color_message,
                "reference": numpy_color_message,
                "serialize": partial(serialize_message, messages.image_message(header, colored, "rgb8")),
            },
            "numpy indexing",
            max_difference=int(np.abs(colored.astype(int) - numpy_colorize(class_map, palette)).max()),
        )
        drawn = draw_results(image, results, CLASSES, palette, KEYPOINT_THRESHOLD)
        cases[f"debug image {size}"] = Case(
            {
                "build": debug_message,
                "reference": numpy_debug_message,
                "serialize": partial(serialize_message, messages.image_message(header, drawn, "rgb8")),
            },
            "numpy colouring and blend",
            max_difference=int(np.abs(drawn.astype(int) - numpy_debug_image(image, results, palette)).max()),
        )
    return cases


def render(record: dict[str, Any]) -> str:
    """The record as a table."""
    lines = [
        "# The node's outputs on the CPU: building each message, and rclpy's conversion for publish",
        "",
        f"`{record['command']}` ({record['date']}, commit {record['git_commit']}; "
        f"{record['machine'].get('cpu')}; {record['rounds']} interleaved rounds, medians in microseconds).",
        "",
        "| message | build (the node's) | serialize | build + serialize | per object | reference build | "
        "build speed-up | same result |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in record["cases"].items():
        per_object = f"{row['per_object_us']:.1f}" if "per_object_us" in row else ""
        reference = same = speedup = ""
        if "reference_us" in row:
            reference = f"{row['reference_us']:.0f} ({row['reference']})"
            speedup = f"{row['build_speedup']:.2f}x"
            same = str(row["equal"]) if "equal" in row else f"within {row['max_difference']}"
        lines.append(
            f"| {name} | {row['build_us']:.0f} | {row['serialize_us']:.0f} | {row['total_us']:.0f} | "
            f"{per_object} | {reference} | {speedup} | {same} |"
        )
    lines += [
        "",
        "Per object: build + serialize over the detections or persons of the message (a person is 17 "
        "keypoints and a box). The debug image: the segmentation blended in, 10 boxes with labels, 3 "
        "skeletons. Reference: the plain way, as the node did before (see the script).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    cases: dict[str, Any] = {}
    checks_pass = True
    for name, case in contenders().items():
        # Each case's steps interleaved with each other only: a step timed right after another case's large
        # image ran several times slower than on its own.
        samples = interleaved(case.steps, args.rounds, warmup=5)
        times = {step: stats(values)["median_ms"] for step, values in samples.items()}
        build, serialize = times["build"], times["serialize"]
        row: dict[str, Any] = {
            "build_us": round(1000 * build, 1),
            "serialize_us": round(1000 * serialize, 1),
            "total_us": round(1000 * (build + serialize), 1),
        }
        if case.count is not None:
            row |= {"count": case.count, "per_object_us": round(1000 * (build + serialize) / case.count, 2)}
        if "reference" in times:
            row |= {
                "reference": case.reference,
                "reference_us": round(1000 * times["reference"], 1),
                "build_speedup": round(times["reference"] / build, 2),
            }
        if case.equal is not None:
            row["equal"] = case.equal
            checks_pass &= case.equal
        if case.max_difference is not None:
            row["max_difference"] = case.max_difference
            checks_pass &= case.max_difference <= 1
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
    return 0 if checks_pass else 1


if __name__ == "__main__":
    sys.exit(main())
