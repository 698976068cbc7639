"""Subscribe to topics in a separate process and print each message as one JSON line.

Usage: echo.py --timeout S --count N TOPIC=pkg/msg/Type[@latched] ...
Exits after N messages on every topic, or after the timeout. Each line holds the topic, the type hash that
the publisher advertised over DDS and the message converted to plain JSON (byte arrays summarised).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy


def to_plain(value: Any) -> Any:
    """A ROS message (or field) as JSON-serialisable data; large byte buffers become their length."""
    if hasattr(value, "get_fields_and_field_types"):
        return {name: to_plain(getattr(value, name)) for name in value.get_fields_and_field_types()}
    if isinstance(value, (bytes, bytearray)) or (hasattr(value, "typecode") and len(value) > 64):
        return {"len": len(value)}
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return [to_plain(item) for item in (value.tolist() if hasattr(value, "tolist") else value)]
    return value


def load_type(name: str) -> Any:
    package, _, type_name = name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), type_name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("topics", nargs="+")
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node("test_echo")
    received: dict[str, int] = {}

    def callback_for(topic: str) -> Any:
        def callback(message: Any) -> None:
            if received.get(topic, 0) >= args.count:
                return
            received[topic] = received.get(topic, 0) + 1
            hashes = [str(info.topic_type_hash) for info in node.get_publishers_info_by_topic(topic)]
            print(
                json.dumps({"topic": topic, "type_hashes": hashes, "message": to_plain(message)}), flush=True
            )

        return callback

    for spec in args.topics:
        topic, _, type_spec = spec.partition("=")
        type_name, _, flag = type_spec.partition("@")
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        if flag == "latched":
            qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
        node.create_subscription(load_type(type_name), topic, callback_for(topic), qos)
    print(json.dumps({"ready": True}), flush=True)

    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline and any(
            received.get(t.split("=")[0], 0) < args.count for t in args.topics
        ):
            rclpy.spin_once(node, timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
