"""Helpers of the rosbag tests: a tiny synthetic COCO set, bags made from it, odd bags, broken weights."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 4242  # not the training data's seed


def synthetic_coco(root: Path, images: int = 6, size: tuple[int, int] = (96, 128)) -> Path:
    """``images`` synthetic val images (COCO layout) under ``root``; returns ``root``."""
    from mcn_training.synthetic import generate_dataset

    generate_dataset(root, images, SEED, size, split="val", first_id=1)
    return root


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an EXIF segment (APP1) holding only the Orientation tag, as cameras and phones write."""
    tiff = b"MM\x00\x2a" + (8).to_bytes(4, "big")  # big-endian TIFF header, first IFD at offset 8
    tiff += (1).to_bytes(2, "big")  # one entry: tag 0x0112 Orientation, type SHORT, count 1, the value
    tiff += b"\x01\x12" + (3).to_bytes(2, "big") + (1).to_bytes(4, "big") + orientation.to_bytes(2, "big")
    tiff += b"\x00\x00" + (0).to_bytes(4, "big")  # value padding, no next IFD
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def camera_bag(coco_root: Path, out: Path, **options: Any) -> Path:
    """``python -m mcn_ros.bag make``'s function on the val split of ``coco_root``."""
    from mcn_ros.bag.make_bag import find_coco_split, make_bag

    make_bag(out, find_coco_split(coco_root, "val"), **options)
    return out


def write_bag(path: Path, topic: str, msgtype: str, messages: Sequence[tuple[int, Any]]) -> Path:
    """A bag with one topic of (time ns, rosbags message) pairs."""
    from mcn_ros.bag.bagio import OutputBagWriter, serialize

    writer = OutputBagWriter(path, "mcap")
    writer.add_topic(topic, msgtype)
    for time_ns, message in messages:
        writer.write(topic, time_ns, serialize(message, msgtype))
    writer.close()
    return path


def image(stamp_ns: int, pixels: np.ndarray, encoding: str = "rgb8", frame_id: str = "camera") -> Any:
    """A rosbags sensor_msgs/Image."""
    from mcn_ros.bag.typestore import typestore

    types = typestore().types
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
    )
    return types["sensor_msgs/msg/Image"](
        header=header,
        height=pixels.shape[0],
        width=pixels.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=int(pixels.strides[0]),
        data=np.ascontiguousarray(pixels).reshape(-1).view(np.uint8),
    )


def weights_missing_a_tensor(good: Path, out: Path) -> Path:
    """A weights file whose metadata is fine but one tensor is gone: it loads only as far as configure."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in list(handle.keys())[1:]}
    save_file(tensors, str(out), metadata=metadata)
    return out


def cli(*args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    """``python -m mcn_ros.bag ARGS`` in its own process (the test's ROS domain), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "mcn_ros.bag", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        cwd=REPO,
    )


def main(*args: str) -> tuple[int, str, str]:
    """``mcn_ros.bag``'s command line in this process: (exit status, stdout, stderr)."""
    from mcn_ros.bag.__main__ import main as bag_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = bag_main(list(args))
    return code, out.getvalue(), err.getvalue()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
