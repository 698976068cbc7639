"""Every parameter of the mcn_ros node, once: type, default, range or choices, description, when it applies.

The node declares its parameters from :data:`PARAMETERS` (:func:`descriptor` makes an entry's rclpy
descriptor), refuses changes for the reasons :func:`refusal` gives and reads its per-frame settings with
:func:`frame_settings`. ``config/mcn.yaml`` lists the same names with the same defaults in the same order
(test/test_parameters.py checks it).

The table is plain dataclasses: it reads without rclpy, which only :func:`descriptor` imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from mcn_ros.model.config import TASKS
from mcn_ros.model.device import is_device_name
from mcn_ros.ros.camera_names import check_camera_names
from mcn_ros.ros.images import DEFAULT_MAX_PIXELS
from mcn_ros.typed_config import build

if TYPE_CHECKING:
    from rcl_interfaces.msg import ParameterDescriptor


class Applies(Enum):
    """When a parameter takes effect."""

    CONFIGURE = "configure"  # on the configure transition; changes while configured are refused
    RUN_TIME = "run time"  # from the next frame on
    START_UP = "start-up"  # once, when the node starts; read-only afterwards


#: A parameter's ROS type, named as in rcl_interfaces/ParameterType (PARAMETER_<TYPE>, lower case).
ParameterType = Literal["bool", "integer", "double", "string", "integer_array", "string_array"]
ParameterValue = bool | int | float | str | tuple[int, ...] | tuple[str, ...]


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter.

    ``value_range`` (inclusive) bounds an integer or double parameter, ``choices`` a string one; ``check``
    gives the reason a value is invalid (None when it is valid) where neither says enough.
    """

    name: str
    type: ParameterType
    default: ParameterValue
    applies: Applies
    description: str
    value_range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        # rclpy declares a parameter with its default's type: a double needs a float default
        declared_as_int = self.type == "double" and not isinstance(self.default, float)
        if not _has_type(self.default, self.type) or declared_as_int:
            raise TypeError(f"parameter {self.name}: default {self.default!r} is not of type {self.type}")
        if self.value_range is not None and self.type not in ("integer", "double"):
            raise TypeError(f"parameter {self.name}: only integer and double parameters have a range")
        if self.choices and self.type != "string":
            raise TypeError(f"parameter {self.name}: only string parameters have choices")
        problem = invalid_value(self, self.default)
        if problem is not None:
            raise ValueError(f"parameter {self.name}: invalid default: {problem}")

    @property
    def read_only(self) -> bool:
        return self.applies is Applies.START_UP

    @property
    def full_description(self) -> str:
        """The description with when the parameter applies, as ``ros2 param describe`` shows it."""
        when = "start-up, read-only" if self.read_only else self.applies.value
        return f"{self.description} ({when})."

    def declared_default(self) -> bool | int | float | str | list[int] | list[str]:
        """The default as rclpy declares it (arrays as lists)."""
        if isinstance(self.default, tuple):
            return list(self.default)  # type: ignore[return-value]  # tuple[int, ...] -> list[int]
        return self.default


def _has_type(value: object, kind: ParameterType) -> bool:
    if kind.endswith("_array"):  # a list, a tuple, or the array.array rclpy gives for integer arrays
        if not isinstance(value, Sequence) or isinstance(value, str):
            return False
        item_kind: ParameterType = "integer" if kind == "integer_array" else "string"
        return all(_has_type(v, item_kind) for v in value)
    if isinstance(value, bool):  # bool is an int in Python, not in ROS
        return kind == "bool"
    if kind == "double":  # an integer too (`ros2 param set ... 1`, `-p x:=1`): the node sets it as a double
        return isinstance(value, (float, int))
    python_type = {"bool": bool, "integer": int, "string": str}[kind]
    return isinstance(value, python_type)


def _check_device(value: Any) -> str | None:
    return None if is_device_name(str(value)) else "device must be auto, cpu or cuda[:N]"


def _check_input_size(value: Any) -> str | None:
    """[0, 0], or [height, width] as the model config takes them (multiples of 32, at least 32)."""
    size = list(value)
    if size == [0, 0] or (len(size) == 2 and all(side >= 32 and side % 32 == 0 for side in size)):
        return None
    return f"input_size must be [height, width], multiples of 32 (at least 32), or [0, 0]; got {size}"


