"""The reliability benchmark's link to the node: the replay player plus /diagnostics, parameters, lifecycle
transitions and CompressedImage frames; and the bad inputs it tries (frames and weights files).

Imported by ``bench/reliability.py`` as ``_node_probe`` (``bench/`` is on the path when it runs).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image

from mcn_ros.ros.diagnostics import parse_values
from mcn_ros.ros.player import Player

COUNTERS = ("sent", "received", "lost", "dropped", "rejected", "processed", "idle", "pending")


def image_bytes(pixels: np.ndarray, encoding: str = "bgr8", stamp_ns: int = 0) -> bytes:
    """A serialized sensor_msgs/Image of ``pixels`` (HxWxC uint8)."""
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.header.frame_id = "camera"
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.step = int(pixels.strides[0]) if pixels.size else 0
    msg.data = pixels.tobytes()
    return bytes(serialize_message(msg))


class Probe(Player):
    """A :class:`~mcn_ros.ros.player.Player` that also reads the node's /diagnostics, sets its parameters,
    triggers its lifecycle transitions and publishes CompressedImage frames."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from diagnostic_msgs.msg import DiagnosticArray

        self._diagnostics: dict[str, str] = {}
        self._diagnostics_count = 0
        self._lock = threading.Lock()
        self._node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.compressed = self._node.create_publisher(
            CompressedImage,
            self.publish_topic + "/compressed",
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        )

    def _on_diagnostics(self, msg: Any) -> None:
        name = self.node_name.lstrip("/") + ":"  # the node's status names carry its namespace
        for status in msg.status:
            if status.name.startswith(name):
                with self._lock:
                    self._diagnostics = parse_values(status.values)
                    self._diagnostics_count += 1

    def publish(self, data: bytes) -> None:
        """Publish a serialized camera frame."""
        self._publisher.publish(data)

    def diagnostics(self) -> dict[str, str]:
        with self._lock:
            return dict(self._diagnostics)

    def counts(self) -> dict[str, int]:
        values = self.diagnostics()
        return {k: int(values.get(f"frames_{k}", -1)) for k in COUNTERS}

    def wait_for_report(self, condition: Callable[[dict[str, str]], bool], timeout_s: float) -> bool:
        """Wait until a /diagnostics report arriving from now on satisfies ``condition``."""
        with self._lock:
            start = self._diagnostics_count
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                fresh, values = self._diagnostics_count > start, dict(self._diagnostics)
            if fresh and condition(values):
                return True
            time.sleep(0.02)
        return False

    def settled_counts(self, timeout_s: float = 60.0) -> dict[str, int]:
        """The counters once nothing waits or is in flight and five consecutive reports agree."""
        deadline = time.monotonic() + timeout_s
        history: list[dict[str, int]] = []
        while time.monotonic() < deadline:
            self.wait_for_report(lambda _: True, 5.0)
            history.append(self.counts())
            stable = len(history) >= 5 and all(h == history[-1] for h in history[-5:])
            if stable and history[-1]["pending"] == 0:
                return history[-1]
        raise RuntimeError(f"the node's frame counters never settled: {history[-3:]}")

    def _call(self, service_type: Any, name: str, request: Any, timeout_s: float = 60.0) -> Any:
        client: Any = self._node.create_client(service_type, self._topic(name))
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise RuntimeError(f"service {self._topic(name)} not available")
            future = client.call_async(request)
            if not self._wait(future.done, timeout_s):
                raise RuntimeError(f"service {self._topic(name)} did not answer")
            return future.result()
        finally:
            self._node.destroy_client(client)

    def set_parameter(self, name: str, value: Any) -> tuple[bool, str]:
        """Set one node parameter; (accepted, reason)."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        result = self._call(SetParameters, "set_parameters", request).results[0]
        return bool(result.successful), str(result.reason)

    def transition(self, label: str) -> bool:
        """Trigger a lifecycle transition (configure, activate, deactivate, cleanup); whether it succeeded."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = getattr(Transition, f"TRANSITION_{label.upper()}")
        return bool(self._call(ChangeState, "change_state", request).success)

    def serves(self, frame: bytes, stamp_ns: int, timeout_s: float = 30.0) -> bool:
        """Publish a good frame (stamped ``stamp_ns``) until the node answers it on every output."""
        from mcn_ros.bag.bagio import with_stamp

        keys = list(self.topics)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.publish(with_stamp(frame, stamp_ns))
            if self.arrivals.wait([stamp_ns], keys, 2.0):
                return True
        return False


