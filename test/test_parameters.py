"""The node's parameter table (mcn_ros/ros/parameters.py) against config/mcn.yaml and the running node."""

from __future__ import annotations

import array
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from nodetools import PARAMS_FILE, REPO

from mcn_ros.model.config import TASKS
from mcn_ros.ros.parameters import (
    BY_NAME,
    PARAMETERS,
    Applies,
    FrameSettings,
    ParameterSpec,
    frame_settings,
    refusal,
    unknown_parameters,
)


def yaml_parameters() -> dict[str, object]:
    return dict(yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"])


def as_plain(value: object) -> object:
    return list(value) if isinstance(value, (tuple, list, array.array)) else value


def test_parameter_file_lists_the_table_names_defaults_and_order() -> None:
    in_file = yaml_parameters()
    assert list(in_file) == [spec.name for spec in PARAMETERS]
    for spec in PARAMETERS:
        assert in_file[spec.name] == as_plain(spec.default), spec.name
        assert type(in_file[spec.name]) is type(spec.declared_default()), spec.name


def test_parameter_file_comments_say_when_each_parameter_applies() -> None:
    line = re.compile(r"^\s+(\w+):.*#\s*([\w -]+):")
    when = {m.group(1): m.group(2) for m in map(line.match, PARAMS_FILE.read_text().splitlines()) if m}
    assert when == {spec.name: spec.applies.value for spec in PARAMETERS}


def test_the_table_is_read_without_rclpy_or_torch() -> None:
    code = "import sys, mcn_ros.ros.parameters; print(sorted({'rclpy', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_a_bad_table_entry_fails_at_import() -> None:
    with pytest.raises(TypeError, match="not of type double"):
        ParameterSpec("x", "double", 1, Applies.RUN_TIME, "an int default for a double")
    with pytest.raises(ValueError, match="invalid default"):
        ParameterSpec("x", "double", 2.0, Applies.RUN_TIME, "out of range", value_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="invalid default"):
        ParameterSpec("x", "string", "c", Applies.CONFIGURE, "not a choice", choices=("a", "b"))


def test_refusal_reasons() -> None:
    for spec in PARAMETERS:  # every default is accepted while unconfigured (start-up ones are read-only)
        reason = refusal(spec.name, spec.declared_default(), configured=False)
        assert (reason is not None) == (spec.applies is Applies.START_UP), (spec.name, reason)
    assert refusal("use_sim_time", True, configured=True) is None  # rclpy's own

    configure_time = [spec.name for spec in PARAMETERS if spec.applies is Applies.CONFIGURE]
    assert configure_time == [
        "weights", "device", "precision", "int8_graph", "backend", "cuda_graphs", "torch_compile",
        "rect_input", "input_size", "image_transport", "cameras", "image_qos", "publisher_reliability",
        "publisher_depth",
    ]  # fmt: skip
    for name in configure_time:
        reason = refusal(name, BY_NAME[name].declared_default(), configured=True)
        assert reason == f"{name} takes effect on configure: deactivate and clean up first"
        inactive = refusal(name, BY_NAME[name].declared_default(), configured=True, active=False)
        assert inactive == f"{name} takes effect on configure: clean up first"
    assert refusal("score_threshold", 0.9, configured=True) is None  # run time: fine while configured
    assert refusal("input_size", array.array("q", [64, 96]), configured=False) is None  # as rclpy gives it
    assert refusal("input_size", [0, 0], configured=False) is None
    for size in ([50, 50], [64], [-32, 64], [0, 64], [64, 96, 32]):
        assert "multiples of 32" in (refusal("input_size", size, configured=False) or ""), size

    assert "teleportation" in str(refusal("tasks", ["detection", "teleportation"], configured=True))
    assert refusal("tasks", ["pose"], configured=True) is None
    assert refusal("device", "tpu", configured=False) == "device must be auto, cpu or cuda[:N]"
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert refusal("device", device, configured=False) is None
    assert refusal("device", "cuda:x", configured=False) is not None
    assert "image_qos must be one of" in str(refusal("image_qos", "fast", configured=False))
    assert "publisher_reliability" in str(refusal("publisher_reliability", "sometimes", configured=False))
    assert "[0.0, 1.0]" in str(refusal("score_threshold", 1.5, configured=False))
    assert refusal("score_threshold", 1, configured=True) is None  # an integer for a double (set as 1.0)
    assert "[0.0, 1.0]" in str(refusal("score_threshold", 2, configured=True))
    assert "of type double" in str(refusal("score_threshold", True, configured=True))  # a bool is not
    assert "[1, 1000]" in str(refusal("max_detections", 0, configured=False))
    assert "read-only" in str(refusal("autostart", True, configured=False))
    assert refusal("cameras", ["front", "back_left"], configured=False) is None
    assert "distinct" in str(refusal("cameras", ["front", "front"], configured=False))
    for bad in ("", "front/left", "2nd", "rear cam"):
        assert f"camera name {bad!r}" in str(refusal("cameras", ["front", bad], configured=False))
    assert "[0, 64]" in str(refusal("max_batch_size", -1, configured=False))


def test_backend_choices_are_the_model_runtimes() -> None:
    from mcn_ros.model.backends import BACKENDS
    from mcn_ros.ros.parameters import BACKEND_CHOICES

    assert BACKEND_CHOICES == BACKENDS
    assert "backend must be one of" in str(refusal("backend", "tensorrt", configured=False))


def test_segmentation_resampling_choices_are_the_decoders() -> None:
    from mcn_ros.model.decode import SEGMENTATION_RESAMPLING
    from mcn_ros.ros.parameters import SEGMENTATION_RESAMPLING as CHOICES

    assert CHOICES == SEGMENTATION_RESAMPLING
    assert refusal("segmentation_resampling", "bilinear", configured=True) is None  # run time
    assert "segmentation_resampling must be one of" in str(
        refusal("segmentation_resampling", "bicubic", configured=False)
    )


def test_frame_settings_from_parameter_values() -> None:
    defaults = {spec.name: spec.declared_default() for spec in PARAMETERS}
    assert frame_settings(defaults) == FrameSettings(
        tasks=frozenset(TASKS),
        score_threshold=0.3,
        pose_score_threshold=0.3,
        keypoint_threshold=0.1,
        max_detections=100,
        flip_test=False,
        segmentation_resampling="nearest",
        max_image_pixels=8192 * 8192,
        batch_timeout_ms=10.0,
        max_batch_size=0,
    )
    changed = frame_settings({**defaults, "tasks": ["pose"], "score_threshold": 0.5, "max_detections": 7})
    assert (changed.tasks, changed.score_threshold, changed.max_detections) == (frozenset({"pose"}), 0.5, 7)


@pytest.mark.usefixtures("ros")
def test_the_running_node_declares_the_table() -> None:
    """A real node over DDS: its names, values (config/mcn.yaml's) and descriptors are the table's."""
    from nodetools import Client, start_node, stop_node
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters
    from rclpy.parameter import parameter_value_to_python

    process = start_node(name="described_node", device=None)  # every value config/mcn.yaml's
    c = Client("described_node")
    try:
        listed = c.call(ListParameters, "list_parameters", ListParameters.Request(), resend=True).result.names
        rclpy_own = {"use_sim_time", "start_type_description_service"}
        assert set(listed) - rclpy_own == set(BY_NAME)

        names = [spec.name for spec in PARAMETERS]
        request = GetParameters.Request(names=names)
        values = c.call(GetParameters, "get_parameters", request, resend=True).values
        for spec, value in zip(PARAMETERS, values, strict=True):
            assert as_plain(parameter_value_to_python(value)) == as_plain(spec.default), spec.name
            assert value.type == getattr(ParameterType, f"PARAMETER_{spec.type.upper()}"), spec.name

        described = c.call(
            DescribeParameters, "describe_parameters", DescribeParameters.Request(names=names), resend=True
        )
        for spec, descriptor in zip(PARAMETERS, described.descriptors, strict=True):
            assert descriptor.description == spec.full_description, spec.name
            assert descriptor.read_only == (spec.applies is Applies.START_UP), spec.name
            limits = (*descriptor.integer_range, *descriptor.floating_point_range)
            ranges = [(r.from_value, r.to_value) for r in limits]
            assert ranges == ([spec.value_range] if spec.value_range else []), spec.name
    finally:
        c.close()
        log = stop_node(process)
    assert "Traceback" not in log, log


@pytest.mark.usefixtures("ros")
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("score_threshold:=1.5", "invalid parameters: score_threshold must be in [0.0, 1.0], got 1.5"),
        ("score_threshold:=high", "score_threshold must be of type double, got 'high'"),
        ("image_qos:=fast", "image_qos must be one of"),
        ("cameras:=[front,front]", "camera names must be distinct"),
    ],
)
def test_a_bad_start_up_value_stops_the_node_with_one_line(override: str, expected: str) -> None:
    """Values from parameter files and -p are checked by the table at start-up, not only on later sets."""
    command = [sys.executable, "-m", "mcn_ros.ros.node", "--ros-args", "-p", override]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[mcn_node] error: invalid parameters: "), lines
    assert expected in lines[0]
    assert "Invalid parameter value" not in lines[0], lines  # rclpy's wording around the reason


