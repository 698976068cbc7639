"""Any COCO-format image set -> a rosbag2 camera bag whose ground truth travels with it.

    python -m mcn_ros.bag make --coco data/synthetic --split val --out bags/synthetic_val [--rate 10]
    python -m mcn_ros.bag make --images DIR --annotations instances.json [--keypoints kp.json] --out B

One message per image, in image-id order: ``sensor_msgs/Image`` rgb8 (or, with ``--compressed``,
``sensor_msgs/CompressedImage`` holding the JPEG file as it is, or re-encoded when the file is not a JPEG) on
the camera topic, ``header.frame_id`` as given, header stamps ``start + i / rate`` (also the bag times, so
``ros2 bag play`` plays at that rate). mcap by default, sqlite3 with ``--storage sqlite3``. The bag folder
also holds ``ground_truth.json`` (:mod:`mcn_ros.bag.ground_truth`): the COCO annotations of exactly these
images and the stamp -> image id map.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import OutputBagWriter, content_hash, serialize, split_stamp, staged_output, stamp_text
from mcn_ros.bag.ground_truth import GroundTruth, checked_dataset, subset
from mcn_ros.bag.typestore import COMPRESSED_IMAGE, IMAGE, typestore
from mcn_ros.coco import merge_keypoints
from mcn_ros.model.color_order import to_rgb

DEFAULT_TOPIC = "/camera/image_raw"
DEFAULT_FRAME_ID = "camera"
#: Header stamp of the first frame (a fixed time, so the same images give byte-identical bags).
DEFAULT_START_S = 1_700_000_000.0
JPEG_QUALITY = 95
#: The latest header stamp a builtin_interfaces/Time holds (int32 sec, nanosec below 1e9).
MAX_STAMP_NS = (2**31 - 1) * 1_000_000_000 + 999_999_999


@dataclass(frozen=True)
class CocoFiles:
    """Where a COCO-format split lives: its image folder and annotation files."""

    images: Path
    instances: Path
    keypoints: Path | None = None


def find_coco_split(root: str | Path, split: str) -> CocoFiles:
    """COCO 2017 layout: ``images/<split>/`` or ``<split>/``, ``annotations/instances_<split>.json`` and
    (if present) ``annotations/person_keypoints_<split>.json``."""
    base = Path(root)
    candidates = [base / "images" / split, base / split]
    images = next((c for c in candidates if c.is_dir()), None)
    if images is None:
        raise BagError(
            f"no image folder for split {split!r} in {base} (looked for {candidates[0]}, {candidates[1]})"
        )
    instances = base / "annotations" / f"instances_{split}.json"
    if not instances.is_file():
        raise BagError(f"no annotation file {instances}")
    keypoints = base / "annotations" / f"person_keypoints_{split}.json"
    return CocoFiles(images, instances, keypoints if keypoints.is_file() else None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BagError(f"cannot read COCO annotations {path}: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BagError(f"{path} is not a COCO annotation file (no 'images' list)")
    return data


def make_bag(
    out: str | Path,
    files: CocoFiles,
    *,
    topic: str | None = None,
    frame_id: str = DEFAULT_FRAME_ID,
    rate_hz: float = 10.0,
    compressed: bool = False,
    storage: str = "mcap",
    start_s: float = DEFAULT_START_S,
    max_images: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the bag (see the module docstring) and return a summary of what was written."""
    if not math.isfinite(rate_hz) or rate_hz <= 0:
        raise BagError(f"rate must be a finite number above 0 Hz, got {rate_hz}")
    period_ns = round(1e9 / rate_hz)
    if period_ns == 0:  # frames with one stamp: outputs are matched to frames by stamp
        raise BagError(
            f"rate {rate_hz:g} Hz: the frame period, {1e9 / rate_hz:.2g} ns, rounds to 0 (stamps are whole "
            "nanoseconds), so every frame would have the same stamp; give a rate below 2e9 Hz"
        )
    if not math.isfinite(start_s) or start_s < 0:
        raise BagError(f"start {start_s} s: the first header stamp must be a time of at least 0 s")
    topic = topic or (DEFAULT_TOPIC + "/compressed" if compressed else DEFAULT_TOPIC)
    instances = _read_json(files.instances)
    keypoints = _read_json(files.keypoints) if files.keypoints is not None else None
    try:
        names = (str(files.instances), str(files.keypoints))
        merged = merge_keypoints(instances, keypoints, names)
    except ValueError as error:  # an annotation id missing or used twice
        raise BagError(str(error)) from error
    dataset = checked_dataset(merged, str(files.instances))
    images = sorted(dataset["images"], key=lambda im: int(im["id"]))
    if max_images is not None:
        images = images[:max_images]
    if not images:
        raise BagError(f"{files.instances} lists no images")
    store = typestore()
    msgtype = COMPRESSED_IMAGE if compressed else IMAGE
    start_ns = round(start_s * 1e9)
    last_ns = start_ns + (len(images) - 1) * period_ns
    if last_ns > MAX_STAMP_NS:
        raise BagError(
            f"start {start_s} s: the last of {len(images)} frames at {rate_hz:g} Hz would be stamped "
            f"{stamp_text(last_ns)} s, past the latest header stamp {stamp_text(MAX_STAMP_NS)} s "
            "(builtin_interfaces/Time has an int32 sec)"
        )
    image_of_stamp: dict[int, int] = {}
    with staged_output(out, overwrite) as staged:
        writer = OutputBagWriter(staged, storage)
        try:
            writer.add_topic(topic, msgtype)
            writer.set_custom_data("mcn_ros.ground_truth", "ground_truth.json")
            for index, info in enumerate(images):
                stamp = start_ns + index * period_ns
                message = _message(store, files.images, info, stamp, frame_id, compressed)
                writer.write(topic, stamp, serialize(message, msgtype))
                image_of_stamp[stamp] = int(info["id"])
            writer.close()
        except BaseException:
            writer.abort()
            raise
        source = {
            "images": str(files.images.resolve()),
            "instances": str(files.instances.resolve()),
            "keypoints": str(files.keypoints.resolve()) if files.keypoints else None,
        }
        ground_truth = GroundTruth(
            subset(dataset, [int(im["id"]) for im in images]), image_of_stamp, topic, source=source
        )
        ground_truth.write(staged)
    out = Path(out)
    return {
        "bag": str(out),
        "topic": topic,
        "msgtype": msgtype,
        "frames": len(images),
        "rate_hz": rate_hz,
        "storage": storage,
        "sha256": content_hash(out),
    }


