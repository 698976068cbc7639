"""Start the real mcn_ros node in its own process and talk to it over DDS from the test process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "mcn.yaml"


def make_weights(path: Path, seed: int = 0, use_dcn: bool = True) -> Path:
    """A small three-task model at random init (seeded), saved in the project's weights format
    (``use_dcn`` False: plain convs in the up-path, which the ONNX Runtime backend needs)."""
    import torch

    from mcn_ros.model.config import ModelConfig
    from mcn_ros.model.mcn import MultitaskCenterNet
    from mcn_ros.model.weights import save_weights

    config = ModelConfig.from_dict(
        {
            "name": "node_test_resnet18_64",
            "backbone": "resnet18",
            "input_size": [64, 64],
            "use_dcn": use_dcn,
            "detection": {"classes": ["person", "car"]},
            "pose": {},
            "segmentation": {"classes": ["person", "car"], "output_stride": 4},
        }
    )
    torch.manual_seed(seed)
    model = MultitaskCenterNet(config)
    return save_weights(path, model, config, {"command": "test/nodetools.py make_weights"})


def camera_frames(folder: Path, count: int, size: tuple[int, int] = (48, 80)) -> Path:
    """``count`` camera-like PNGs in ``folder`` (blurred noise with a filled box each), seeded."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 2)
        x, y = int(rng.integers(0, size[1] - 16)), int(rng.integers(0, size[0] - 16))
        cv2.rectangle(image, (x, y), (x + 12, y + 16), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
        cv2.imwrite(str(folder / f"frame_{index:03d}.png"), image)
    return folder


def start_node(
    *ros_args: str, name: str = "mcn_node", env: dict[str, str] | None = None, device: str | None = "cpu"
) -> subprocess.Popen[str]:
    """`python -m mcn_ros.ros.node --ros-args --params-file config/mcn.yaml -p device:=cpu <ros_args>` in a
    new process (``env``: variables added to this process's environment).

    On the CPU whatever the machine has (config/mcn.yaml's ``auto`` would take a GPU): the tests compare the
    node's outputs with the model runtime's on the CPU to the last digits. ``device`` None: the file's.
    """
    command = [
        sys.executable,
        "-m",
        "mcn_ros.ros.node",
        "--ros-args",
        "--params-file",
        str(PARAMS_FILE),
        "-r",
        f"__node:={name}",
        *(("-p", f"device:={device}") if device is not None else ()),
        *ros_args,
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop_node(
    process: subprocess.Popen[str],
    *signals: signal.Signals,
    group: bool = False,
    timeout: float = 20.0,
) -> str:
    """Ctrl-C the node (or send ``signals`` one after another, 10 ms apart), wait for it and return everything
    it printed. ``group``: to its whole process group, as a terminal's Ctrl-C does (the process must have
    been started with ``start_new_session=True``); one that outlives ``timeout`` is killed, with its group."""
    if process.poll() is None:
        for number, stop in enumerate(signals or (signal.SIGINT,)):
            time.sleep(0.01 if number else 0.0)
            if group:
                os.killpg(process.pid, stop)
            else:
                process.send_signal(stop)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if group:
            with suppress(ProcessLookupError):  # the group may be gone by now
                os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        out, _ = process.communicate()
    return out


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def image_message(
    pixels: np.ndarray, encoding: str = "rgb8", stamp: tuple[int, int] = (0, 0), frame: str = "cam"
) -> Any:
    """A sensor_msgs/Image holding ``pixels`` with a recognisable header."""
    from sensor_msgs.msg import Image

    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.header.frame_id = frame
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.step = int(pixels.strides[0]) if pixels.size else 0
    msg.data = pixels.tobytes()
    return msg


class Client:
    """A test-side rclpy node spinning in a background thread: publishes images, records every message."""

    def __init__(self, node_name: str = "mcn_node", namespace: str = "") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.prefix = f"{namespace}/{node_name}"
        self._clients: dict[str, Any] = {}  # service name -> rclpy client, see call()
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("mcn_test_client", context=self.context)
        self.received: dict[str, list[Any]] = defaultdict(list)
        self.lock = threading.Lock()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinning = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        from sensor_msgs.msg import CompressedImage, Image

        self.image_pub = self.node.create_publisher(Image, "/image", 10)
        self.compressed_pub = self.node.create_publisher(CompressedImage, "/image/compressed", 10)

    def _spin(self) -> None:
        while self._spinning:
            self.executor.spin_once(timeout_sec=0.05)

    def subscribe(self, topic: str, msg_type: Any, latched: bool = False) -> Any:
        """Record messages of ``topic`` (relative names are taken under the node's private namespace)."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        full = topic if topic.startswith("/") else f"{self.prefix}/{topic}"
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        if latched:
            qos.durability = DurabilityPolicy.TRANSIENT_LOCAL

        def record(msg: Any) -> None:
            with self.lock:
                self.received[full].append(msg)

        return self.node.create_subscription(msg_type, full, record, qos)

    def messages(self, topic: str) -> list[Any]:
        full = topic if topic.startswith("/") else f"{self.prefix}/{topic}"
        with self.lock:
            return list(self.received[full])

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def stamped(self, topic: str, sec: int, nanosec: int = 0) -> list[Any]:
        """The messages of ``topic`` stamped (sec, nanosec): the answers to one frame, not a late answer to a
        frame published before (clear() cannot tell those from new ones)."""
        return [
            m for m in self.messages(topic) if (m.header.stamp.sec, m.header.stamp.nanosec) == (sec, nanosec)
        ]

    def clear_topic(self, topic: str) -> None:
        full = topic if topic.startswith("/") else f"{self.prefix}/{topic}"
        with self.lock:
            self.received.pop(full, None)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    def publish_until(
        self,
        msg: Any,
        condition: Callable[[], bool],
        timeout: float = 20.0,
        period: float = 0.3,
        compressed: bool = False,
    ) -> bool:
        """Publish ``msg`` every ``period`` s (discovery takes a moment) until ``condition()`` holds."""
        publisher = self.compressed_pub if compressed else self.image_pub
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if publisher.get_subscription_count() > 0:
                publisher.publish(msg)
            if self.wait_for(condition, period):
                return True
        return condition()

    def call(
        self, service_type: Any, name: str, request: Any, timeout: float = 20.0, resend: bool = False
    ) -> Any:
        """Call a service of the node and return its response.

        One client per service for the Client's life: every new client is a new discovery, and a request
        that arrives before the server has matched the client's response reader gets an answer nobody
        receives. ``resend`` (queries only: asking twice must change nothing) asks again every few seconds
        while no answer has come.
        """
        full = name if name.startswith("/") else f"{self.prefix}/{name}"
        client = self._clients.get(full)
        if client is None:
            client = self._clients[full] = self.node.create_client(service_type, full)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {full} not available")
        deadline = time.monotonic() + timeout
        futures = [client.call_async(request)]
        asked = time.monotonic()
        while time.monotonic() < deadline:
            for future in futures:
                if future.done():
                    return future.result()
            if resend and time.monotonic() - asked > 3.0:
                futures.append(client.call_async(request))
                asked = time.monotonic()
            time.sleep(0.02)
        raise TimeoutError(f"service {full} did not answer")

    def set_parameters(self, **values: Any) -> list[Any]:
        """Set node parameters through its parameter service; returns the SetParametersResult list."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        return list(self.call(SetParameters, "set_parameters", request).results)

    def parameter_values(self, *names: str) -> list[Any]:
        """The node's ParameterValue messages of ``names`` (their ``type`` says how they are stored)."""
        from rcl_interfaces.srv import GetParameters

        request = GetParameters.Request(names=list(names))
        return list(self.call(GetParameters, "get_parameters", request, resend=True).values)

    def lifecycle(self, transition: str) -> bool:
        """Trigger a lifecycle transition by label (configure, activate, deactivate, cleanup)."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        ids = {
            "configure": Transition.TRANSITION_CONFIGURE,
            "activate": Transition.TRANSITION_ACTIVATE,
            "deactivate": Transition.TRANSITION_DEACTIVATE,
            "cleanup": Transition.TRANSITION_CLEANUP,
        }
        request = ChangeState.Request()
        request.transition.id = ids[transition]
        return bool(self.call(ChangeState, "change_state", request).success)

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return str(self.call(GetState, "get_state", GetState.Request(), resend=True).current_state.label)

    def close(self) -> None:
        import rclpy

        self._spinning = False
        self._thread.join(timeout=5)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@contextmanager
def client(node_name: str = "mcn_node") -> Iterator[Client]:
    c = Client(node_name)
    try:
        yield c
    finally:
        c.close()
