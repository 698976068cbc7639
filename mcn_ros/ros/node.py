"""The mcn_ros lifecycle node: camera images in; detections, poses and segmentation out.

Thin by design: convert the image (images.py), one call of the model runtime (Predictor), convert the
results (messages.py). Inference runs on its own thread behind a latest-frame slot, so the executor is never
blocked and frames never queue up. Run it with

    python -m mcn_ros.ros.node --ros-args --params-file config/mcn.yaml -p weights:=model.safetensors
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, LabelInfo

from mcn_ros.model.config import TASKS
from mcn_ros.msg import HumanPose2DArray, PoseInfo
from mcn_ros.ros import messages
from mcn_ros.ros.frames import Frame, FrameStats, LatestFrameSlot, monotonic
from mcn_ros.ros.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    class_map_encoding,
    compressed_to_array,
    image_to_array,
)
from mcn_ros.visualize import color_palette, colorize, draw_results

#: Parameters that only take effect on configure; changing them while configured is refused with a reason.
CONFIGURE_TIME = (
    "weights",
    "device",
    "half",
    "input_size",
    "use_compressed",
    "image_qos",
    "publisher_reliability",
    "publisher_depth",
)
IMAGE_QOS = ("sensor_data", "reliable")
PUBLISHER_RELIABILITY = ("reliable", "best_effort")
THROTTLE_S = 5.0


@dataclass(frozen=True)
class Thresholds:
    """Run-time settings read once per frame (swapped atomically when a parameter changes)."""

    tasks: frozenset[str]
    score: float
    pose_score: float
    keypoint: float
    max_detections: int
    flip_test: bool
    max_pixels: int


def _descriptor(text: str, *, read_only: bool = False, **ranges: Any) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=text, read_only=read_only)
    if "float_range" in ranges:
        low, high = ranges["float_range"]
        descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high)]
    if "int_range" in ranges:
        low, high = ranges["int_range"]
        descriptor.integer_range = [IntegerRange(from_value=low, to_value=high)]
    return descriptor


class McnNode(LifecycleNode):
    """Managed node: configure loads the model, activate subscribes and publishes, cleanup frees it."""

    def __init__(self, node_name: str = "mcn_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        self._settings = self._read_settings()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        self._predictor: Any = None
        self._outputs: dict[str, Any] = {}
        self._inputs: list[Any] = []
        self._palette = color_palette(0)
        self._slot = LatestFrameSlot()
        self._stats = FrameStats()
        self._worker: threading.Thread | None = None
        self._running = threading.Event()
        self._computed_tasks: frozenset[str] = frozenset()
        self._last_error = ""
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics_period").value)
        self._diagnostics_timer = self.create_timer(period, self._publish_diagnostics)

    # -- parameters ---------------------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        self.declare_parameter(
            "weights", "", _descriptor("Path of the .safetensors weights file (configure).")
        )
        self.declare_parameter("device", "auto", _descriptor("auto, cpu or cuda:N (configure)."))
        self.declare_parameter("half", False, _descriptor("fp16 autocast on CUDA (configure)."))
        self.declare_parameter(
            "input_size",
            [0, 0],
            _descriptor(
                "Network input [height, width], multiples of 32; [0, 0] = the weights' own (configure)."
            ),
        )
        self.declare_parameter(
            "tasks", list(TASKS), _descriptor(f"Enabled tasks, a subset of {list(TASKS)} (run time).")
        )
        self.declare_parameter(
            "score_threshold", 0.3, _descriptor("Minimum detection score (run time).", float_range=(0.0, 1.0))
        )
        self.declare_parameter(
            "pose_score_threshold",
            0.3,
            _descriptor("Minimum person score for poses.", float_range=(0.0, 1.0)),
        )
        self.declare_parameter(
            "keypoint_threshold",
            0.1,
            _descriptor("Keypoints under this score are published with valid=false.", float_range=(0.0, 1.0)),
        )
        self.declare_parameter(
            "max_detections", 100, _descriptor("Most detections per image (run time).", int_range=(1, 1000))
        )
        self.declare_parameter("flip_test", False, _descriptor("Average with the mirrored image (run time)."))
        self.declare_parameter(
            "max_image_pixels",
            DEFAULT_MAX_PIXELS,
            _descriptor("Larger frames are refused.", int_range=(1, 1 << 30)),
        )
        self.declare_parameter(
            "use_compressed",
            False,
            _descriptor("Also subscribe to <image>/compressed (JPEG/PNG) (configure)."),
        )
        self.declare_parameter(
            "image_qos", "sensor_data", _descriptor(f"Subscription QoS, one of {IMAGE_QOS} (configure).")
        )
        self.declare_parameter(
            "publisher_reliability",
            "reliable",
            _descriptor(f"Publisher reliability, one of {PUBLISHER_RELIABILITY} (configure)."),
        )
        self.declare_parameter(
            "publisher_depth", 5, _descriptor("Publisher history depth (configure).", int_range=(1, 100))
        )
        self.declare_parameter(
            "autostart",
            False,
            _descriptor("Configure and activate at start-up (no lifecycle manager).", read_only=True),
        )
        self.declare_parameter(
            "diagnostics_period",
            1.0,
            _descriptor("Seconds between /diagnostics messages.", read_only=True, float_range=(0.1, 60.0)),
        )

    def _read_settings(self, overrides: Sequence[Parameter] = ()) -> Thresholds:
        values = {name: self.get_parameter(name).value for name in self._parameters}
        values.update({p.name: p.value for p in overrides})
        return Thresholds(
            tasks=frozenset(values["tasks"]),
            score=float(values["score_threshold"]),
            pose_score=float(values["pose_score_threshold"]),
            keypoint=float(values["keypoint_threshold"]),
            max_detections=int(values["max_detections"]),
            flip_test=bool(values["flip_test"]),
            max_pixels=int(values["max_image_pixels"]),
        )

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        configured = self._predictor is not None
        for parameter in parameters:
            if parameter.name in CONFIGURE_TIME and configured:
                return SetParametersResult(
                    successful=False,
                    reason=f"{parameter.name} takes effect on configure: deactivate and clean up first",
                )
            if parameter.name == "tasks":
                unknown = sorted(set(parameter.value or []) - set(TASKS))
                if unknown:
                    return SetParametersResult(
                        successful=False, reason=f"unknown task(s) {unknown}; known tasks: {list(TASKS)}"
                    )
            if parameter.name == "image_qos" and parameter.value not in IMAGE_QOS:
                return SetParametersResult(successful=False, reason=f"image_qos must be one of {IMAGE_QOS}")
            if parameter.name == "publisher_reliability" and parameter.value not in PUBLISHER_RELIABILITY:
                return SetParametersResult(
                    successful=False, reason=f"publisher_reliability must be one of {PUBLISHER_RELIABILITY}"
                )
            if parameter.name == "device" and not _valid_device(str(parameter.value)):
                return SetParametersResult(successful=False, reason="device must be auto, cpu or cuda[:N]")
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, parameters: list[Parameter]) -> None:
        self._settings = self._read_settings()
        if self._running.is_set() and {p.name for p in parameters} & {
            "score_threshold",
            "keypoint_threshold",
        }:
            self._publish_info()

    def _publish_info(self) -> None:
        """(Re)publish the latched LabelInfo and PoseInfo with the current thresholds."""
        header = Header(stamp=self.get_clock().now().to_msg())
        settings = self._settings
        if "label_info" in self._outputs:
            classes = self._predictor.config.detection.classes
            self._outputs["label_info"].publish(messages.label_info_message(header, classes, settings.score))
        if "pose_info" in self._outputs:
            self._outputs["pose_info"].publish(messages.pose_info_message(header, settings.keypoint))

    # -- lifecycle ----------------------------------------------------------------------------------------
    # rclpy turns an exception in a transition callback into an error transition without logging it, so each
    # callback catches everything, logs one line and fails the transition after undoing what it started.
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model and create the publishers of the tasks it has."""
        try:
            self._configure()
        except Exception as error:
            self.get_logger().error(f"configure failed: {error}")
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start publishing, subscribe to the camera and start the inference thread."""
        try:
            result = super().on_activate(state)
            self._activate()
        except Exception as error:
            self.get_logger().error(f"activate failed: {error}")
            self._stop_inputs()
            return TransitionCallbackReturn.FAILURE
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the subscriptions and the inference thread; publishers stop publishing."""
        self._stop_inputs()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the publishers and release the model and its device memory."""
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop everything on the way out, from any state."""
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop everything after an error, so that configure can start afresh."""
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        from mcn_ros.model.device import resolve_device
        from mcn_ros.model.predictor import Predictor
        from mcn_ros.model.weights import load_weights

        weights = str(self.get_parameter("weights").value)
        if not weights:
            raise ValueError("parameter 'weights' is empty (path of a .safetensors file)")
        device = resolve_device(str(self.get_parameter("device").value))
        try:
            model, config, _ = load_weights(weights, device=device)
        except Exception as error:
            raise RuntimeError(f"cannot load weights {weights!r}: {error}") from error
        size = [int(v) for v in self.get_parameter("input_size").value]
        if size != [0, 0]:
            if len(size) != 2:
                raise ValueError(f"parameter input_size {size}: expected [height, width]")
            try:  # the network is fully convolutional: another input size needs no other weights
                config = dataclasses.replace(config, input_size=(size[0], size[1]))
            except ValueError as error:
                raise ValueError(f"parameter input_size {size}: {error}") from error
        self._predictor = Predictor(model, config, device=device, half=bool(self.get_parameter("half").value))

        depth = int(self.get_parameter("publisher_depth").value)
        reliability = (
            ReliabilityPolicy.RELIABLE
            if self.get_parameter("publisher_reliability").value == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=reliability)
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        available = self._predictor.tasks
        pub = self.create_lifecycle_publisher
        if "detection" in available:
            self._outputs["detections"] = pub(Detection2DArray, "~/detections", qos)
            self._outputs["label_info"] = pub(LabelInfo, "~/label_info", latched)
        if "pose" in available:
            self._outputs["poses"] = pub(HumanPose2DArray, "~/poses", qos)
            self._outputs["pose_info"] = pub(PoseInfo, "~/pose_info", latched)
        if "segmentation" in available:
            self._outputs["segmentation"] = pub(Image, "~/segmentation", qos)
            self._outputs["segmentation_color"] = pub(Image, "~/segmentation/color", qos)
        self._outputs["debug_image"] = pub(Image, "~/debug_image", qos)
        class_counts = [len(c.classes) for c in (config.detection, config.segmentation) if c is not None]
        self._palette = color_palette(max(class_counts))  # one colour per class id, shared by all drawings
        self.get_logger().info(
            f"loaded {config.name} ({config.backbone}, tasks {sorted(available)}) on {self._predictor.device}"
        )

    def _activate(self) -> None:
        self._publish_info()
        if self.get_parameter("image_qos").value == "sensor_data":
            # Sensor data as in REP-2003, but depth 1: only the newest frame is ever wanted.
            image_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        else:
            image_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        image_topic = self._resolve("image")
        self._inputs.append(
            self.create_subscription(Image, image_topic, lambda m: self._on_image(m, False), image_qos)
        )
        if self.get_parameter("use_compressed").value:
            self._inputs.append(
                self.create_subscription(
                    CompressedImage, image_topic + "/compressed", lambda m: self._on_image(m, True), image_qos
                )
            )
        self._running.set()
        self._worker = threading.Thread(target=self._inference_loop, name="mcn_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(f"active: listening on {image_topic}")

    def _stop_inputs(self) -> None:
        """Stop the inference thread (after the frame in flight) and destroy the subscriptions."""
        self._running.clear()
        if self._worker is not None:
            self._worker.join()  # no timeout: the thread must be gone before its resources are
            self._worker = None
        self._slot.clear()
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs.clear()

    def _teardown(self) -> None:
        """Back to the unconfigured state from anywhere: inputs, outputs, model, per-model state."""
        self._stop_inputs()
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs.clear()
        self._palette = color_palette(0)
        self._computed_tasks = frozenset()
        self._last_error = ""
        if self._predictor is None:
            return
        on_cuda = str(self._predictor.device).startswith("cuda")
        self._predictor = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    def _resolve(self, topic: str) -> str:
        """Fully qualified (possibly remapped) topic name, so that '<image>/compressed' follows remaps."""
        resolve = getattr(self, "resolve_topic_name", None)
        return str(resolve(topic)) if resolve is not None else topic

    # -- hot path -----------------------------------------------------------------------------------------
    def _on_image(self, message: Any, compressed: bool) -> None:
        now = monotonic()
        self._stats.arrived(now)
        self._slot.put(Frame(message, compressed, now))

    def _wanted_tasks(self, settings: Thresholds, available: frozenset[str]) -> frozenset[str]:
        """Enabled tasks the model has and somebody listens to (the debug image listens to all)."""
        listening = {name for name, pub in self._outputs.items() if pub.get_subscription_count() > 0}
        debug = "debug_image" in listening
        wanted = set()
        if debug or "detections" in listening:
            wanted.add("detection")
        if debug or "poses" in listening:
            wanted.add("pose")
        if debug or listening & {"segmentation", "segmentation_color"}:
            wanted.add("segmentation")
        return frozenset(wanted & settings.tasks & available)

    def _inference_loop(self) -> None:
        while self._running.is_set():
            frame = self._slot.take(timeout=0.1)
            if frame is None or not self._running.is_set():
                continue
            try:
                self._process(frame)
            except ImageError as error:
                self._stats.rejected += 1
                self._last_error = f"bad frame: {error}"
                self.get_logger().warning(f"frame skipped: {error}", throttle_duration_sec=THROTTLE_S)
            except Exception as error:  # the node keeps serving whatever one frame does
                self._stats.rejected += 1
                self._last_error = f"inference failed: {error!r}"
                self.get_logger().error(
                    f"frame skipped, inference failed: {error!r}", throttle_duration_sec=THROTTLE_S
                )

    def _process(self, frame: Frame) -> None:
        settings = self._settings
        predictor = self._predictor
        tasks = self._wanted_tasks(settings, predictor.tasks)
        self._computed_tasks = tasks
        header = frame.message.header
        if not tasks:
            self._stats.idle(monotonic())
            return
        if frame.compressed:
            pixels, order = compressed_to_array(frame.message, settings.max_pixels)
        else:
            pixels, order = image_to_array(frame.message, settings.max_pixels)
        results = predictor.predict(
            pixels,
            tasks=tasks,
            color_order=order,
            score_threshold=settings.score,
            pose_score_threshold=settings.pose_score,
            max_detections=settings.max_detections,
            flip_test=settings.flip_test,
        )
        self._publish(header, pixels, order, results, settings, predictor.config)
        now = monotonic()
        self._stats.finished(now, now - frame.received, self._stamp_age(header))

    def _publish(
        self, header: Header, pixels: Any, order: str, results: Any, settings: Thresholds, config: Any
    ) -> None:
        pubs = self._outputs
        if results.detections is not None and pubs["detections"].get_subscription_count() > 0:
            pubs["detections"].publish(messages.detections_message(header, results.detections))
        if results.poses is not None and pubs["poses"].get_subscription_count() > 0:
            pubs["poses"].publish(messages.poses_message(header, results.poses, settings.keypoint))
        if results.segmentation is not None:
            class_map = results.segmentation
            if pubs["segmentation"].get_subscription_count() > 0:
                pubs["segmentation"].publish(
                    messages.image_message(header, class_map, class_map_encoding(class_map))
                )
            if pubs["segmentation_color"].get_subscription_count() > 0:
                color = colorize(class_map, self._palette)
                pubs["segmentation_color"].publish(messages.image_message(header, color, "rgb8"))
        if pubs["debug_image"].get_subscription_count() > 0:
            rgb = pixels if order == "rgb" else pixels[:, :, ::-1]
            classes = config.detection.classes if config.detection is not None else ()
            drawn = draw_results(rgb, results, classes, self._palette, settings.keypoint)
            pubs["debug_image"].publish(messages.image_message(header, drawn, "rgb8"))

    def _stamp_age(self, header: Header) -> float | None:
        if header.stamp.sec == 0 and header.stamp.nanosec == 0:
            return None
        now = self.get_clock().now().nanoseconds
        return (now - (header.stamp.sec * 1_000_000_000 + header.stamp.nanosec)) / 1e9

    # -- diagnostics --------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        summary = self._stats.summary(monotonic())
        active = self._running.is_set()
        status = DiagnosticStatus(name=f"{self.get_name()}: inference", hardware_id=self._device_name())
        if self._predictor is None:
            status.level, status.message = DiagnosticStatus.WARN, "unconfigured: no model loaded"
        elif not active:
            status.level, status.message = DiagnosticStatus.OK, "inactive"
        elif summary["input_rate_hz"] > 0 and (
            summary["processed_rate_hz"] + summary["idle_rate_hz"] < 0.5 * summary["input_rate_hz"]
        ):
            status.level, status.message = (
                DiagnosticStatus.WARN,
                "dropping frames: inference slower than input",
            )
        else:
            status.level, status.message = DiagnosticStatus.OK, "active"
        values = {
            **{k: f"{v:.2f}" for k, v in summary.items()},
            "frames_received": str(self._stats.received),
            "frames_processed": str(self._stats.processed),
            "frames_idle": str(self._stats.idle_count),
            "frames_dropped": str(self._slot.dropped),
            "frames_rejected": str(self._stats.rejected),
            "tasks_computed": ",".join(sorted(self._computed_tasks)),
            "device": self._device_name(),
            "last_error": self._last_error,
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(array)

    def _device_name(self) -> str:
        return str(self._predictor.device) if self._predictor is not None else "none"


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point: spin until Ctrl-C or shutdown; ``autostart`` skips the lifecycle manager."""
    rclpy.init(args=list(args) if args is not None else sys.argv)
    node = McnNode()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            node.trigger_configure()
            if node._predictor is not None:
                node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._stop_inputs()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
