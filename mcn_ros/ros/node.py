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
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from mcn_ros.ros import diagnostics
from mcn_ros.ros.frames import Frame, FrameStats, LatestFrameSlot, monotonic
from mcn_ros.ros.images import ImageError, compressed_to_array, image_to_array
from mcn_ros.ros.memory import release_freed_memory
from mcn_ros.ros.outputs import Outputs
from mcn_ros.ros.parameters import PARAMETERS, FrameSettings, descriptor, frame_settings, refusal

if TYPE_CHECKING:  # the model runtime (torch) loads on configure, not on import
    from rclpy.subscription import Subscription

    from mcn_ros.model.predictor import Predictor

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
        self._outputs = Outputs()
        self._image_subscriptions: list[Subscription[Any]] = []
        self._frame_slot = LatestFrameSlot()
        self._frame_stats = FrameStats()
        self._inference_thread: threading.Thread | None = None
        self._running = threading.Event()  # active: frames are taken and processed
        self._busy = threading.Lock()  # held while a frame is processed
        self._closing = threading.Event()
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
        self._outputs.publish_info(Header(stamp=self.get_clock().now().to_msg()), self._frame_settings)

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

        self._outputs.create(
            self.create_lifecycle_publisher,
            config,
            depth=int(self.get_parameter("publisher_depth").value),
            reliable=self.get_parameter("publisher_reliability").value == "reliable",
        )
        self.get_logger().info(
            f"loaded {config.name} ({config.backbone}, tasks {sorted(config.tasks)}) on {predictor.device}"
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
        if self._inference_thread is None:
            # One thread for the node's life: glibc gives each new thread that allocates its own malloc arena
            # and keeps it, so a thread per activation grew the process by ~8 MB per lifecycle cycle.
            self._inference_thread = threading.Thread(
                target=self._inference_loop, name="mcn_inference", daemon=True
            )
            self._inference_thread.start()
        self.get_logger().info(f"active: listening on {image_topic}")

    def _stop_inputs(self) -> None:
        """Stop inference (after the frame in flight) and destroy the subscriptions."""
        self._running.clear()
        with self._busy:  # the frame in flight is done; no other starts while _running is clear
            pass
        for subscription in self._image_subscriptions:
            self.destroy_subscription(subscription)
        self._image_subscriptions.clear()
        self._frame_slot.clear()  # after the subscriptions: no frame can arrive to wait for the next activate
        self._frame_stats.stop_listening()

    def _teardown(self) -> None:
        """Back to the unconfigured state from anywhere: inputs, outputs, model, per-model state."""
        self._stop_inputs()
        self._outputs.destroy(self.destroy_lifecycle_publisher)
        self._computed_tasks = frozenset()
        self._last_error = ""
        if self._predictor is None:
            return
        on_cuda = str(self._predictor.device).startswith("cuda")
        self._predictor = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()
        release_freed_memory()

    def _resolve(self, topic: str) -> str:
        """Fully qualified (possibly remapped) topic name, so that '<image>/compressed' follows remaps."""
        resolve = getattr(self, "resolve_topic_name", None)
        return str(resolve(topic)) if resolve is not None else topic

    # -- hot path -----------------------------------------------------------------------------------------
    def _on_image(self, message: Image | CompressedImage, info: Any, compressed: bool) -> None:
        now = monotonic()
        self._frame_stats.arrived(now, info, stream=compressed)
        self._frame_slot.put(Frame(message, compressed, now))

    def destroy_node(self) -> None:
        """Stop inference and end the inference thread, then destroy the node."""
        self._stop_inputs()
        self._closing.set()
        if self._inference_thread is not None:
            self._inference_thread.join(timeout=10.0)
        super().destroy_node()

    def _inference_loop(self) -> None:
        while not self._closing.is_set():
            if not self._running.wait(timeout=0.1):
                continue
            frame = self._frame_slot.take(timeout=0.1)
            if frame is None:
                continue
            with self._busy:
                if self._running.is_set():
                    self._run_frame(frame)
                else:  # deactivating: the frame is given up
                    self._frame_slot.give_up(frame)

    def _run_frame(self, frame: Frame) -> None:
        """Process one frame; a bad frame or a failed inference is counted and logged, never raised."""
        try:
            self._process(frame)
        except ImageError as error:
            self._frame_stats.reject(monotonic())
            self._last_error = f"bad frame: {error}"
            self.get_logger().warning(f"frame skipped: {error}", throttle_duration_sec=THROTTLE_S)
        except Exception as error:  # the node keeps serving whatever one frame does
            if not self.context.ok():  # Ctrl-C shut the context down under the frame: not its fault
                return
            self._frame_stats.reject(monotonic())
            self._last_error = f"inference failed: {error!r}"
            self.get_logger().error(
                f"frame skipped, inference failed: {error!r}", throttle_duration_sec=THROTTLE_S
            )

    def _process(self, frame: Frame) -> None:
        started = monotonic()
        settings = self._frame_settings
        predictor = self._predictor
        if predictor is None:  # cleaned up while the frame waited
            self._frame_slot.give_up(frame)
            return
        tasks = self._outputs.wanted_tasks(settings, predictor.tasks)
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
        self._outputs.publish(header, pixels, color_order, results, settings)
        now = monotonic()
        self._frame_stats.finished(now, now - frame.received, self._stamp_age(header), now - started)

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
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
