"""The mcn_ros lifecycle node: camera images in; detections, poses and segmentation out.

Thin by design: convert the images (images.py), one call of the model runtime (Predictor) for the frames of
the cameras waiting, publish each camera's results (outputs.py). Inference runs on its own thread behind one
latest-frame slot per camera (batching.py), so the executor is never blocked and frames never queue up.
Run it with

    python -m mcn_ros.ros.node --ros-args --params-file config/mcn.yaml -p weights:=model.safetensors
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.subscription import Subscription
from rclpy.utilities import remove_ros_args

try:  # rclpy without it (older than Humble's) keeps its own signal handlers: no final status on a signal
    from rclpy.signals import SignalHandlerOptions
except ImportError:  # pragma: no cover
    SignalHandlerOptions = None  # type: ignore[assignment,misc]
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from mcn_ros.model.color_order import to_rgb
from mcn_ros.ros import diagnostics
from mcn_ros.ros.batching import CameraSlots
from mcn_ros.ros.cameras import Camera
from mcn_ros.ros.fastdds import use_shipped_profile
from mcn_ros.ros.frames import Frame, monotonic
from mcn_ros.ros.images import ImageError, compressed_to_array, image_to_array
from mcn_ros.ros.memory import release_freed_memory
from mcn_ros.ros.parameters import (
    BY_NAME,
    PARAMETERS,
    SETTABLE_DOUBLES,
    FrameSettings,
    descriptor,
    frame_settings,
    invalid_value,
    refusal,
    start_up_problems,
    unknown_parameters,
    unused_qos_overrides,
)

if TYPE_CHECKING:  # the model runtime (torch) loads on configure, not on import
    import numpy as np

    from mcn_ros.model.predictor import Predictor

#: A camera's frame decoded for the model: (camera, frame, pixels, color order).
Decoded = tuple[Camera, Frame, "np.ndarray", str]

T = TypeVar("T")
THROTTLE_S = 5.0
#: rclpy hands a two-argument subscription callback the MessageInfo since Iron (Jazzy: 7.x); Humble's (3.x)
#: calls every callback with the message alone.
WITH_MESSAGE_INFO = hasattr(Subscription, "CallbackType")
#: rclpy calls post-set-parameters callbacks since Iron; on Humble the set-callback applies the values.
POST_SET_CALLBACKS = hasattr(LifecycleNode, "add_post_set_parameters_callback")
#: While inactive the inference thread waits this long for a job at a time (activate wakes it at once).
INACTIVE_WAIT_S = 0.1


def _as_doubles(parameters: list[Parameter[Any]]) -> list[Parameter[Any]]:
    """``parameters`` with an integer given for a double parameter (``ros2 param set ... 1``, ``-p x:=1``)
    turned into that double; the others as they are."""
    return [
        Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
        if p.name in SETTABLE_DOUBLES and p.type_ == Parameter.Type.INTEGER
        else p
        for p in parameters
    ]


class StartupError(ValueError):
    """The node cannot start with the parameter values it was given."""


class McnNode(LifecycleNode):
    """Managed node: configure loads the model, activate subscribes and publishes, cleanup frees it."""

    def __init__(self, node_name: str = "mcn_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # The state first: a start refused for its parameters still goes through the shutdown transition.
        self._predictor: Predictor | None = None
        self._cpu_bf16 = False  # the CPU multiplies bf16 natively (known after configure; a speed hint)
        self._cpu_amx_bf16 = False  # ... with AMX tiles
        self._logged_notes: dict[str, str] = {}  # parameter -> its note last logged (_forward_option_states)
        self._cpu_int8 = False  # precision:=int8 would run here (known after configure; a speed hint)
        self._torch_threads: int | None = None  # torch's thread count before the first configure
        self._cameras: dict[str, Camera] = {"": Camera("")}  # made anew on configure from `cameras`
        self._frame_slots: CameraSlots[Frame] = CameraSlots([""])
        self._batch_sizes: Counter[int] = Counter()
        self._inference_thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._running = threading.Event()  # active: frames are taken and processed
        self._busy = threading.Lock()  # held while a frame is processed
        self._closing = threading.Event()
        self._last_error = ""

        self._declare_parameters()
        # Every declared name: the empty prefix matches all (Humble's rclpy has no list_parameters).
        unknown = unknown_parameters(self._given_parameters, self.get_parameters_by_prefix(""))
        if unknown is not None:
            self.get_logger().warning(unknown)
        self._frame_settings = self._read_frame_settings()
        if hasattr(self, "add_pre_set_parameters_callback"):  # not on Humble: integers stay integers there
            self.add_pre_set_parameters_callback(_as_doubles)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if POST_SET_CALLBACKS:
            self.add_post_set_parameters_callback(self._after_set_parameters)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics_period").value)
        self._diagnostics_timer = self.create_timer(period, self._publish_diagnostics)

    #: The shutdown transition has run (the lifecycle state is "finalized").
    finalized = False

    @property
    def configured(self) -> bool:
        """A model is loaded (inactive or active)."""
        return self._predictor is not None

    # -- parameters (declared from the table in parameters.py) --------------------------------------------
    def _declare_parameters(self) -> None:
        """Declare the table's parameters; values from parameter files and ``-p`` that the table refuses stop
        the start with :class:`StartupError` naming each (they are not checked by a set-callback yet)."""
        # An empty array has no type (and a parameter file's `[]` is dropped by rcl's parser): such parameters
        # are declared unset and set to their typed empty default unless a value was given.
        empty_arrays = {spec.name for spec in PARAMETERS if spec.type == "string_array" and not spec.default}
        declared = [
            (s.name, None if s.name in empty_arrays else s.declared_default(), descriptor(s))
            for s in PARAMETERS
        ]
        try:
            self.declare_parameters("", declared)
        except (InvalidParameterTypeException, InvalidParameterValueException) as error:
            # rclpy's own text (a range from the descriptor) wraps the reason in its boilerplate: name the
            # given values the table refuses, as a set-callback's refusal does.
            problems = [
                problem
                for name, parameter in sorted(self._given_parameters.items())
                if name in BY_NAME and (problem := invalid_value(BY_NAME[name], parameter.value)) is not None
            ]
            raise StartupError("; ".join(problems) or str(error)) from error
        unset = [name for name in empty_arrays if self.get_parameter(name).value is None]
        self.set_parameters([Parameter(name, Parameter.Type.STRING_ARRAY, []) for name in unset])
        given = [self.get_parameter(name) for name in sorted(SETTABLE_DOUBLES)]
        self.set_parameters(_as_doubles([p for p in given if p.type_ == Parameter.Type.INTEGER]))
        problems = start_up_problems({spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS})
        if problems:
            raise StartupError("; ".join(problems))

    def _read_frame_settings(self, accepted: Sequence[Parameter[Any]] = ()) -> FrameSettings:
        """The frame settings from the parameters' values, ``accepted`` ones (not set yet) taking theirs."""
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        values.update({p.name: p.value for p in accepted if p.name in values})
        return frame_settings(values)

    def _on_set_parameters(self, parameters: list[Parameter[Any]]) -> SetParametersResult:
        configured, active = self.configured, self._running.is_set()
        for parameter in parameters:
            reason = refusal(parameter.name, parameter.value, configured=configured, active=active)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        if not POST_SET_CALLBACKS:  # Humble: the values are accepted here, and set right after
            self._after_set_parameters(parameters, accepted=True)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, parameters: list[Parameter[Any]], accepted: bool = False) -> None:
        """The frame settings from the parameters' values now; ``accepted``: ``parameters`` are accepted but
        not set yet (their values are taken from them)."""
        self._frame_settings = self._read_frame_settings(parameters if accepted else ())
        if self._running.is_set() and {p.name for p in parameters} & {
            "score_threshold",
            "keypoint_threshold",
        }:
            self._publish_info()

    def _publish_info(self) -> None:
        """(Re)publish the latched LabelInfo and PoseInfo with the current thresholds."""
        header = Header(stamp=self.get_clock().now().to_msg())
        for camera in self._cameras.values():
            camera.outputs.publish_info(header, self._frame_settings)

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
            super().on_deactivate(state)  # back to inactive: the lifecycle publishers stop publishing too
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
        """Stop everything on the way out, from any state, the inference thread included (finalized is
        final: nothing runs on it again)."""
        self._finalize()
        return TransitionCallbackReturn.SUCCESS

    def _finalize(self) -> None:
        self._teardown()
        self._end_inference_thread()
        self._diagnostics_timer.cancel()  # it would report "unconfigured" for good: say finalized, once
        self._publish_diagnostics(final=True)
        # The process may end right after: give the readers a moment to have it (the status was lost when
        # the participant went at once; reliable QoS: acknowledged).
        self._diagnostics_publisher.wait_for_all_acked(Duration(seconds=FINAL_STATUS_WAIT_S))
        self.finalized = True

    def shut_down_on_signal(self) -> None:
        """The shutdown transition, from the state a signal left the node in; where the signal interrupted
        a transition (the state machine is between states, from which none starts), the same steps without
        the state machine, so that the final status still goes out."""
        if self.finalized:
            return
        if self._state_machine.current_state[1] in ("unconfigured", "inactive", "active"):
            self.trigger_shutdown()
        else:
            self._finalize()

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop everything after an error, so that configure can start afresh."""
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        from mcn_ros.model.precision import cpu_amx_bf16, cpu_bf16_native, cpu_flags, cpu_int8_native
        from mcn_ros.model.predictor import Predictor, backend_device
        from mcn_ros.model.quantize import default_int8_path
        from mcn_ros.model.weights import load_weights

        weights = str(self.get_parameter("weights").value)
        if not weights:
            raise ValueError(
                "parameter 'weights' is empty: set it to a .safetensors file (launch argument weights:=PATH; "
                "to try the node, the repository's demo/mcn_demo.safetensors)"
            )
        backend = str(self.get_parameter("backend").value)
        device = backend_device(str(self.get_parameter("device").value), backend)  # auto: CPU for onnxruntime
        self.get_logger().info(f"configuring: loading {weights} ({backend} on {device})")  # can take seconds

        def load() -> Any:
            self._torch_threads_as_started()  # for loading, and the forward of a torch backend
            return load_weights(weights, device=device)

        try:
            model, config, _ = self._on_inference_thread(load)
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
        precision = str(self.get_parameter("precision").value)
        rect = bool(self.get_parameter("rect_input").value)
        graphs = bool(self.get_parameter("cuda_graphs").value)
        compiled = bool(self.get_parameter("torch_compile").value)

        int8_graph = str(self.get_parameter("int8_graph").value) or default_int8_path(weights)

        def make_predictor() -> Predictor:
            import torch

            with warnings.catch_warnings():  # a precision fallback is logged below, once, in the node's log
                warnings.simplefilter("ignore", UserWarning)
                predictor = Predictor(
                    model, config, device=device, precision=precision, rect=rect, backend=backend,
                    int8_graph=int8_graph, cuda_graphs=graphs, torch_compile=compiled,
                )  # fmt: skip
            if predictor.backend == "onnxruntime":
                # ONNX Runtime runs the forward on its own threads (as many as torch had); torch does only
                # the steps around it. On one thread no OpenMP workers spin after those steps, taking the
                # cores from ONNX Runtime's pool, the executor and DDS: in int8 the node's overhead_ratio
                # fell from 0.152 to 0.116 and its processing besides the model runtime's call from 2.86 to
                # 1.06 ms on 2 cores (bench/results/node_cpu_int8.md and its record before); in a plain
                # script, with no one to share the cores, one thread cost about a millisecond of decoding,
                # so Predictor itself keeps torch's count. Cleanup and the next configure restore it.
                torch.set_num_threads(1)
            return predictor

        predictor = self._on_inference_thread(make_predictor)
        self._predictor = predictor
        flags = cpu_flags()  # /proc/cpuinfo read once for the three speed hints
        self._cpu_bf16 = backend == "torch" and cpu_bf16_native(flags)  # what precision:=bf16 would use here
        self._cpu_amx_bf16 = self._cpu_bf16 and cpu_amx_bf16(flags)
        has_onnxruntime = find_spec("onnxruntime") is not None
        self._cpu_int8 = device.type == "cpu" and cpu_int8_native(flags) and has_onnxruntime

        names = [str(name) for name in self.get_parameter("cameras").value] or [""]
        self._cameras = {name: Camera(name) for name in names}
        remapped = self._resolve("image")
        if names != [""] and remapped != self._resolve("image", only_expand=True):
            cameras = ", ".join(f"{name}/image" for name in names)
            self.get_logger().warning(
                f"the remapping of 'image' (to {remapped}) is unused: with named cameras each listens on "
                f"<name>/image; remap those ({cameras})"
            )
        # With the cameras, not on activate: the diagnostics timer reads both from configure on, and a slot's
        # drop count must last as long as its camera's other counters (deactivate/activate keeps them).
        self._frame_slots = CameraSlots(names)
        self._batch_sizes.clear()
        for index, camera in enumerate(self._cameras.values()):
            camera.outputs.create(
                self.create_lifecycle_publisher,
                config,
                depth=int(self.get_parameter("publisher_depth").value),
                reliable=self.get_parameter("publisher_reliability").value == "reliable",
                info=index == 0,  # the latched label and pose info are the node's, once
                overridden=lambda topic: self._qos_overridden(topic, "publisher"),
            )
        if predictor.precision.note is not None:
            self.get_logger().warning(f"parameter precision: {predictor.precision.note}")
        self._logged_notes.clear()
        self._forward_option_states()  # logs why cuda_graphs or torch_compile, if asked for, are not used
        self.get_logger().info(
            f"loaded {config.name} ({config.backbone}, tasks {sorted(config.tasks)}) on {predictor.device}, "
            f"{predictor.precision.name}"
        )

    def _activate(self) -> None:
        self._publish_info()
        # Sensor data as in REP-2003, but depth 1: only the newest frame is ever wanted.
        sensor_data = self.get_parameter("image_qos").value == "sensor_data"
        reliability = ReliabilityPolicy.BEST_EFFORT if sensor_data else ReliabilityPolicy.RELIABLE
        # One transport unless asked for both: an image_transport publisher sends each frame on both topics.
        transport = str(self.get_parameter("image_transport").value)
        inputs: list[tuple[Any, str, bool]] = []  # (message type, topic suffix, compressed)
        if transport in ("raw", "both"):
            inputs.append((Image, "", False))
        if transport in ("compressed", "both"):
            inputs.append((CompressedImage, "/compressed", True))
        topics = []
        for camera in self._cameras.values():
            for message_type, suffix, compressed in inputs:
                topic = self._resolve(camera.image_topic) + suffix
                topics.append(topic)
                # A two-argument callback gets rclpy's MessageInfo (a dict on Jazzy and Kilted; not on
                # Humble): its sequence numbers tell the frames lost before the node.
                on_image = self._image_callback(camera, compressed)
                camera.subscriptions.append(
                    self.create_subscription(  # a profile each: rclpy writes the topic's overrides into it
                        message_type,
                        topic,
                        on_image,
                        QoSProfile(depth=1, reliability=reliability),
                        qos_overriding_options=(
                            QoSOverridingOptions.with_default_policies()
                            if self._qos_overridden(topic, "subscription")
                            else None
                        ),
                    )
                )
            camera.stats.start_listening(monotonic())
        self._running.set()
        self._start_inference_thread()
        self._jobs.put((lambda: None, Future()))  # wakes the thread from its inactive wait for jobs now
        self.get_logger().info(f"active: listening on {', '.join(topics)}")
        unused = unused_qos_overrides(self._given_parameters, self.get_parameters_by_prefix(""))
        if unused is not None:
            self.get_logger().warning(unused, once=True)

    def _stop_inputs(self) -> None:
        """Stop inference (after the frame in flight) and destroy the subscriptions."""
        self._running.clear()
        with self._busy:  # the frame in flight is done; no other starts while _running is clear
            pass
        for camera in self._cameras.values():
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.subscriptions.clear()
            camera.stats.stop_listening()
        self._frame_slots.clear()  # after the subscriptions: no frame arrives to wait for the next activate

    def _teardown(self) -> None:
        """Back to the unconfigured state from anywhere: inputs, outputs, model, per-model state."""
        self._stop_inputs()
        for camera in self._cameras.values():
            camera.outputs.destroy(self.destroy_lifecycle_publisher)
            camera.computed_tasks = frozenset()
            camera.last_error = ""
        self._last_error = ""
        if self._predictor is None:
            return
        on_cuda = str(self._predictor.device).startswith("cuda")
        self._predictor = None
        if not self._closing.is_set():  # the thread count is process-wide: not left at one beside no model
            self._on_inference_thread(self._torch_threads_as_started)
        if on_cuda:
            import torch

            torch.cuda.empty_cache()
        release_freed_memory()

    def _torch_threads_as_started(self) -> None:
        """On the inference thread: torch's thread count as it was before the node's first configure (a
        configure for the onnxruntime backend sets it to one)."""
        import torch

        if self._torch_threads is None:
            self._torch_threads = torch.get_num_threads()
        torch.set_num_threads(self._torch_threads)

    def _qos_overridden(self, topic: str, entity: str) -> bool:
        """Whether parameter files or -p gave ``qos_overrides.<topic>.<entity>.*`` values (``entity``:
        publisher or subscription) for the topic, resolved as rclpy names it."""
        prefix = f"qos_overrides.{self._resolve(topic)}.{entity}."
        return any(name.startswith(prefix) for name in self._given_parameters)

    @property
    def _given_parameters(self) -> dict[str, Parameter[Any]]:
        """The values parameter files and -p gave, by name. rclpy keeps them in a private dict (no public
        accessor, Humble to Kilted); without it the checks that read them find nothing."""
        return dict(getattr(self, "_parameter_overrides", {}))

    def _resolve(self, topic: str, only_expand: bool = False) -> str:
        """Fully qualified (and remapped, unless ``only_expand``) topic name, so that '<image>/compressed'
        follows remaps; ``topic`` itself where rclpy cannot resolve names."""
        resolve = getattr(self, "resolve_topic_name", None)
        return str(resolve(topic, only_expand=only_expand)) if resolve is not None else topic

    # -- hot path -----------------------------------------------------------------------------------------
    def _image_callback(self, camera: Camera, compressed: bool) -> Any:
        def on_image(message: Image | CompressedImage, info: Any) -> None:
            now = monotonic()
            camera.stats.arrived(now, info, stream=compressed)
            self._frame_slots.put(camera.name, Frame(message, compressed, now))

        if WITH_MESSAGE_INFO:
            return on_image
        return lambda message: on_image(message, None)  # Humble: losses are not counted (loss_counting says)

    def destroy_node(self) -> None:
        """Stop inference and end the inference thread, then destroy the node."""
        self._stop_inputs()
        self._end_inference_thread()
        super().destroy_node()

    def _end_inference_thread(self) -> None:
        self._closing.set()
        self._jobs.put((lambda: None, Future()))  # wakes it from an inactive wait for jobs
        if self._inference_thread is not None:
            self._inference_thread.join(timeout=10.0)

    def _start_inference_thread(self) -> None:
        if self._inference_thread is None:
            # One thread for the node's life: glibc gives each new thread that allocates its own malloc arena
            # and keeps it, so a thread per activation grew the process by ~8 MB per lifecycle cycle.
            self._inference_thread = threading.Thread(
                target=self._inference_loop, name="mcn_inference", daemon=True
            )
            self._inference_thread.start()

    def _on_inference_thread(self, job: Callable[[], T]) -> T:
        """Run ``job`` (model loading) on the inference thread; return its result or raise its exception.

        All of the node's torch work runs on that one thread: PyTorch gives each thread that enters a
        parallel region its own OpenMP team, and with a second team in the process (configure's on the
        executor thread) libgomp's workers slept between regions instead of spinning: ~270 thread wake-ups
        and a tenth more time per forward on 2 cores.
        """
        self._start_inference_thread()
        future: Future[T] = Future()
        self._jobs.put((job, future))
        return future.result()

    def _run_job(self, timeout: float | None) -> None:
        """Run the next job of :meth:`_on_inference_thread`, waiting up to ``timeout`` (None: don't wait)."""
        try:
            job, future = self._jobs.get(timeout=timeout) if timeout else self._jobs.get_nowait()
        except queue.Empty:
            return
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(job())
            except Exception as error:  # handed to the caller, who reports it
                future.set_exception(error)

    def _inference_loop(self) -> None:
        while not self._closing.is_set():
            if not self._running.is_set():
                self._run_job(timeout=INACTIVE_WAIT_S)
                continue
            self._run_job(timeout=None)  # none come while active (lifecycle); never left waiting if one does
            settings = self._frame_settings
            batch = self._frame_slots.take_batch(
                timeout=0.1,
                batch_timeout_s=settings.batch_timeout_ms / 1e3,
                max_size=settings.max_batch_size,
                waits_for=self._computed_camera(settings),
            )
            if not batch:
                continue
            with self._busy:
                if self._running.is_set():
                    self._run_batch(batch)
                else:  # deactivating: the frames are given up
                    for name, frame in batch.items():
                        self._frame_slots.give_up(name, frame)

    def _computed_camera(self, settings: FrameSettings) -> Callable[[str], bool]:
        """Whether a camera's frame would be computed now (a task enabled and listened to): the batch waits
        for no other camera's."""
        predictor = self._predictor
        if predictor is None:
            return lambda name: True
        return lambda name: bool(self._cameras[name].outputs.wanted_tasks(settings, predictor.tasks))

    def _run_batch(self, batch: dict[str, Frame]) -> None:
        """Process one batch; a bad frame or a failed inference is counted and logged, never raised."""
        try:
            self._process_batch(batch, self._frame_settings)  # the settings as they are now, after the wait
        except Exception as error:  # the node keeps serving whatever one batch does
            if not self.context.ok():  # Ctrl-C shut the context down under the frames: not their fault
                return
            self._reject([self._cameras[name] for name in batch], f"inference failed: {error!r}")

    def _reject(self, cameras: Sequence[Camera], reason: str) -> None:
        """Count a frame of each of ``cameras`` as rejected and log ``reason`` (throttled)."""
        now = monotonic()
        for camera in cameras:
            camera.stats.reject(now)
            camera.last_error = reason
        self._last_error = reason
        names = ", ".join(camera.name for camera in cameras if camera.name)
        where = f" ({names})" if names else ""
        self.get_logger().warning(f"frame skipped{where}: {reason}", throttle_duration_sec=THROTTLE_S)

    def _process_batch(self, batch: dict[str, Frame], settings: FrameSettings) -> None:
        """Decode each camera's frame; the frames that want the same tasks go to the model runtime together,
        which runs those of one network input shape (camera-shaped: cameras of one size share it) as one
        batch, so that each camera's results are the model runtime's on its image alone; publish."""
        started = monotonic()
        predictor = self._predictor
        if predictor is None:  # cleaned up while the frames waited
            for name, frame in batch.items():
                self._frame_slots.give_up(name, frame)
            return
        groups: dict[frozenset[str], list[Decoded]] = {}
        for name, frame in batch.items():
            camera = self._cameras[name]
            camera.computed_tasks = camera.outputs.wanted_tasks(settings, predictor.tasks)
            if not camera.computed_tasks:
                camera.stats.idle(monotonic())
                continue
            try:
                decode = compressed_to_array if frame.compressed else image_to_array
                pixels, color_order = decode(frame.message, settings.max_image_pixels)
            except Exception as error:  # this camera's frame alone; the others of the batch go on
                reason = str(error) if isinstance(error, ImageError) else repr(error)  # repr: unforeseen
                self._reject([camera], f"bad frame: {reason}")
                continue
            groups.setdefault(camera.computed_tasks, []).append((camera, frame, pixels, color_order))
        for tasks, members in groups.items():
            self._run_group(predictor, tasks, members, settings, started)

    def _run_group(
        self,
        predictor: Predictor,
        tasks: frozenset[str],
        members: list[Decoded],
        settings: FrameSettings,
        started: float,
    ) -> None:
        """One forward pass for the frames of ``members`` (cameras wanting ``tasks``), then publish each."""
        if len({order for *_, order in members}) > 1:  # the model runtime takes one colour order per call
            members = [(c, f, to_rgb(p, o), "rgb") for c, f, p, o in members]
        inference_started = monotonic()
        try:
            results = predictor.predict(
                [pixels for _, _, pixels, _ in members],
                tasks=tasks,
                color_order=members[0][3],
                score_threshold=settings.score_threshold,
                pose_score_threshold=settings.pose_score_threshold,
                max_detections=settings.max_detections,
                flip_test=settings.flip_test,
                segmentation_resampling=settings.segmentation_resampling,
            )
        except Exception as error:
            if not self.context.ok():  # Ctrl-C shut the context down under the frames: not their fault
                return
            if len(members) == 1:
                self._reject([members[0][0]], f"inference failed: {error!r}")
                return
            for member in members:  # find the frame that fails; the others are still served
                self._run_group(predictor, tasks, [member], settings, started)
            return
        inference_s = monotonic() - inference_started
        # The model runtime runs the images of one network input shape as one forward: count those.
        shapes = Counter(predictor.input_size([pixels.shape[:2]]) for _, _, pixels, _ in members)
        self._batch_sizes.update(shapes.values())
        for (camera, frame, pixels, order), result in zip(members, results, strict=True):
            header = frame.message.header
            try:  # each camera's outputs alone: one that cannot be published leaves the others' to go out
                camera.outputs.publish(header, pixels, order, result, settings)
            except Exception as error:
                if self.context.ok():
                    self._reject([camera], f"publishing failed: {error!r}")
                continue
            now = monotonic()
            camera.stats.finished(
                now, now - frame.received, self._stamp_age(header), now - started, inference_s
            )

    def _stamp_age(self, header: Header) -> float | None:
        """Seconds from the frame's stamp to now on the node's clock; None for an unstamped frame, or while a
        simulated clock has not started (no /clock yet: now is 0)."""
        if header.stamp.sec == 0 and header.stamp.nanosec == 0:
            return None
        now = self.get_clock().now().nanoseconds
        if now == 0:
            return None
        return (now - (header.stamp.sec * 1_000_000_000 + header.stamp.nanosec)) / 1e9

    def _status_prefix(self) -> str:
        """The node's name in its /diagnostics status names, with its namespace ("a/mcn_node"; "mcn_node" at
        the root, as diagnostic_updater names it): two namespaced nodes' statuses stay apart."""
        return self.get_fully_qualified_name().lstrip("/")

    # -- diagnostics --------------------------------------------------------------------------------------
    def _publish_diagnostics(self, final: bool = False) -> None:
        """One status per camera (the unnamed single camera's is the node's "inference" status); with named
        cameras, first one for the node: its level the worst camera's, with the batch sizes used.
        ``final``: the last message of a node shut down, every status STALE."""
        predictor = self._predictor
        statuses = [self._camera_status(camera) for camera in self._cameras.values()]
        if list(self._cameras) != [""]:  # named cameras (one or several): a status of their own each
            level = diagnostics.worst([status[1] for status in statuses])
            if predictor is None:
                message = "unconfigured: no model loaded"
            else:
                message = "active" if self._running.is_set() else "inactive"
                unwell = [
                    camera
                    for (_, camera_level, _, _), camera in zip(statuses, self._cameras, strict=True)
                    if camera_level != diagnostics.OK
                ]
                if unwell:
                    message += f"; not OK: camera {', '.join(unwell)}"
            values = {
                "cameras": ",".join(self._cameras),
                "batch_sizes": ",".join(f"{size}:{n}" for size, n in sorted(self._batch_sizes.items())),
                "device": self._device_name(),
                "last_error": self._last_error,
            }
            statuses.insert(0, (f"{self._status_prefix()}: inference", level, message, values))
        if final:
            finalized = "finalized: the node was shut down and runs nothing more"
            statuses = [(name, diagnostics.STALE, finalized, values) for name, _, _, values in statuses]
        stamp = self.get_clock().now().to_msg()
        array = diagnostics.diagnostic_array(statuses, self._device_name(), stamp)
        self._diagnostics_publisher.publish(array)

    def _forward_option_states(self) -> dict[str, str]:
        """``cuda_graphs`` and ``torch_compile``, each "on", "off", "off: <why>" where it was asked for and is
        not used, or "on (<why not everywhere>)": decoding outside the graphs after its capture failed, inputs
        past the recompile limit run eagerly. Each new note is logged once, here (on configure, and on the
        executor's thread after a frame changed it)."""
        predictor = self._predictor
        if predictor is None:
            return {"cuda_graphs": "off", "torch_compile": "off"}
        # Each note before its flag: a failure on the inference thread sets the flag off, then the note.
        graphs_note, compile_note = predictor.cuda_graphs_note, predictor.torch_compile_note
        options = {
            "cuda_graphs": (predictor.cuda_graphs, graphs_note),
            "torch_compile": (predictor.torch_compile, compile_note),
        }
        states = {}
        for parameter, (on, note) in options.items():
            if note is not None and self._logged_notes.get(parameter) != note:
                self._logged_notes[parameter] = note
                self.get_logger().warning(f"parameter {parameter}: {note}")
            if note is None:
                states[parameter] = "on" if on else "off"
            else:
                states[parameter] = f"on ({note})" if on else f"off: {note}"
        return states

    def _camera_status(self, camera: Camera) -> diagnostics.Status:
        now = monotonic()
        summary = camera.stats.summary(now)
        counts = camera.stats.counts(self._frame_slots.dropped(camera.name))
        predictor = self._predictor
        knobs = diagnostics.Knobs(
            input_size=predictor.config.input_size if predictor is not None else None,
            tasks=sorted(camera.computed_tasks),
            flip_test=self._frame_settings.flip_test,
            device=self._device_name(),
            precision=predictor.precision.name if predictor is not None else "fp32",
            cpu_bf16=self._cpu_bf16,
            cpu_amx_bf16=self._cpu_amx_bf16,
            cpu_int8=self._cpu_int8,
            cuda_graphs=predictor is not None and predictor.cuda_graphs,
            cuda_graphs_possible=predictor is not None and predictor.cuda_graphs_possible,
            omp_spinning=(
                predictor is not None
                and predictor.backend == "torch"
                and predictor.device.type == "cpu"
                and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"
            ),
        )
        level, message = diagnostics.assess(
            summary,
            configured=predictor is not None,
            active=self._running.is_set(),
            tolerance=float(self.get_parameter("rate_warn_tolerance").value),
            knobs=knobs,
            silence_s=camera.stats.silence(now),
            inputs=", ".join(subscription.topic_name for subscription in camera.subscriptions),
            last_error=camera.last_error,
            pending_rate_hz=max(counts.pending, 0) / camera.stats.span(now),
            losses_counted=WITH_MESSAGE_INFO,
        )
        values = diagnostics.status_values(
            summary,
            counts,
            loss_counting=camera.stats.gaps.method(),
            tasks=camera.computed_tasks,
            device=self._device_name(),
            last_error=camera.last_error,
            precision=predictor.precision.name if predictor is not None else "none",
            **self._forward_option_states(),
        )
        label = f"camera {camera.name}" if camera.name else "inference"
        return f"{self._status_prefix()}: {label}", level, message, values

    def _device_name(self) -> str:
        return str(self._predictor.device) if self._predictor is not None else "none"


USAGE = """usage: mcn_node [-h] [--ros-args -p NAME:=VALUE ... --params-file FILE -r image:=TOPIC ...]

The mcn_ros lifecycle node: 2D detection, human pose and semantic segmentation from one network, on the
frames of one camera (image) or several (parameter cameras). Its parameters are described in the package's
config/mcn.yaml (and by `ros2 param describe` while it runs); weights:=FILE is needed to configure. Without
-p autostart:=true it waits for a lifecycle manager (configure, then activate). Usually started with
`ros2 launch mcn_ros mcn.launch.py weights:=FILE`."""


#: Seconds the final /diagnostics status may wait for its readers' acknowledgements.
FINAL_STATUS_WAIT_S = 1.0
#: Seconds the main thread waits for callbacks before it looks at a stop request again.
STOP_POLL_S = 0.2


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point: spin until Ctrl-C or shutdown; ``autostart`` skips the lifecycle manager."""
    argv = list(args) if args is not None else sys.argv
    try:
        if {"-h", "--help"} & set(remove_ros_args(argv)[1:]):
            print(USAGE)
            return 0
        # Before the first DDS participant: camera-sized frames through Fast DDS's shared memory, as the
        # launch file gives it (unless the environment names a profile or another middleware).
        dds_profile = use_shipped_profile()
        if SignalHandlerOptions is None:
            rclpy.init(args=argv)
        else:  # the node's own handlers (below): the context stays valid for the shutdown transition
            rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as error:  # rcl's own argument errors, e.g. a parameter file it cannot parse
        print(f"[mcn_node] error: cannot start: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    stop = threading.Event()  # SIGINT or SIGTERM arrived
    spinning = threading.Event()  # the main thread spins (else it starts: constructs, configures, activates)

    def on_signal(number: int, frame: object) -> None:
        """Stop the spin after its current slice, or interrupt the start (a configure may take long: it
        outlived launch's SIGTERM once), once: a second signal, as `ros2 launch` passes a terminal's Ctrl-C
        on, must not interrupt the shutdown."""
        if not stop.is_set():
            stop.set()
            if not spinning.is_set():
                raise KeyboardInterrupt

    if SignalHandlerOptions is not None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, on_signal)
    try:
        node = McnNode()
    except StartupError as error:
        print(f"[mcn_node] error: invalid parameters: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:  # stopped while starting
        rclpy.try_shutdown()
        return 0
    # One thread: every callback shares the node's one mutually exclusive group (so a second thread could
    # never run beside the first; frames go to the inference thread, configure blocks either way); and rclpy's
    # MultiThreadedExecutor kept its dispatching thread busy while frames were in flight (a fifth of a core
    # taken from the forward on 2 cores, bench/node_cpu.py).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if dds_profile:
        variable, path = next(iter(dds_profile.items()))
        node.get_logger().info(
            f"Fast DDS profile {path} (shared memory sized for camera frames; {variable} chooses another)"
        )
    try:
        if node.get_parameter("autostart").value:
            node.trigger_configure()
            if node.configured:
                node.trigger_activate()
        else:  # a node that says nothing and serves nothing looks broken: say what it waits for
            name = node.get_fully_qualified_name()
            node.get_logger().info(
                f"unconfigured, waiting for a lifecycle manager (ros2 lifecycle set {name} configure, then "
                "activate), or start it with autostart:=true"
            )
        if SignalHandlerOptions is None:
            executor.spin()
        else:
            # Python runs signal handlers on this thread between bytecodes, not while it waits in rcl_wait:
            # the wait is cut into slices, so that a signal takes effect within one.
            spinning.set()
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=STOP_POLL_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A signal that shuts the context down while the executor makes its next wait set surfaces as an
        # RCLError ("the given context is not valid"), not ExternalShutdownException: a stop, not a fault.
        if rclpy.ok():
            raise
    finally:
        # Under `ros2 launch` a terminal's Ctrl-C arrives twice (from the terminal to the process group, and
        # passed on by launch), as under systemd's default KillMode: a second signal must not interrupt the
        # shutdown (it raised KeyboardInterrupt in the inference thread's join).
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        if stop.is_set() and not node.finalized and rclpy.ok():
            # The shutdown transition, as a lifecycle manager's: a lifecycle event for managers and launch,
            # and the final STALE status on /diagnostics (aggregators otherwise wait for their timeout).
            node.get_logger().info("stopping on a signal: shutdown transition")
            try:
                node.shut_down_on_signal()
            except Exception as error:  # the process ends either way: say why there was no final status
                node.get_logger().error(f"shutdown transition failed: {error}")
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