# -- bad inputs --------------------------------------------------------------------------------------------
@dataclass
class BadFrame:
    """One bad camera frame: what it is, its serialized bytes, on which topic, what the node should say."""

    case: str
    data: bytes
    compressed: bool
    expect: str  # a phrase of the error the node reports


def _compressed(data: bytes, fmt: str) -> bytes:
    msg = CompressedImage(format=fmt, data=data)
    msg.header.frame_id = "camera"
    return bytes(serialize_message(msg))


def _raw(height: int, width: int, encoding: str, step: int, data: bytes) -> bytes:
    msg = Image(height=height, width=width, encoding=encoding, step=step)
    msg.header.frame_id = "camera"
    msg.data = data
    return bytes(serialize_message(msg))


def _jpeg_announcing(jpeg: bytes, height: int, width: int) -> bytes:
    """``jpeg`` with its start-of-frame header patched to announce ``height`` x ``width``."""
    out = bytearray(jpeg)
    at = out.find(b"\xff\xc0")
    if at < 0:
        raise ValueError("no baseline SOF0 marker in the encoded JPEG")
    out[at + 5 : at + 7] = height.to_bytes(2, "big")
    out[at + 7 : at + 9] = width.to_bytes(2, "big")
    return bytes(out)


def bad_frames(good: np.ndarray) -> list[BadFrame]:
    """Every bad frame the issue lists, built from a good BGR image."""
    h, w = good.shape[:2]
    data = good.tobytes()
    jpeg = cv2.imencode(".jpg", good)[1].tobytes()
    png = cv2.imencode(".png", good)[1].tobytes()
    rng = np.random.default_rng(0)
    corrupt_jpeg = jpeg[:2] + rng.integers(0, 256, 400, dtype=np.uint8).tobytes() + jpeg[402:]
    corrupt_png = png[:8] + rng.integers(0, 256, 200, dtype=np.uint8).tobytes() + png[208:]
    return [
        BadFrame("unknown encoding", _raw(h, w, "yuv420_fancy", 3 * w, data), False, "unsupported encoding"),
        BadFrame("wrong step (smaller than a row)", _raw(h, w, "bgr8", w, data), False, "smaller than width"),
        BadFrame("data shorter than height x step", _raw(h, w, "bgr8", 3 * w, data[:-100]), False,
                 "expected height x step"),
        BadFrame("0x0 image", _raw(0, 0, "bgr8", 0, b""), False, "empty image"),
        BadFrame("20000x20000 image", _raw(20000, 20000, "bgr8", 60000, data), False,
                 "exceeds max_image_pixels"),
        BadFrame("corrupt JPEG", _compressed(corrupt_jpeg, "jpeg"), True, "corrupt JPEG"),
        BadFrame("truncated JPEG", _compressed(jpeg[: len(jpeg) // 2], "jpeg"), True, "truncated JPEG"),
        BadFrame("corrupt PNG", _compressed(corrupt_png, "png"), True, "corrupt PNG"),
        BadFrame("truncated PNG", _compressed(png[: len(png) // 2], "png"), True, "truncated PNG"),
        BadFrame("JPEG announcing 60000x60000", _compressed(_jpeg_announcing(jpeg, 60000, 60000), "jpeg"),
                 True, "exceeds max_image_pixels"),
        BadFrame("empty CompressedImage", _compressed(b"", "jpeg"), True, "no data"),
    ]  # fmt: skip


def bad_weights(good: Path, folder: Path) -> list[tuple[str, Path]]:
    """Weights files that must fail configure: missing, truncated, foreign (random bytes), mismatched
    (a valid file whose config does not fit its tensors), not an mcn_ros file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = folder / "random.safetensors"
    foreign.write_bytes(np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes())
    with safe_open(str(good), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    config = json.loads(metadata["config"])
    config["detection"]["classes"] = config["detection"]["classes"][:3]
    mismatched = folder / "mismatched.safetensors"
    save_file(tensors, str(mismatched), metadata={**metadata, "config": json.dumps(config)})
    not_ours = folder / "not_mcn.safetensors"
    save_file(tensors, str(not_ours), metadata={"format": "pt"})
    return [
        ("missing weights file", folder / "does_not_exist.safetensors"),
        ("truncated weights file", truncated),
        ("foreign weights file (random bytes)", foreign),
        ("mismatched weights file (config of 3 classes, tensors of 80)", mismatched),
        ("safetensors file not written by mcn_ros", not_ours),
    ]
