"""A test-side ROS node for the node benchmarks: publishes 640x480 camera frames to a running mcn_ros node and
times each frame's outputs (publish -> the last of detections, poses and segmentation).

Camera "" is the single-camera node (``/image`` -> ``/<node>/detections``, ...); a named camera ``front``
publishes ``/front/image`` and listens on ``/<node>/front/...``.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

OUTPUTS = ("detections", "poses", "segmentation")
ROOT = Path(__file__).resolve().parent.parent


def node_command(weights: Path, name: str, *parameters: str) -> list[str]:
    """The node as users start it (config/mcn.yaml, autostart, CPU), named ``name``, ``-p`` ``parameters``."""
    command = [
        sys.executable, "-m", "mcn_ros.ros.node",
        "--ros-args", "--params-file", str(ROOT / "config/mcn.yaml"),
        "-r", f"__node:={name}", "-p", f"weights:={weights}", "-p", "autostart:=true", "-p", "device:=cpu",
    ]  # fmt: skip
    for parameter in parameters:
        command += ["-p", parameter]
    return command


class Driver:
    """Publishes every camera's image at a fixed rate and times each frame's outputs."""

    def __init__(self, cameras: list[str], rate_hz: float, node: str = "multicamera_node") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        from mcn_ros.msg import HumanPose2DArray

        self.cameras, self.period = cameras, 1.0 / rate_hz
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("multicamera_bench", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.target = node
        self.publishers = {
            c: self.node.create_publisher(Image, f"/{c}/image" if c else "/image", reliable) for c in cameras
        }
        types = {"detections": Detection2DArray, "poses": HumanPose2DArray, "segmentation": Image}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified with each output recorded
        self.sent: dict[tuple[str, int], float] = {}
        self.arrived: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        for camera in cameras:
            for output in OUTPUTS:
                topic = f"/{node}/{camera}/{output}" if camera else f"/{node}/{output}"
                self.node.create_subscription(types[output], topic, self._recorder(camera, output), reliable)
        rng = np.random.default_rng(0)
        self.images = {c: rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8) for c in cameras}
        self.running = True
        self.spinner = threading.Thread(target=self._spin, daemon=True)
        self.spinner.start()

    def _spin(self) -> None:
        while self.running:  # wakes on messages; the timeout only bounds how long close() waits
            self.executor.spin_once(timeout_sec=0.1)

    def _recorder(self, camera: str, output: str) -> Any:
        def record(message: Any) -> None:
            now = time.perf_counter()
            stamp = message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec
            with self.lock:
                self.arrived[(camera, stamp)].setdefault(output, now)
                self.changed.notify_all()

        return record

    def wait_for_node(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self.publishers.values()):
                return
            time.sleep(0.2)
        raise RuntimeError("the node did not subscribe to every camera")

    def publish_for(self, seconds: float, first_stamp: int) -> tuple[int, int]:
        """Publish every camera at the rate for ``seconds``; returns the stamp range [first, last)."""
        from sensor_msgs.msg import Image

        stamp, start = first_stamp, time.perf_counter()
        tick = 0
        while time.perf_counter() - start < seconds:
            for camera, publisher in self.publishers.items():
                image = self.images[camera]
                message = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=image.tobytes())
                message.header.frame_id = camera
                message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                with self.lock:
                    self.sent[(camera, stamp)] = time.perf_counter()
                publisher.publish(message)
            stamp += 1_000_000  # 1 ms apart: distinct stamps per tick
            tick += 1
            time.sleep(max(0.0, start + tick * self.period - time.perf_counter()))
        return first_stamp, stamp

    def lockstep(self, frames: int, first_stamp: int, timeout_s: float = 60.0) -> list[float]:
        """Publish one frame on every camera, wait for all their outputs, again ``frames`` times; returns the
        latency (ms, publish -> last output) of each frame of each camera."""
        from sensor_msgs.msg import Image

        latencies = []
        for n in range(frames):
            stamp = first_stamp + n * 1_000_000
            for camera, publisher in self.publishers.items():
                message = Image(height=480, width=640, encoding="rgb8", step=640 * 3)
                message.data = self.images[camera].tobytes()
                message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                with self.lock:
                    self.sent[(camera, stamp)] = time.perf_counter()
                publisher.publish(message)
            keys = [(camera, stamp) for camera in self.publishers]
            with self.lock:  # woken by each output recorded, no polling beside the node's work
                answered = self.changed.wait_for(functools.partial(self._complete, keys), timeout_s)
            if not answered:
                raise RuntimeError(f"frame {n}: the node did not answer within {timeout_s} s")
            with self.lock:
                latencies += [1e3 * (max(self.arrived[k].values()) - self.sent[k]) for k in keys]
        return latencies

    def _complete(self, keys: list[tuple[str, int]]) -> bool:
        """Every output of every frame of ``keys`` arrived (called holding the lock)."""
        return all(len(self.arrived.get(key, {})) == len(OUTPUTS) for key in keys)

    def measure(self, stamps: tuple[int, int], seconds: float) -> dict[str, Any]:
        """Frames of the stamp range answered with all three outputs, their latencies, per camera."""
        time.sleep(3.0)  # outputs of the last frames in flight
        first, last = stamps
        with self.lock:
            answered = {
                key: max(outputs.values()) - self.sent[key]
                for key, outputs in self.arrived.items()
                if first <= key[1] < last and len(outputs) == len(OUTPUTS) and key in self.sent
            }
            sent = sum(1 for key in self.sent if first <= key[1] < last)
        per_camera = {}
        for camera in self.cameras:
            latencies = np.array([v for (c, _), v in answered.items() if c == camera]) * 1e3
            per_camera[camera] = {
                "answered": int(latencies.size),
                "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
                "latency_p95_ms": round(float(np.percentile(latencies, 95)), 1) if latencies.size else None,
            }
        everything = np.array(list(answered.values())) * 1e3
        return {
            "sent": sent,
            "answered": len(answered),
            "throughput_fps": round(len(answered) / seconds, 3),
            "latency_p50_ms": round(float(np.percentile(everything, 50)), 1) if everything.size else None,
            "latency_p95_ms": round(float(np.percentile(everything, 95)), 1) if everything.size else None,
            "per_camera": per_camera,
        }

    def set_batch_size(self, size: int) -> None:
        """``ros2 param set <node> max_batch_size <size>`` through the node's parameter service."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client: Any = self.node.create_client(SetParameters, f"/{self.target}/set_parameters")
        try:
            if not client.wait_for_service(timeout_sec=30):
                raise RuntimeError("parameter service of the node not available")
            parameter = Parameter("max_batch_size", value=size).to_parameter_msg()
            future = client.call_async(SetParameters.Request(parameters=[parameter]))
            deadline = time.monotonic() + 30
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            result = future.result() if future.done() else None
            if result is None or not result.results[0].successful:
                raise RuntimeError(f"max_batch_size:={size} refused or unanswered: {result}")
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        import rclpy

        self.running = False
        self.spinner.join(timeout=5)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
