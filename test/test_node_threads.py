"""The real McnNode in this process (its own rclpy context): its torch work on one thread, the values it
is given for parameters it lacks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from needs import onnx_modules
from nodetools import camera_frames, make_weights

pytestmark = pytest.mark.usefixtures("ros")


@pytest.fixture
def node_factory() -> Iterator[Any]:
    """Makes McnNodes with the given parameters in a fresh context; destroys them afterwards."""
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from mcn_ros.ros.node import McnNode

    context = Context()
    rclpy.init(context=context)
    nodes: list[Any] = []

    def make(**parameters: Any) -> Any:
        overrides = [Parameter(name, value=value) for name, value in parameters.items()]
        nodes.append(McnNode(f"threads_node_{len(nodes)}", context=context, parameter_overrides=overrides))
        return nodes[-1]

    try:
        yield make
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)


def test_configure_loads_the_model_on_the_inference_thread(
    node_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PyTorch gives each thread that enters a parallel region its own OpenMP team; a second team (the
    # model loaded on the executor's thread, frames run on the inference thread) made every forward of the
    # node a tenth slower than the same call in one thread (libgomp's workers stopped spinning).
    import mcn_ros.model.predictor as predictor_module
    import mcn_ros.model.weights as weights_module

    where: list[str] = []
    load_weights, predictor_init = weights_module.load_weights, predictor_module.Predictor.__init__

    def observed_load(*args: Any, **kwargs: Any) -> Any:
        where.append(f"load_weights on {threading.current_thread().name}")
        return load_weights(*args, **kwargs)

    def observed_init(self: Any, *args: Any, **kwargs: Any) -> None:
        where.append(f"Predictor on {threading.current_thread().name}")
        predictor_init(self, *args, **kwargs)

    monkeypatch.setattr(weights_module, "load_weights", observed_load)  # called through, only observed
    monkeypatch.setattr(predictor_module.Predictor, "__init__", observed_init)
    weights = make_weights(tmp_path / "model.safetensors")
    node = node_factory(weights=str(weights), device="cpu")
    node.trigger_configure()
    assert node.configured
    assert where == ["load_weights on mcn_inference", "Predictor on mcn_inference"]
    node.trigger_cleanup()
    assert not node.configured
    node.trigger_configure()  # again, on the same thread (one for the node's life)
    assert node.configured and where[2:] == where[:2]


def test_a_load_error_on_the_inference_thread_fails_configure(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory(weights=str(tmp_path / "missing.safetensors"), device="cpu")
    from rclpy.parameter import Parameter

    node.trigger_configure()
    assert not node.configured
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    node.set_parameters([Parameter("weights", value=str(tmp_path / "broken.safetensors"))])
    node.trigger_configure()
    assert not node.configured
    node.set_parameters([Parameter("weights", value=str(make_weights(tmp_path / "good.safetensors")))])
    node.trigger_configure()  # the thread survived both errors
    assert node.configured


def test_configure_without_weights_says_what_to_set(
    node_factory: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    node = node_factory(device="cpu")  # weights: "" by default
    node.trigger_configure()
    assert not node.configured
    logged = capfd.readouterr().err
    assert "configure failed: parameter 'weights' is empty" in logged and "weights:=PATH" in logged, logged


def test_values_for_parameters_the_node_lacks_are_logged(
    node_factory: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    node_factory(half=True, score_treshold=0.5, score_threshold=0.4)
    logged = capfd.readouterr().err
    assert "ignoring values for parameters this node does not have: half (replaced by precision" in logged
    assert "score_treshold" in logged and "score_threshold," not in logged


@pytest.mark.usefixtures("int8_cpu")
def test_int8_configure_needs_the_graph_beside_the_weights(
    node_factory: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    onnx_modules()
    from mcn_ros.model.quantize import main

    weights = make_weights(tmp_path / "model.safetensors", use_dcn=False)
    node = node_factory(weights=str(weights), device="cpu", backend="onnxruntime", precision="int8")
    node.trigger_configure()
    assert not node.configured
    logged = capfd.readouterr().err
    assert "int8 graph not found" in logged and "python -m mcn_ros.model.quantize" in logged
    assert main(["--weights", str(weights), "--images", str(camera_frames(tmp_path / "frames", 3))]) == 0
    node.trigger_configure()
    assert node.configured and node._predictor.precision.name == "int8"
    assert "int8" in capfd.readouterr().err.split("loaded ")[-1]  # the start-up line names the precision


def test_activate_wakes_the_inference_thread_at_once(
    node_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While inactive the thread waits for jobs with a timeout (0.1 s; 30 s here, so that only the wake-up can
    # end the wait within the deadline); activate wakes it, so the first frame is not left waiting for the
    # rest of that timeout.
    import time

    import mcn_ros.ros.node as node_module
    from mcn_ros.ros.batching import CameraSlots

    monkeypatch.setattr(node_module, "INACTIVE_WAIT_S", 30.0)

    first_wait: list[float] = []
    take_batch = CameraSlots.take_batch

    def observed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not first_wait:
            first_wait.append(time.perf_counter())
        return take_batch(self, *args, **kwargs)

    monkeypatch.setattr(CameraSlots, "take_batch", observed)  # called through, only observed
    node = node_factory(weights=str(make_weights(tmp_path / "model.safetensors")), device="cpu")
    node.trigger_configure()
    for _ in range(3):
        first_wait.clear()
        start = time.perf_counter()
        node.trigger_activate()
        deadline = start + 5.0
        while not first_wait and time.perf_counter() < deadline:
            time.sleep(0.001)
        assert first_wait, "the inference thread never looked for frames: activate did not wake it"
        node.trigger_deactivate()
        time.sleep(0.15)  # the thread is back in its inactive wait


@pytest.mark.parametrize(
    "post_set_callbacks", [True, False], ids=["iron_and_later", "without_post_set_callbacks"]
)
def test_run_time_parameters_take_effect_with_and_without_post_set_callbacks(
    node_factory: Any, post_set_callbacks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rclpy has post-set-parameters callbacks and list_parameters since Iron; Humble's has neither (the
    node called both and could not start there). Without them the set-callback applies the values it
    accepts; a refused value changes nothing either way."""
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    import mcn_ros.ros.node as node_module

    if not post_set_callbacks:  # as on Humble (rclpy 3.3: neither method), emulated on this rclpy
        monkeypatch.delattr(Node, "add_post_set_parameters_callback")
        monkeypatch.delattr(Node, "list_parameters")
        monkeypatch.setattr(node_module, "POST_SET_CALLBACKS", False)
    node = node_factory()
    assert node._frame_settings.score_threshold == pytest.approx(0.3)
    results = node.set_parameters(
        [Parameter("score_threshold", value=0.55), Parameter("flip_test", value=True)]
    )
    assert all(result.successful for result in results)
    assert node._frame_settings.score_threshold == pytest.approx(0.55) and node._frame_settings.flip_test
    refused = node.set_parameters([Parameter("score_threshold", value=1.5)])[0]
    assert not refused.successful and node._frame_settings.score_threshold == pytest.approx(0.55)
    assert node.get_parameter("score_threshold").value == pytest.approx(0.55)