@pytest.mark.usefixtures("ros")
def test_help_and_an_unreadable_parameter_file(tmp_path: Path) -> None:
    """--help prints the usage (it started the node); a parameter file rcl cannot parse is one line."""
    node = [sys.executable, "-m", "mcn_ros.ros.node"]
    result = subprocess.run([*node, "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0 and result.stdout.startswith("usage: mcn_node"), result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    for path in (bad, tmp_path / "missing.yaml"):
        command = [*node, "--ros-args", "--params-file", str(path)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, lines
        assert lines[0].startswith("[mcn_node] error: cannot start: ") and str(path) in lines[0]


@pytest.mark.usefixtures("ros")
def test_a_value_of_the_wrong_type_is_refused_with_the_type_it_needs() -> None:
    from nodetools import Client, start_node, stop_node

    process = start_node(name="typed_node")
    c = Client("typed_node")
    try:
        result = c.set_parameters(score_threshold="high")[0]
        assert not result.successful
        assert result.reason == "score_threshold must be of type double, got 'high'"
        assert c.set_parameters(score_threshold=0.5)[0].successful
    finally:
        c.close()
        log = stop_node(process)
    assert "Traceback" not in log, log


def test_values_for_unknown_parameters_are_named() -> None:
    declared = [spec.name for spec in PARAMETERS] + ["use_sim_time"]
    assert unknown_parameters(["score_threshold", "use_sim_time"], declared) is None
    assert unknown_parameters(["qos_overrides./image.subscription.depth"], declared) is None
    warning = unknown_parameters(["score_treshold", "half", "device"], declared)
    assert warning == (
        "ignoring values for parameters this node does not have: half (replaced by precision "
        "(half:=true was precision:=fp16)), score_treshold"
    )
