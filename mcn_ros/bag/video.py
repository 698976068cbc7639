"""The annotated replay: camera frames with the node's outputs drawn on, and their MP4 video (OpenCV)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from mcn_ros.bag._util import as_rgb8, atomic_path, finite_number, letterbox
from mcn_ros.model.results import Detections, Poses, Results

if TYPE_CHECKING:
    from mcn_ros.bag.accuracy import Classes, OutputTopics
    from mcn_ros.bag.bagio import OutputBag

#: MP4 codecs tried in order (the pinned opencv-python-headless writes mp4v; avc1 needs an H.264 encoder).
VIDEO_CODECS: tuple[str, ...] = ("mp4v", "avc1")


def write_video(frames_rgb: Iterable[np.ndarray], path: str | Path, fps: float) -> Path:
    """An MP4 (OpenCV, codec mp4v) of RGB frames (uint8 [H, W, 3]) at ``fps``, consumed one at a time.

    The video has the first frame's size (rounded up to even numbers, as the codec needs); frames of other
    sizes are letterboxed into it. Written under a temporary name, read back (frame count and size) and
    only then renamed to ``path``.
    """
    path = Path(path)
    rate = finite_number(fps)
    if rate is None or rate <= 0:
        raise ValueError(f"write_video: fps must be a positive number, got {fps!r}")
    frames = iter(frames_rgb)
    first = next(frames, None)
    if first is None:
        raise ValueError("write_video: no frames")
    first = as_rgb8(first, 0)
    h, w = first.shape[:2]
    size = (max(2, h + h % 2), max(2, w + w % 2))
    with atomic_path(path) as tmp:
        writer = _open_writer(tmp, rate, size)
        count = 0
        try:
            for index, frame in enumerate(itertools.chain([first], frames)):
                rgb = letterbox(as_rgb8(frame, index), size)
                writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                count += 1
        finally:
            writer.release()
        _check_video(tmp, count, size)
    return path


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    for codec in VIDEO_CODECS:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*codec), fps, (size[1], size[0]))
        if writer.isOpened():
            return writer
        writer.release()
    raise RuntimeError(f"OpenCV cannot write an MP4 video here (tried the codecs {', '.join(VIDEO_CODECS)})")


def _check_video(path: Path, count: int, size: tuple[int, int]) -> None:
    capture = cv2.VideoCapture(str(path))
    try:
        opened = capture.isOpened()
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        got = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
    finally:
        capture.release()
    if not opened or frames != count or got != size:
        raise RuntimeError(
            f"the video written does not read back: {frames} frames of {got[1]}x{got[0]} "
            f"for {count} frames of {size[1]}x{size[0]}"
        )


#: Lowest detection / person score drawn on the report's frames and video.
DISPLAY_SCORE = 0.3


def confident(results: Results, min_score: float) -> Results:
    """``results`` without the boxes and persons scoring under ``min_score`` (whole-array masks)."""
    detections, poses = results.detections, results.poses
    if detections is not None:
        keep = detections.scores >= min_score
        detections = Detections(detections.boxes[keep], detections.scores[keep], detections.class_ids[keep])
    if poses is not None:
        keep = poses.scores >= min_score
        poses = Poses(poses.boxes[keep], poses.scores[keep], poses.keypoints[keep])
    return dataclasses.replace(results, detections=detections, poses=poses)


def annotated_frames(
    bag: Path,
    topic: str | None,
    outputs: OutputBag,
    topics: OutputTopics,
    classes: Classes,
    keypoint_threshold: float,
    display_score: float = DISPLAY_SCORE,
) -> Iterator[np.ndarray]:
    """Each camera frame of ``bag`` (RGB) with the node's outputs for it drawn on (one frame at a time).

    Boxes and persons scoring under ``display_score`` are not drawn: accuracy is scored at a low threshold
    (AP integrates over scores), but a picture full of 0.05 boxes shows a person nothing.
    """
    from mcn_ros.bag.accuracy import results_by_stamp
    from mcn_ros.bag.bagio import read_camera_bag
    from mcn_ros.visualize import color_palette, draw_results

    camera = read_camera_bag(bag, topic)
    sizes = {f.stamp_ns: (f.height, f.width) for f in camera.frames}
    found, _ = results_by_stamp(outputs, topics, classes, sizes, fill_missing=False)
    palette = color_palette(max(len(classes.detection or []), len(classes.segmentation or []), 1))
    for frame in camera.frames:
        pixels, order = camera.pixels(frame)
        results = confident(found.get(frame.stamp_ns) or Results(image_size=pixels.shape[:2]), display_score)
        yield draw_results(
            pixels, results, classes.detection or [], palette, keypoint_threshold, color_order=order
        )