def test_shutdown_ends_the_inference_thread(node_factory: Any, tmp_path: Path) -> None:
    """The shutdown transition (finalized: nothing runs again) ends the inference thread at once; it used
    to poll on until the node was destroyed."""
    node = node_factory(weights=str(make_weights(tmp_path / "model.safetensors")), device="cpu")
    node.trigger_configure()
    thread = node._inference_thread
    assert node.configured and thread is not None and thread.is_alive()
    published: list[Any] = []
    node._diagnostics_publisher.publish = published.append  # the status it publishes on the way out
    node.trigger_shutdown()
    assert not node.configured and not thread.is_alive()
    # /diagnostics says so once (level STALE), then stops: it went on reporting "unconfigured" forever.
    assert node._diagnostics_timer.is_canceled()
    assert [(s.level, s.message[:9]) for s in published[-1].status] == [(b"\x03", "finalized")]


def test_a_failed_activate_leaves_the_publishers_inactive(
    node_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Activate fails after the lifecycle publishers were enabled: they are disabled again with the node
    back in inactive (they stayed enabled)."""
    node = node_factory(weights=str(make_weights(tmp_path / "model.safetensors")), device="cpu")
    node.trigger_configure()

    def failing() -> None:
        raise RuntimeError("no subscriptions today")

    monkeypatch.setattr(node, "_activate", failing)
    node.trigger_activate()
    publishers = node._cameras[""].outputs.publishers
    assert publishers and not any(publisher.is_activated for publisher in publishers.values())
    assert node.configured and not node._running.is_set()


def test_torch_runs_on_one_thread_beside_onnxruntime(node_factory: Any, tmp_path: Path) -> None:
    """With backend onnxruntime torch does only the steps around the forward, on one thread (no OpenMP
    workers spinning on the forward's cores); ONNX Runtime keeps torch's count, and cleanup gets it back."""
    onnx_modules()
    import torch
    from rclpy.parameter import Parameter

    started = torch.get_num_threads()
    torch.set_num_threads(2)  # two, even on a one-core machine: one thread must be told from the count
    try:
        weights = make_weights(tmp_path / "model.safetensors", use_dcn=False)
        node = node_factory(weights=str(weights), device="cpu", backend="onnxruntime")
        node.trigger_configure()
        assert node.configured and node._predictor.backend == "onnxruntime"
        assert node._on_inference_thread(torch.get_num_threads) == 1
        assert node._predictor._onnx.threads == 2  # the forward's pool: torch's count as it was
        node.trigger_cleanup()  # the count is process-wide: back to torch's with no model
        assert node._on_inference_thread(torch.get_num_threads) == 2
        node.set_parameters([Parameter("backend", value="torch")])
        node.trigger_configure()
        assert node.configured and node._predictor.backend == "torch"
        assert node._on_inference_thread(torch.get_num_threads) == 2
    finally:
        torch.set_num_threads(started)
