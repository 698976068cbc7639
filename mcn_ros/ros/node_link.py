"""The player's link to a running mcn_ros node over DDS (the rclpy part, with :mod:`mcn_ros.ros.player`).

:class:`NodeLink` owns an rclpy node in its own context, spinning on a thread. ``connect()`` waits for the
node (its output publishers, its camera subscription, our subscriptions matched), reads its parameters and
sends warm-up frames, stamped apart from the bag's, until the node answers on every output: discovery is then
complete on both sides and the model's first, slow inference is out of the way. The outputs are subscribed
as raw CDR (their header stamp is read from the bytes; nothing is deserialized on the way in); their
arrivals go to :class:`~mcn_ros.bag.pacing.Arrivals`, and those of the frames being recorded to a queue that
the player's bag writer drains.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import CameraFrame, header_stamp_ns, sequence_length_after_header, with_stamp
from mcn_ros.bag.pacing import Arrivals
from mcn_ros.bag.typestore import COMPRESSED_IMAGE, DETECTIONS, IMAGE, LABEL_INFO, POSE_INFO, POSES
from mcn_ros.ros.topic_names import CAMERA_TOPICS, NODE_TOPICS

#: Output key -> (topic under the node's name, message type). The keys are those of frames.jsonl.
OUTPUTS: dict[str, tuple[str, str]] = {
    key: (CAMERA_TOPICS[key], message_type)
    for key, message_type in (("detections", DETECTIONS), ("poses", POSES), ("segmentation", IMAGE))
}
LATCHED: dict[str, tuple[str, str]] = {
    key: (NODE_TOPICS[key], message_type)
    for key, message_type in (
        ("label_info", LABEL_INFO),
        ("segmentation_label_info", LABEL_INFO),
        ("pose_info", POSE_INFO),
    )
}
#: Node parameters recorded with each replay (the direct evaluation runs the model with the same ones: every
#: parameter that changes what the model runtime computes is here).
PARAMETERS = (
    "weights", "device", "precision", "backend", "int8_graph", "cuda_graphs", "torch_compile", "rect_input",
    "input_size", "tasks", "score_threshold", "pose_score_threshold", "keypoint_threshold", "max_detections",
    "flip_test", "segmentation_resampling", "image_qos", "publisher_reliability", "publisher_depth",
    "image_transport",
)  # fmt: skip
COUNTS = {"detections": "detections", "poses": "persons"}
TASKS = {"detections": "detection", "poses": "pose", "segmentation": "segmentation"}


def has_publisher(node: Any, subscription: Any) -> bool:
    """Whether a publisher is matched with ``subscription`` of ``node``: rclpy's matched count since Iron;
    Humble's rclpy has none, so there a publisher on the topic (compatible QoS or not)."""
    matched = getattr(subscription, "get_publisher_count", None)
    if matched is not None:
        return int(matched()) > 0
    return int(node.count_publishers(subscription.topic_name)) > 0


def _message_class(msgtype: str) -> Any:
    from sensor_msgs.msg import CompressedImage, Image

    return {IMAGE: Image, COMPRESSED_IMAGE: CompressedImage}[msgtype]


_Link = TypeVar("_Link", bound="NodeLink")