def _check_tasks(value: Any) -> str | None:
    unknown = sorted(set(value or []) - set(TASKS))
    return f"unknown task(s) {unknown}; known tasks: {list(TASKS)}" if unknown else None


def invalid_value(spec: ParameterSpec, value: Any) -> str | None:
    """Why ``value`` is not a valid value of ``spec`` (its type, range, choices, check), or None."""
    if not _has_type(value, spec.type):
        return f"{spec.name} must be of type {spec.type}, got {value!r}"
    if spec.value_range is not None:
        low, high = spec.value_range
        if not low <= value <= high:
            return f"{spec.name} must be in [{low}, {high}], got {value}"
    if spec.choices and value not in spec.choices:
        return f"{spec.name} must be one of {spec.choices}"
    return spec.check(value) if spec.check is not None else None


IMAGE_QOS = ("sensor_data", "reliable")
#: raw and compressed as image_transport names them (a subscriber takes one transport); both: each camera's
#: two topics, for rigs whose cameras publish one or the other.
IMAGE_TRANSPORTS = ("raw", "compressed", "both")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # mcn_ros.model.precision.PRECISIONS, without torch
BACKEND_CHOICES = ("torch", "onnxruntime")  # mcn_ros.model.backends.BACKENDS, without importing torch here
PUBLISHER_RELIABILITY = ("reliable", "best_effort")
#: mcn_ros.model.decode.SEGMENTATION_RESAMPLING, without importing torch here.
SEGMENTATION_RESAMPLING = ("nearest", "bilinear")
CONFIGURE, RUN_TIME, START_UP = Applies.CONFIGURE, Applies.RUN_TIME, Applies.START_UP

