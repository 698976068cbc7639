"""Helpers for tests that talk to real ROS 2 processes over DDS on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).parent / "ros_scripts"


def start_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start test/ros_scripts/<name> with this interpreter in its own process (same ROS domain)."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def rclpy_node(name: str) -> Iterator[Any]:
    """A plain rclpy node in this process, in its own context, shut down afterwards."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node(name, context=context)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def spin_until(node: Any, condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Spin `node` until `condition()` holds or `timeout` seconds pass; return whether it held."""
    import rclpy

    executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if condition():
                return True
            executor.spin_once(timeout_sec=step)
        return condition()
    finally:
        executor.remove_node(node)


def read_json_lines(process: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    """Wait for `process` to exit and parse each stdout line that is a JSON object."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if process.returncode not in (0, None) and not rows:
        raise AssertionError(f"{process.args} exited {process.returncode}: {err[-2000:]}")
    return rows
