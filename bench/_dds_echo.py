"""One side of bench/dds_roundtrip.py, run in its own process (Fast DDS reads its profile at start-up).

python bench/_dds_echo.py echo            # republish every /dds_ping image on /dds_echo
python bench/_dds_echo.py ping N H W ...  # send N frames of each HxW rgb8 size, one at a time; print JSON
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


def echo() -> None:
    node = rclpy.create_node("dds_echo")
    publisher = node.create_publisher(Image, "/dds_echo", QOS)
    node.create_subscription(Image, "/dds_ping", publisher.publish, QOS)
    with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):  # terminated by the bench
        rclpy.spin(node)


def ping(frames: int, sizes: list[tuple[int, int]]) -> None:
    node = rclpy.create_node("dds_ping")
    publisher = node.create_publisher(Image, "/dds_ping", QOS)
    echoed: list[Image] = []
    node.create_subscription(Image, "/dds_echo", echoed.append, QOS)
    # Spun from this thread only: an executor thread still waiting at interpreter exit aborts the process.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + 60
    while publisher.get_subscription_count() == 0 or node.count_publishers("/dds_echo") == 0:
        if time.monotonic() > deadline:
            raise SystemExit("the echo process was not discovered within 60 s")
        executor.spin_once(timeout_sec=0.1)
    settle = time.monotonic() + 1.0
    while time.monotonic() < settle:
        executor.spin_once(timeout_sec=0.1)
    rng = np.random.default_rng(0)
    out = {}
    for height, width in sizes:
        message = Image(height=height, width=width, encoding="rgb8", step=3 * width)
        message.data = rng.integers(0, 255, (height, width, 3), dtype=np.uint8).tobytes()
        times = []
        for n in range(frames + 3):  # three warm-up frames
            echoed.clear()
            start = time.perf_counter()
            publisher.publish(message)
            give_up = time.monotonic() + 10.0
            while not echoed:
                if time.monotonic() > give_up:
                    raise SystemExit(f"{width}x{height}: frame {n} not echoed within 10 s")
                executor.spin_once(timeout_sec=0.05)
            if n >= 3:
                times.append(1e3 * (time.perf_counter() - start))
        out[f"{width}x{height}"] = times
    print(json.dumps(out), flush=True)
    executor.shutdown()
    node.destroy_node()


if __name__ == "__main__":
    rclpy.init()
    if sys.argv[1] == "echo":
        echo()
    else:
        values = [int(v) for v in sys.argv[2:]]
        ping(values[0], list(zip(values[1::2], values[2::2], strict=True)))
    rclpy.try_shutdown()