class NodeLink:
    """An rclpy node (own context, spinning on a thread) connected to one mcn_ros node: its output topics,
    parameters and lifecycle state, and every output message's arrival.

    ``abort_check`` is called while waiting: a string it returns ends the wait with that message (the
    ``run`` command uses it to notice that the node process died or logged a failed configure).
    """

    def __init__(
        self,
        node: str = "/mcn_node",
        publish_topic: str = "/camera/image_raw",
        camera_msgtype: str = IMAGE,
        outputs: Sequence[str] = tuple(OUTPUTS),
        startup_timeout_s: float = 60.0,
        abort_check: Callable[[], str | None] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.node_name = node if node.startswith("/") else "/" + node
        self.publish_topic = publish_topic
        self.camera_msgtype = camera_msgtype
        unknown = sorted(set(outputs) - set(OUTPUTS))
        if unknown:
            raise BagError(f"unknown outputs {unknown}; known: {', '.join(OUTPUTS)}")
        self.wanted = list(outputs)
        self.startup_timeout_s = startup_timeout_s
        self.abort_check = abort_check
        self.log = log
        self.topics: dict[str, str] = {}  # output key -> full topic (those the node has)
        self.parameters: dict[str, Any] = {}
        self.arrivals = Arrivals()
        self._counts: dict[int, dict[str, int]] = {}
        self._latched: dict[str, tuple[int, bytes]] = {}
        self._recording: set[int] = set()
        # Held while an output is noted and queued for the bag, and while recording stops: an arrival is in
        # the frame records exactly when its message is in the output bag.
        self._output_lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, int, bytes] | None] = queue.Queue()
        self._context = Context()
        rclpy.init(context=self._context)
        self._node = rclpy.create_node("mcn_bag_player", context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._spinning = True
        self._thread = threading.Thread(target=self._spin, name="player_spin", daemon=True)
        self._thread.start()
        self._publisher: Any = None
        self._subscriptions: list[Any] = []

    # -- set-up -------------------------------------------------------------------------------------------
    def __enter__(self: _Link) -> _Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spin(self) -> None:
        while self._spinning and self._context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutdown races: the loop ends with the context
                if not self._spinning:
                    return

    def close(self) -> None:
        self._spinning = False
        self._thread.join(timeout=5)
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._context)

    def _topic(self, name: str) -> str:
        return f"{self.node_name}/{name}"

    def _check_abort(self) -> None:
        if self.abort_check is not None:
            message = self.abort_check()
            if message:
                raise BagError(message)

    def _wait(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            self._check_abort()
            time.sleep(0.05)
        return condition()

    def lifecycle_state(self, timeout_s: float = 3.0) -> str:
        """The node's lifecycle state label, or a phrase saying why it is unknown."""
        from lifecycle_msgs.srv import GetState

        client: Any = self._node.create_client(GetState, self._topic("get_state"))
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                return "not reachable (no get_state service: is the node running in this ROS_DOMAIN_ID?)"
            future = client.call_async(GetState.Request())
            if not self._wait(future.done, timeout_s):
                return "unknown (get_state did not answer)"
            result: Any = future.result()
            return str(result.current_state.label)
        finally:
            self._node.destroy_client(client)

    def _fetch_parameters(self, timeout_s: float = 5.0) -> dict[str, Any]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        client: Any = self._node.create_client(GetParameters, self._topic("get_parameters"))
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                return {}
            future = client.call_async(GetParameters.Request(names=list(PARAMETERS)))
            if not self._wait(future.done, timeout_s):
                return {}
            result: Any = future.result()
            values: list[Any] = [parameter_value_to_python(v) for v in result.values]
        finally:
            self._node.destroy_client(client)
        return {
            name: list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else value
            for name, value in zip(PARAMETERS, values, strict=True)
            if value is not None
        }

    def connect(self, warmup_frame: CameraFrame, avoid_stamps: set[int], warmup: int = 2) -> dict[str, Any]:
        """Wait for the node, subscribe, warm up; returns what was found (for replay.json)."""
        started = time.monotonic()
        candidates = {key: self._topic(OUTPUTS[key][0]) for key in self.wanted}
        if not self._wait(
            lambda: any(self._node.count_publishers(t) for t in candidates.values()), self.startup_timeout_s
        ):
            state = self.lifecycle_state()
            raise BagError(
                f"node {self.node_name} published none of {', '.join(candidates.values())} within "
                f"{self.startup_timeout_s:.0f} s; its lifecycle state: {state}. A node whose weights fail to "
                "load stays 'unconfigured' (its log says 'configure failed: ...')"
            )
        time.sleep(1.0)  # the other publishers of the same configure call get discovered meanwhile
        self.topics = {k: t for k, t in candidates.items() if self._node.count_publishers(t) > 0}
        for topic in self.topics.values():
            if self._node.count_publishers(topic) > 1:
                raise BagError(
                    f"{self._node.count_publishers(topic)} publishers on {topic}: another node named "
                    f"{self.node_name} runs in this ROS domain; stop it, or use another node name or "
                    "ROS_DOMAIN_ID"
                )
        self.parameters = self._fetch_parameters()
        enabled = self.parameters.get("tasks")
        if enabled is not None:  # a task switched off by the node's `tasks` parameter never answers
            self.topics = {k: t for k, t in self.topics.items() if TASKS[k] in enabled}
            if not self.topics:
                raise BagError(
                    f"node {self.node_name} has none of the requested outputs ({', '.join(self.wanted)}) "
                    f"enabled: its tasks parameter is {list(enabled)}"
                )
        self._subscribe()
        self._wait_for_camera_subscriber()
        if not self._wait(lambda: all(has_publisher(self._node, s) for s in self._subscriptions), 10.0):
            raise BagError(f"the node's output topics {', '.join(self.topics.values())} never matched")
        self._warm_up(warmup_frame, avoid_stamps, warmup)
        return {
            "node": self.node_name,
            "outputs": dict(self.topics),
            "publish_topic": self.publish_topic,
            "parameters": self.parameters,
            "connect_s": round(time.monotonic() - started, 2),
        }

    def _subscribe(self) -> None:
        self._publisher = self._node.create_publisher(
            _message_class(self.camera_msgtype),
            self.publish_topic,
            QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE),
        )
        for key, topic in self.topics.items():
            infos = self._node.get_publishers_info_by_topic(topic)
            best_effort = bool(infos) and infos[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
            qos = QoSProfile(
                depth=100,
                history=HistoryPolicy.KEEP_LAST,
                reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
            )
            cls = self._output_class(OUTPUTS[key][1])
            self._subscriptions.append(
                self._node.create_subscription(cls, topic, self._on_output(key, topic), qos, raw=True)
            )
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        for name, msgtype in LATCHED.values():
            topic = self._topic(name)
            self._node.create_subscription(
                self._output_class(msgtype), topic, self._on_latched(topic), latched, raw=True
            )

    @staticmethod
    def _output_class(msgtype: str) -> Any:
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray, LabelInfo

        from mcn_ros.msg import HumanPose2DArray, PoseInfo

        return {
            DETECTIONS: Detection2DArray,
            POSES: HumanPose2DArray,
            IMAGE: Image,
            LABEL_INFO: LabelInfo,
            POSE_INFO: PoseInfo,
        }[msgtype]

    def _on_output(self, key: str, topic: str) -> Callable[[bytes], None]:
        count_name = COUNTS.get(key)

        def callback(data: bytes) -> None:
            now = time.monotonic_ns()
            stamp = header_stamp_ns(data)
            with self._output_lock:
                if not self.arrivals.record(key, stamp, now):
                    return
                if count_name is not None:
                    self._counts.setdefault(stamp, {})[count_name] = sequence_length_after_header(data)
                if stamp in self._recording:
                    self._queue.put((topic, time.time_ns(), data))

        return callback

    def _on_latched(self, topic: str) -> Callable[[bytes], None]:
        def callback(data: bytes) -> None:
            self._latched[topic] = (time.time_ns(), data)

        return callback

    def _wait_for_camera_subscriber(self) -> None:
        name, namespace = self._split_node_name()

        def subscribed() -> bool:
            return any(
                i.node_name == name and i.node_namespace == namespace
                for i in self._node.get_subscriptions_info_by_topic(self.publish_topic)
            )

        if self._wait(subscribed, 15.0):
            return
        try:
            listening = self._node.get_subscriber_names_and_types_by_node(name, namespace)
        except Exception:
            listening = []
        images = [f"{t} [{', '.join(types)}]" for t, types in listening if any("Image" in x for x in types)]
        state = self.lifecycle_state()
        hint = (
            f"it subscribes to {', '.join(images)}: remap its input (-r image:=<camera topic>)"
            if images
            else "it subscribes to no image topic: an inactive node subscribes to nothing (lifecycle state: "
            f"{state}; start it with autostart:=true or `ros2 lifecycle set {self.node_name} activate`)"
        )
        if self.camera_msgtype == COMPRESSED_IMAGE:
            hint += "; CompressedImage input needs the node's image_transport:=compressed"
        raise BagError(f"node {self.node_name} does not subscribe to {self.publish_topic}: {hint}")

    def _split_node_name(self) -> tuple[str, str]:
        namespace, _, name = self.node_name.rpartition("/")
        return name, namespace or "/"

    def _warm_up(self, frame: CameraFrame, avoid: set[int], count: int) -> None:
        keys = list(self.topics)
        stamps = [s for s in range(1, 10_000) if s not in avoid]
        deadline = time.monotonic() + self.startup_timeout_s
        sent: list[int] = []
        answered = 0
        while answered < max(1, count):
            if time.monotonic() > deadline:
                missing = ", ".join(
                    self.topics[k] for k in keys if not any(self.arrivals.of(s).get(k) for s in sent)
                )
                state = self.lifecycle_state()
                raise BagError(
                    f"node {self.node_name} never answered the warm-up frames within "
                    f"{self.startup_timeout_s:.0f} "
                    f"s (no message on {missing or 'some output'}); lifecycle state: {state}"
                )
            stamp = stamps[len(sent)]
            sent.append(stamp)
            self._publisher.publish(with_stamp(frame.data, stamp))
            if self.arrivals.wait_any([stamp], keys, 2.0 if not answered else 30.0) is not None:
                answered += 1
            self._check_abort()