#: The node's parameters in the order of config/mcn.yaml.
PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("weights", "string", "", CONFIGURE, "Path of the .safetensors weights file"),
    ParameterSpec("device", "string", "auto", CONFIGURE, "auto, cpu or cuda:N", check=_check_device),
    ParameterSpec("precision", "string", "fp32", CONFIGURE,
                  f"One of {PRECISIONS}: fp16/bf16 autocast on a CUDA GPU that computes it natively (bf16: "
                  "compute capability 8.0 or newer); bf16 also on a CPU with avx512_bf16 "
                  "or amx_bf16; int8 with backend onnxruntime on a CPU with VNNI or AMX, from the graph of "
                  "int8_graph (elsewhere fp32, with a warning)", choices=PRECISIONS),
    ParameterSpec("int8_graph", "string", "", CONFIGURE,
                  "precision int8: the graph from python -m mcn_ros.model.quantize; empty = the weights' "
                  "own, <weights name>.int8.onnx beside them"),
    ParameterSpec("backend", "string", "torch", CONFIGURE,
                  f"Inference backend, one of {BACKEND_CHOICES} (onnxruntime: CPU only, optional package)",
                  choices=BACKEND_CHOICES),
    ParameterSpec("cuda_graphs", "bool", False, CONFIGURE,
                  "Replay the forward from CUDA graphs (CUDA, backend torch; not with deformable convs): "
                  "the first frame of each shape captures"),
    ParameterSpec("torch_compile", "bool", False, CONFIGURE,
                  "Compile the torch forward with torch.compile (inductor; a C++ compiler on the CPU): each "
                  "new input shape compiles first, seconds; forward 1.13-1.16x faster in bf16 with AMX"),
    ParameterSpec("rect_input", "bool", True, CONFIGURE,
                  "Camera-shaped network input (multiples of 32 at the input_size scale); false: input_size"),
    ParameterSpec("input_size", "integer_array", (0, 0), CONFIGURE,
                  "Network input [height, width], multiples of 32; [0, 0] = the weights' own",
                  check=_check_input_size),
    ParameterSpec("tasks", "string_array", TASKS, RUN_TIME, f"Enabled tasks, a subset of {list(TASKS)}",
                  check=_check_tasks),
    ParameterSpec("score_threshold", "double", 0.3, RUN_TIME, "Minimum detection score",
                  value_range=(0.0, 1.0)),
    ParameterSpec("pose_score_threshold", "double", 0.3, RUN_TIME, "Minimum person score for poses",
                  value_range=(0.0, 1.0)),
    ParameterSpec("keypoint_threshold", "double", 0.1, RUN_TIME,
                  "Keypoints under this score are published with valid=false", value_range=(0.0, 1.0)),
    ParameterSpec("max_detections", "integer", 100, RUN_TIME, "Most detections per image",
                  value_range=(1, 1000)),
    ParameterSpec("flip_test", "bool", False, RUN_TIME, "Average with the mirrored image"),
    ParameterSpec("segmentation_resampling", "string", "nearest", RUN_TIME,
                  f"Segmentation to image pixels, one of {SEGMENTATION_RESAMPLING} (bilinear: smoother class "
                  "boundaries, a few ms more per frame)", choices=SEGMENTATION_RESAMPLING),
    ParameterSpec("max_image_pixels", "integer", DEFAULT_MAX_PIXELS, RUN_TIME, "Larger frames are refused",
                  value_range=(1, 1 << 30)),
    ParameterSpec("image_transport", "string", "raw", CONFIGURE,
                  f"How every camera's frames arrive, one of {IMAGE_TRANSPORTS}: raw on <image> "
                  "(sensor_msgs/Image), compressed on <image>/compressed (CompressedImage, JPEG or PNG), "
                  "both (for cameras that publish one or the other: one that publishes both is run twice)",
                  choices=IMAGE_TRANSPORTS),
    ParameterSpec("cameras", "string_array", (), CONFIGURE,
                  "Camera names: each listens on <name>/image and publishes under ~/<name>/; empty = one "
                  "camera on image", check=check_camera_names),
    ParameterSpec("batch_timeout_ms", "double", 10.0, RUN_TIME,
                  "Longest wait for the other cameras' frames once one is waiting",
                  value_range=(0.0, 1000.0)),
    ParameterSpec("max_batch_size", "integer", 0, RUN_TIME,
                  "Most camera frames in one forward pass; 0 = all cameras, 1 = one at a time",
                  value_range=(0, 64)),
    ParameterSpec("image_qos", "string", "sensor_data", CONFIGURE, f"Subscription QoS, one of {IMAGE_QOS}",
                  choices=IMAGE_QOS),
    ParameterSpec("publisher_reliability", "string", "reliable", CONFIGURE,
                  f"Publisher reliability, one of {PUBLISHER_RELIABILITY}", choices=PUBLISHER_RELIABILITY),
    ParameterSpec("publisher_depth", "integer", 5, CONFIGURE, "Publisher history depth",
                  value_range=(1, 100)),
    ParameterSpec("autostart", "bool", False, START_UP,
                  "Configure and activate at start-up (no lifecycle manager)"),
    ParameterSpec("diagnostics_period", "double", 1.0, START_UP, "Seconds between /diagnostics messages",
                  value_range=(0.1, 60.0)),
    ParameterSpec("rate_warn_tolerance", "double", 0.2, RUN_TIME,
                  "/diagnostics warns when frames are processed more slowly than sent, or rejected, by more "
                  "than this fraction of the input rate", value_range=(0.0, 1.0)),
)  # fmt: skip

BY_NAME: dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}
#: Double parameters that can be set: an integer given for one is accepted and set as its float (the node's
#: pre-set callback, and once at start-up); a read-only one keeps the integer, read through float().
SETTABLE_DOUBLES: frozenset[str] = frozenset(
    spec.name for spec in PARAMETERS if spec.type == "double" and not spec.read_only
)