def _exif_oriented(jpeg: np.ndarray, oriented: np.ndarray) -> bool:
    """Whether ``jpeg``'s pixels as stored differ from ``oriented`` (its EXIF orientation applied)."""
    if b"Exif" not in jpeg[:65536].tobytes():
        return False
    stored = cv2.imdecode(jpeg, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return stored is None or not np.array_equal(stored, oriented)


def _message(
    store: Any, image_dir: Path, info: dict[str, Any], stamp_ns: int, frame_id: str, compressed: bool
) -> Any:
    path = image_dir / str(info["file_name"])
    if not path.is_file():
        raise BagError(f"image {info['id']}: file {path} does not exist")
    raw = np.fromfile(path, np.uint8)
    bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if bgr is None:
        raise BagError(f"image {info['id']}: cannot decode {path}")
    height, width = bgr.shape[:2]
    if (height, width) != (int(info["height"]), int(info["width"])):
        raise BagError(
            f"image {info['id']}: {path} is {width}x{height} but the annotations say "
            f"{info['width']}x{info['height']}"
        )
    sec, nanosec = split_stamp(stamp_ns)
    types = store.types
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
    )
    if compressed:
        # A JPEG file goes in as it is, unless it carries an EXIF orientation: the node decodes frames as
        # stored (as ROS's image transports do), and the annotations are of the image as oriented here.
        if raw[:2].tobytes() != b"\xff\xd8" or _exif_oriented(raw, bgr):
            raw = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].reshape(-1)
        return types[COMPRESSED_IMAGE](header=header, format="jpeg", data=raw)
    rgb = to_rgb(bgr, "bgr")
    return types[IMAGE](
        header=header,
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=3 * width,
        data=rgb.reshape(-1),
    )
