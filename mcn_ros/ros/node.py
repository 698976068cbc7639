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
from typing import TYPE_CHECKING, Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, LifecycleState, TransitionCallbackReturn
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

from mcn_ros.msg import HumanPose2DArray, PoseInfo
from mcn_ros.ros import diagnostics, messages
from mcn_ros.ros.frames import Frame, FrameStats, LatestFrameSlot, monotonic
from mcn_ros.ros.images import ImageError, class_map_encoding, compressed_to_array, image_to_array
from mcn_ros.ros.parameters import PARAMETERS, FrameSettings, descriptor, frame_settings, refusal
from mcn_ros.visualize import color_palette, colorize, draw_results

if TYPE_CHECKING:  # the model runtime (torch) loads on configure, not on import
    import numpy as np
    from rclpy.subscription import Subscription

    from mcn_ros.model.config import ModelConfig
    from mcn_ros.model.predictor import Predictor
    from mcn_ros.model.results import Results

THROTTLE_S = 5.0


class McnNode(LifecycleNode):
    """Managed node: configure loads the model, activate subscribes and publishes, cleanup frees it."""

    def __init__(self, node_name: str = "mcn_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_parameters(
            "", [(spec.name, spec.declared_default(), descriptor(spec)) for spec in PARAMETERS]
        )
        self._frame_settings = self._read_frame_settings()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        self._predictor: Predictor | None = None
        self._output_publishers: dict[str, LifecyclePublisher[Any]] = {}
        self._image_subscriptions: list[Subscription[Any]] = []
        self._palette = color_palette(0)
        self._frame_slot = LatestFrameSlot()
        self._frame_stats = FrameStats()
        self._inference_thread: threading.Thread | None = None
        self._running = threading.Event()
        self._computed_tasks: frozenset[str] = frozenset()
        self._last_error = ""
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics_period").value)
        self._diagnostics_timer = self.create_timer(period, self._publish_diagnostics)

    @property
    def configured(self) -> bool:
        """A model is loaded (inactive or active)."""
        return self._predictor is not None

    # -- parameters (declared from the table in parameters.py) --------------------------------------------
    def _read_frame_settings(self) -> FrameSettings:
        return frame_settings({spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS})

    def _on_set_parameters(self, parameters: list[Parameter[Any]]) -> SetParametersResult:
        configured = self.configured
        for parameter in parameters:
            reason = refusal(parameter.name, parameter.value, configured=configured)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, parameters: list[Parameter[Any]]) -> None:
        self._frame_settings = self._read_frame_settings()
        if self._running.is_set() and {p.name for p in parameters} & {
            "score_threshold",
            "keypoint_threshold",
        }:
            self._publish_info()

    def _publish_info(self) -> None:
        """(Re)publish the latched LabelInfo and PoseInfo with the current thresholds."""
        header = Header(stamp=self.get_clock().now().to_msg())
        settings = self._frame_settings
        publishers = self._output_publishers
        detection = self._predictor.config.detection if self._predictor is not None else None
        if "label_info" in publishers and detection is not None:
            publishers["label_info"].publish(
                messages.label_info_message(header, detection.classes, settings.score_threshold)
            )
        if "pose_info" in publishers:
            publishers["pose_info"].publish(messages.pose_info_message(header, settings.keypoint_threshold))

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
        predictor = Predictor(model, config, device=device, half=bool(self.get_parameter("half").value))
        self._predictor = predictor

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
        available = predictor.tasks
        create = self.create_lifecycle_publisher
        publishers = self._output_publishers
        if "detection" in available:
            publishers["detections"] = create(Detection2DArray, "~/detections", qos)
            publishers["label_info"] = create(LabelInfo, "~/label_info", latched)
        if "pose" in available:
            publishers["poses"] = create(HumanPose2DArray, "~/poses", qos)
            publishers["pose_info"] = create(PoseInfo, "~/pose_info", latched)
        if "segmentation" in available:
            publishers["segmentation"] = create(Image, "~/segmentation", qos)
            publishers["segmentation_color"] = create(Image, "~/segmentation/color", qos)
        publishers["debug_image"] = create(Image, "~/debug_image", qos)
        class_counts = [len(c.classes) for c in (config.detection, config.segmentation) if c is not None]
        self._palette = color_palette(max(class_counts))  # one colour per class id, shared by all drawings
        self.get_logger().info(
            f"loaded {config.name} ({config.backbone}, tasks {sorted(available)}) on {predictor.device}"
        )

    def _activate(self) -> None:
        self._publish_info()
        if self.get_parameter("image_qos").value == "sensor_data":
            # Sensor data as in REP-2003, but depth 1: only the newest frame is ever wanted.
            image_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        else:
            image_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        image_topic = self._resolve("image")
        subscriptions = self._image_subscriptions
        # A two-argument callback gets rclpy's MessageInfo (a dict on Jazzy and Kilted): its sequence numbers
        # tell the frames lost before the node.
        subscriptions.append(
            self.create_subscription(
                Image, image_topic, lambda m, info: self._on_image(m, info, False), image_qos
            )
        )
        if self.get_parameter("use_compressed").value:
            subscriptions.append(
                self.create_subscription(
                    CompressedImage,
                    image_topic + "/compressed",
                    lambda m, info: self._on_image(m, info, True),
                    image_qos,
                )
            )
        self._running.set()
        self._inference_thread = threading.Thread(
            target=self._inference_loop, name="mcn_inference", daemon=True
        )
        self._inference_thread.start()
        self.get_logger().info(f"active: listening on {image_topic}")

    def _stop_inputs(self) -> None:
        """Stop the inference thread (after the frame in flight) and destroy the subscriptions."""
        self._running.clear()
        if self._inference_thread is not None:
            self._inference_thread.join()  # no timeout: the thread must be gone before its resources are
            self._inference_thread = None
        self._frame_slot.clear()
        for subscription in self._image_subscriptions:
            self.destroy_subscription(subscription)
        self._image_subscriptions.clear()
        self._frame_stats.stop_listening()

    def _teardown(self) -> None:
        """Back to the unconfigured state from anywhere: inputs, outputs, model, per-model state."""
        self._stop_inputs()
        for publisher in self._output_publishers.values():
            self.destroy_lifecycle_publisher(publisher)
        self._output_publishers.clear()
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
    def _on_image(self, message: Image | CompressedImage, info: Any, compressed: bool) -> None:
        now = monotonic()
        self._frame_stats.arrived(now, info, stream=compressed)
        self._frame_slot.put(Frame(message, compressed, now))

    def _wanted_tasks(self, settings: FrameSettings, available: frozenset[str]) -> frozenset[str]:
        """Enabled tasks the model has and somebody listens to (the debug image listens to all)."""
        publishers = self._output_publishers.items()
        listening = {name for name, publisher in publishers if publisher.get_subscription_count() > 0}
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
            frame = self._frame_slot.take(timeout=0.1)
            if frame is None or not self._running.is_set():
                continue
            try:
                self._process(frame)
            except ImageError as error:
                self._frame_stats.reject(monotonic())
                self._last_error = f"bad frame: {error}"
                self.get_logger().warning(f"frame skipped: {error}", throttle_duration_sec=THROTTLE_S)
            except Exception as error:  # the node keeps serving whatever one frame does
                self._frame_stats.reject(monotonic())
                self._last_error = f"inference failed: {error!r}"
                self.get_logger().error(
                    f"frame skipped, inference failed: {error!r}", throttle_duration_sec=THROTTLE_S
                )

    def _process(self, frame: Frame) -> None:
        settings = self._frame_settings
        predictor = self._predictor
        if predictor is None:  # cleaned up while the frame waited
            return
        tasks = self._wanted_tasks(settings, predictor.tasks)
        self._computed_tasks = tasks
        header = frame.message.header
        if not tasks:
            self._frame_stats.idle(monotonic())
            return
        if frame.compressed:
            pixels, color_order = compressed_to_array(frame.message, settings.max_image_pixels)
        else:
            pixels, color_order = image_to_array(frame.message, settings.max_image_pixels)
        (results,) = predictor.predict(  # a batch of one: predict's list form types the result
            [pixels],
            tasks=tasks,
            color_order=color_order,
            score_threshold=settings.score_threshold,
            pose_score_threshold=settings.pose_score_threshold,
            max_detections=settings.max_detections,
            flip_test=settings.flip_test,
        )
        self._publish(header, pixels, color_order, results, settings, predictor.config)
        now = monotonic()
        self._frame_stats.finished(now, now - frame.received, self._stamp_age(header))

    def _publish(
        self,
        header: Header,
        pixels: np.ndarray,
        color_order: str,
        results: Results,
        settings: FrameSettings,
        config: ModelConfig,
    ) -> None:
        publishers = self._output_publishers
        if results.detections is not None and publishers["detections"].get_subscription_count() > 0:
            publishers["detections"].publish(messages.detections_message(header, results.detections))
        if results.poses is not None and publishers["poses"].get_subscription_count() > 0:
            publishers["poses"].publish(
                messages.poses_message(header, results.poses, settings.keypoint_threshold)
            )
        if results.segmentation is not None:
            class_map = results.segmentation
            if publishers["segmentation"].get_subscription_count() > 0:
                publishers["segmentation"].publish(
                    messages.image_message(header, class_map, class_map_encoding(class_map))
                )
            if publishers["segmentation_color"].get_subscription_count() > 0:
                color = colorize(class_map, self._palette)
                publishers["segmentation_color"].publish(messages.image_message(header, color, "rgb8"))
        if publishers["debug_image"].get_subscription_count() > 0:
            rgb = pixels if color_order == "rgb" else pixels[:, :, ::-1]
            classes = config.detection.classes if config.detection is not None else ()
            drawn = draw_results(rgb, results, classes, self._palette, settings.keypoint_threshold)
            publishers["debug_image"].publish(messages.image_message(header, drawn, "rgb8"))

    def _stamp_age(self, header: Header) -> float | None:
        if header.stamp.sec == 0 and header.stamp.nanosec == 0:
            return None
        now = self.get_clock().now().nanoseconds
        return (now - (header.stamp.sec * 1_000_000_000 + header.stamp.nanosec)) / 1e9

    # -- diagnostics --------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        summary = self._frame_stats.summary(monotonic())
        predictor = self._predictor
        knobs = diagnostics.Knobs(
            input_size=predictor.config.input_size if predictor is not None else None,
            tasks=sorted(self._computed_tasks),
            flip_test=self._frame_settings.flip_test,
            device=self._device_name(),
        )
        level, message = diagnostics.assess(
            summary,
            configured=predictor is not None,
            active=self._running.is_set(),
            tolerance=float(self.get_parameter("rate_warn_tolerance").value),
            knobs=knobs,
        )
        values = diagnostics.status_values(
            summary,
            self._frame_stats.counts(self._frame_slot.dropped),
            loss_counting=self._frame_stats.gaps.method(),
            tasks=self._computed_tasks,
            device=self._device_name(),
            last_error=self._last_error,
        )
        name = f"{self.get_name()}: inference"
        stamp = self.get_clock().now().to_msg()
        array = diagnostics.diagnostic_array(name, self._device_name(), level, message, values, stamp)
        self._diagnostics_publisher.publish(array)

    def _device_name(self) -> str:
        return str(self._predictor.device) if self._predictor is not None else "none"


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point: spin until Ctrl-C or shutdown; ``autostart`` skips the lifecycle manager."""
    rclpy.init(args=list(args) if args is not None else sys.argv)
    node = McnNode()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            node.trigger_configure()
            if node.configured:
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