def start_up_problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with the values the node starts with (its parameter files and ``-p`` overrides)."""
    problems = []
    for spec in PARAMETERS:
        problem = invalid_value(spec, values[spec.name])
        if problem is not None:
            problems.append(problem)
    return problems


#: Parameters that were removed, with what replaces them.
REMOVED = {"half": "replaced by precision (half:=true was precision:=fp16)"}


#: rclpy's QoS override parameters (``qos_overrides.<topic>.publisher|subscription.<policy>``): declared with
#: the publishers (on configure) and subscriptions (on activate) that take them.
QOS_OVERRIDES_PREFIX = "qos_overrides."


def _undeclared(given: Iterable[str], declared: Iterable[str], qos_overrides: bool) -> list[str]:
    """The ``given`` names no ``declared`` one takes, sorted: the ``qos_overrides.*`` ones, or the others."""
    known = set(declared)
    return sorted(n for n in set(given) - known if n.startswith(QOS_OVERRIDES_PREFIX) == qos_overrides)


def unknown_names(given: Iterable[str], declared: Iterable[str]) -> list[str]:
    """The ``given`` parameter names that no ``declared`` one takes, sorted; ``qos_overrides.*`` are left
    out (:func:`unused_qos_overrides` checks them once the node is active)."""
    return _undeclared(given, declared, qos_overrides=False)


def unused_qos_overrides(given: Iterable[str], declared: Iterable[str]) -> str | None:
    """A warning naming the ``given`` ``qos_overrides.*`` values that no publisher or subscription of the
    active node took (a topic or policy misspelt, a task the weights lack), or None."""
    unused = _undeclared(given, declared, qos_overrides=True)
    if not unused:
        return None
    return (
        f"ignoring QoS overrides that match none of this node's publishers and subscriptions: "
        f"{', '.join(unused)} (names are qos_overrides.<fully qualified topic>.publisher|subscription."
        f"<history|depth|reliability>)"
    )


def unknown_parameters(given: Iterable[str], declared: Iterable[str]) -> str | None:
    """A warning naming the ``given`` parameter values (files, ``-p``) that no declared parameter takes, or
    None (:func:`unknown_names`). rclpy ignores them silently, so a typo or a removed name would otherwise
    go unnoticed."""
    unknown = unknown_names(given, declared)
    if not unknown:
        return None
    named = ", ".join(f"{n} ({REMOVED[n]})" if n in REMOVED else n for n in unknown)
    return f"ignoring values for parameters this node does not have: {named}"


def refusal(name: str, value: Any, *, configured: bool, active: bool = True) -> str | None:
    """Why setting parameter ``name`` to ``value`` now is refused, or None when it is accepted.

    ``configured``: a model is loaded, so configure-time parameters are fixed; ``active``: the node is active
    too (the way back to unconfigured starts with deactivate). Names not in the table (rclpy's own, such as
    use_sim_time) are left to rclpy.
    """
    spec = BY_NAME.get(name)
    if spec is None:
        return None
    if spec.read_only:
        return f"{name} is read-only: it is read once at start-up"
    if spec.applies is Applies.CONFIGURE and configured:
        return f"{name} takes effect on configure: {'deactivate and ' if active else ''}clean up first"
    return invalid_value(spec, value)


def descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """The rclpy descriptor of ``spec``: description, read-only flag, range.

    Dynamically typed, so that a value of the wrong type reaches :func:`refusal`, which names the parameter
    and the type it wants, instead of rclpy's "Wrong parameter type, expected '3' got '4'".
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    described = ParameterDescriptor(
        description=spec.full_description, read_only=spec.read_only, dynamic_typing=True
    )
    if spec.value_range is not None:
        low, high = spec.value_range
        if spec.type == "integer":
            described.integer_range = [IntegerRange(from_value=int(low), to_value=int(high))]
        else:
            described.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
    return described


@dataclass(frozen=True)
class FrameSettings:
    """The run-time parameters the inference thread reads once per frame (replaced whole on every change)."""

    tasks: frozenset[str]
    score_threshold: float
    pose_score_threshold: float
    keypoint_threshold: float
    max_detections: int
    flip_test: bool
    segmentation_resampling: str
    max_image_pixels: int
    batch_timeout_ms: float
    max_batch_size: int


def frame_settings(values: Mapping[str, Any]) -> FrameSettings:
    """The per-frame settings from parameter values by name (the one place that builds them), validated by
    the same mechanism as the model and training settings (:func:`mcn_ros.typed_config.build`)."""
    names = [field.name for field in fields(FrameSettings)]
    return build(FrameSettings, {name: values[name] for name in names}, where="parameters")
