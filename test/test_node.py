"""The real node in its own process, driven over DDS: outputs, headers, bad input, parameters, lifecycle."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from nodetools import REPO, Client, image_message, make_weights, rss_kib, start_node, stop_node

pytestmark = pytest.mark.usefixtures("ros")

SCORE = 0.05  # a model at random init scores about 0.1 everywhere: low enough to get detections


def test_image(height: int = 48, width: int = 80, seed: int = 3) -> np.ndarray:
    """A non-square RGB test image with some structure."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    cv2.rectangle(image, (10, 8), (40, 40), (250, 20, 20), -1)
    return image


test_image.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("weights") / "model.safetensors")


@pytest.fixture(scope="module")
def running(weights: Path) -> Iterator[tuple[object, Client]]:
    """An autostarted node (active) plus a client with every output subscribed."""
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray, LabelInfo

    from mcn_ros.msg import HumanPose2DArray, PoseInfo

    process = start_node(
        "-p", f"weights:={weights}", "-p", "autostart:=true", "-p", f"score_threshold:={SCORE}",
        "-p", f"pose_score_threshold:={SCORE}", "-p", "image_transport:=both",
    )  # fmt: skip
    c = Client()
    for topic, msg_type in [
        ("detections", Detection2DArray),
        ("poses", HumanPose2DArray),
        ("segmentation", Image),
        ("segmentation/color", Image),
        ("debug_image", Image),
    ]:
        c.subscribe(topic, msg_type)
    c.subscribe("label_info", LabelInfo, latched=True)
    c.subscribe("segmentation/label_info", LabelInfo, latched=True)
    c.subscribe("pose_info", PoseInfo, latched=True)
    try:
        yield process, c
    finally:
        c.close()
        log = stop_node(process)
        assert "Traceback" not in log, log


def all_outputs(c: Client) -> bool:
    return all(
        c.messages(t) for t in ("detections", "poses", "segmentation", "segmentation/color", "debug_image")
    )


def test_every_output_carries_the_input_header(running: tuple[object, Client]) -> None:
    _, c = running
    image = test_image()
    c.clear()
    assert c.publish_until(image_message(image, stamp=(42, 7), frame="front_cam"), lambda: all_outputs(c), 60)
    for topic in ("detections", "poses", "segmentation", "segmentation/color", "debug_image"):
        header = c.messages(topic)[-1].header
        assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (42, 7, "front_cam"), topic
    segmentation = c.messages("segmentation")[-1]
    assert (segmentation.height, segmentation.width, segmentation.encoding) == (48, 80, "mono8")
    assert c.messages("segmentation/color")[-1].encoding == "rgb8"
    debug = c.messages("debug_image")[-1]
    assert (debug.height, debug.width) == (48, 80)
    poses = c.messages("poses")[-1].poses
    assert poses and all(len(p.keypoints) == 17 for p in poses)
    labels = c.messages("label_info")[-1]
    assert [v.class_name for v in labels.class_map] == ["person", "car"]
    assert [v.class_id for v in labels.class_map] == [0, 1]
    # The class map's values have their own names: 0 is background, i the segmentation class i - 1.
    seg_labels = c.messages("segmentation/label_info")[-1]
    assert [(v.class_id, v.class_name) for v in seg_labels.class_map] == [
        (0, "background"),
        (1, "person"),
        (2, "car"),
    ]
    assert len(c.messages("pose_info")[-1].keypoint_names) == 17


def test_boxes_equal_the_model_runtime(running: tuple[object, Client], weights: Path) -> None:
    from mcn_ros.model.predictor import Predictor

    _, c = running
    image = test_image(seed=11)
    c.clear()
    assert c.publish_until(
        image_message(image, stamp=(1, 1)), lambda: bool(c.stamped("detections", 1, 1)), 30
    )
    received = c.stamped("detections", 1, 1)[-1].detections
    expected = Predictor.from_weights(weights, device="cpu").predict(
        image, score_threshold=SCORE, pose_score_threshold=SCORE
    )
    assert expected.detections is not None and len(expected.detections) > 0
    assert len(received) == len(expected.detections)
    centres = np.array([[d.bbox.center.position.x, d.bbox.center.position.y] for d in received])
    sizes = np.array([[d.bbox.size_x, d.bbox.size_y] for d in received])
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    np.testing.assert_allclose(boxes, expected.detections.boxes, atol=1e-3)
    np.testing.assert_allclose(
        [d.results[0].hypothesis.score for d in received], expected.detections.scores, atol=1e-5
    )
    assert [d.results[0].hypothesis.class_id for d in received] == [
        str(i) for i in expected.detections.class_ids
    ]
    assert segmentation_equal(c, expected.segmentation)


def segmentation_equal(c: Client, expected: np.ndarray | None) -> bool:
    assert expected is not None
    msg = c.messages("segmentation")[-1]
    got = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width)
    return bool(np.array_equal(got, expected))


def test_bgr_mono_and_compressed_inputs_match(running: tuple[object, Client]) -> None:
    from sensor_msgs.msg import CompressedImage

    _, c = running
    image = test_image(seed=5)
    c.clear()
    assert c.publish_until(image_message(image, stamp=(2, 0)), lambda: bool(c.stamped("detections", 2)), 30)
    reference = c.stamped("detections", 2)[-1]
    assert len(reference.detections) > 0  # equal empty lists would prove nothing
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    assert c.publish_until(
        image_message(bgr, "bgr8", stamp=(3, 0)), lambda: bool(c.stamped("detections", 3)), 30
    )
    assert detections_equal(c.stamped("detections", 3)[-1], reference)

    png = CompressedImage(format="png", data=cv2.imencode(".png", bgr)[1].tobytes())
    png.header.stamp.sec = 4
    assert c.publish_until(png, lambda: bool(c.stamped("detections", 4)), 30, compressed=True)
    assert detections_equal(c.stamped("detections", 4)[-1], reference)

    # mono8: answered as the grey image's three equal channels are.
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey_rgb = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    assert c.publish_until(
        image_message(grey_rgb, stamp=(5, 0)), lambda: bool(c.stamped("detections", 5)), 30
    )
    grey_reference = c.stamped("detections", 5)[-1]
    assert len(grey_reference.detections) > 0
    assert c.publish_until(
        image_message(grey, "mono8", stamp=(6, 0)), lambda: bool(c.stamped("detections", 6)), 30
    )
    assert detections_equal(c.stamped("detections", 6)[-1], grey_reference)


def test_the_compressed_transport_alone_runs_each_frame_once(weights: Path) -> None:
    """image_transport:=compressed: the node takes <image>/compressed only, so a frame that a camera driver
    publishes on both topics (as image_transport does) runs once; a PNG is answered as its pixels are."""
    from sensor_msgs.msg import CompressedImage
    from vision_msgs.msg import Detection2DArray

    from mcn_ros.model.predictor import Predictor

    node = "compressed_node"
    process = start_node(
        "-p", f"weights:={weights}", "-p", "autostart:=true", "-p", "image_transport:=compressed",
        "-p", f"score_threshold:={SCORE}", "-p", f"pose_score_threshold:={SCORE}", name=node,
    )  # fmt: skip
    c = Client(node)
    try:
        c.subscribe("detections", Detection2DArray)
        image = test_image(seed=5)
        png = CompressedImage(format="png", data=cv2.imencode(".png", image[:, :, ::-1])[1].tobytes())
        png.header.stamp.sec = 4
        assert c.publish_until(png, lambda: bool(c.messages("detections")), 30, compressed=True)
        expected = Predictor.from_weights(weights, device="cpu").predict(
            image, score_threshold=SCORE, pose_score_threshold=SCORE
        )
        assert expected.detections is not None and len(expected.detections) > 0
        received = c.messages("detections")[-1]
        assert received.header.stamp.sec == 4
        scores = [d.results[0].hypothesis.score for d in received.detections]
        np.testing.assert_allclose(scores, expected.detections.scores, atol=1e-5)

        assert node not in [info.node_name for info in c.node.get_subscriptions_info_by_topic("/image")]
        twin = image_message(image, stamp=(5, 0))
        png.header.stamp.sec = 5
        c.image_pub.publish(twin)
        c.compressed_pub.publish(png)
        assert c.wait_for(lambda: any(m.header.stamp.sec == 5 for m in c.messages("detections")), 20)
        time.sleep(1.0)  # a second answer would come within a frame's time
        assert [m.header.stamp.sec for m in c.messages("detections")].count(5) == 1
    finally:
        c.close()
        log = stop_node(process)
    assert "listening on /image/compressed" in log and "/image," not in log, log


def detections_equal(a: object, b: object) -> bool:
    def rows(msg: object) -> list[tuple[float, ...]]:
        return [
            (
                d.bbox.center.position.x,
                d.bbox.center.position.y,
                d.bbox.size_x,
                d.bbox.size_y,
                d.results[0].hypothesis.score,
            )
            for d in msg.detections  # type: ignore[attr-defined]
        ]

    first, second = rows(a), rows(b)
    return len(first) == len(second) and bool(np.allclose(first, second, atol=1e-4))


def bad_frames() -> list[tuple[str, object]]:
    from sensor_msgs.msg import CompressedImage, Image

    good = test_image()
    unknown = image_message(good, encoding="yuv420_fancy")
    short = image_message(good)
    short.data = short.data[:-10]
    empty = Image(height=0, width=0, encoding="rgb8", step=0)
    huge = Image(height=20000, width=20000, encoding="rgb8", step=60000)
    huge.data = bytes(100)
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10)
    return [
        ("unsupported encoding", unknown),
        ("expected height x step", short),
        ("empty image", empty),
        ("exceeds max_image_pixels", huge),
        ("cannot decode compressed image", corrupt),
    ]


def test_bad_frames_are_skipped_with_a_clear_message_and_the_node_keeps_serving(
    running: tuple[object, Client],
) -> None:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    process, c = running
    c.subscribe("/diagnostics", DiagnosticArray)
    frames = bad_frames()
    for expected_text, frame in frames:
        compressed = type(frame).__name__ == "CompressedImage"
        publisher = c.compressed_pub if compressed else c.image_pub
        publisher.publish(frame)
        # The reason reaches the log (rate-limited) and the diagnostics' last_error.
        assert c.wait_for(lambda text=expected_text: text in last_error(c), 10), (
            expected_text,
            last_error(c),
        )
        c.clear()
        stamp = (100 + frames.index((expected_text, frame)), 0)
        # Waits for the answer to this frame by its stamp: a late answer to the frame before is not it.
        assert c.publish_until(
            image_message(test_image(), stamp=stamp), lambda s=stamp: bool(c.stamped("detections", *s)), 30
        ), f"node stopped answering after a frame with {expected_text}"

    # Memory stays flat under a stream of bad frames.
    before = rss_kib(process.pid)  # type: ignore[attr-defined]
    for _ in range(30):
        for _, frame in frames[:4]:
            c.image_pub.publish(frame)
        time.sleep(0.02)
    time.sleep(1.0)
    assert rss_kib(process.pid) - before < 30_000  # type: ignore[attr-defined]

    assert c.wait_for(lambda: any(rejected(m) >= len(frames) for m in c.messages("/diagnostics")), 10)

    # ... and the status is not OK while most frames are refused, and says why.
    def flagged() -> bool:  # any status since the stream began (a later one may say "no input")
        return any(
            status.name.startswith("mcn_node")
            and (
                (status.level == DiagnosticStatus.WARN and "rejecting" in status.message)
                or (status.level == DiagnosticStatus.ERROR and "every frame rejected" in status.message)
            )
            for msg in c.messages("/diagnostics")
            for status in msg.status
        )

    assert c.wait_for(flagged, 10), status_message(c, "mcn_node")


def last_error(c: Client) -> str:
    for msg in reversed(c.messages("/diagnostics")):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name.startswith("mcn_node"):
                return str(values.get("last_error", ""))
    return ""


def rejected(msg: object) -> int:
    for status in msg.status:  # type: ignore[attr-defined]
        values = {kv.key: kv.value for kv in status.values}
        if "frames_rejected" in values:
            return int(values["frames_rejected"])
    return -1


def _settle(c: Client, image: object, topic: str) -> None:
    """After a parameter change: publish until ``topic`` answers, then drop what has arrived. A frame already
    being processed finishes with the settings it started with; frames run one after another, so once a
    frame of the new settings is out, the older ones are too."""
    assert c.publish_until(image, lambda: bool(c.messages(topic)), 30)
    time.sleep(0.5)
    c.clear()


def test_parameters_change_at_run_time_and_bad_values_are_refused(running: tuple[object, Client]) -> None:
    from rcl_interfaces.msg import ParameterType

    _, c = running
    image = image_message(test_image(), stamp=(7, 0))

    results = c.set_parameters(score_threshold=1)  # an integer for a double parameter: set as 1.0
    assert results[0].successful
    (value,) = c.parameter_values("score_threshold")
    assert (value.type, value.double_value) == (ParameterType.PARAMETER_DOUBLE, 1.0)
    _settle(c, image, "detections")
    assert c.publish_until(image, lambda: bool(c.messages("detections")), 30)
    assert len(c.messages("detections")[-1].detections) == 0  # nothing scores 1

    for bad in ({"score_threshold": 1.5}, {"tasks": ["detection", "teleportation"]}, {"device": "tpu"}):
        result = c.set_parameters(**bad)[0]
        assert not result.successful, bad
        assert result.reason, bad
    assert "teleportation" in c.set_parameters(tasks=["teleportation"])[0].reason
    assert "configure" in c.set_parameters(weights="/elsewhere.safetensors")[0].reason

    assert c.set_parameters(score_threshold=SCORE, tasks=["segmentation"])[0].successful
    # Frames sent after the change carry their own stamp: a frame of the old settings still in flight may
    # publish detections of stamp 7 late (it did on a loaded machine), never of stamp 8.
    later = image_message(test_image(), stamp=(8, 0))
    assert c.publish_until(later, lambda: bool(c.stamped("segmentation", 8)), 30)
    time.sleep(1.0)
    assert not c.stamped("detections", 8) and not c.stamped("poses", 8)  # detection and pose switched off
    assert c.set_parameters(tasks=["detection", "pose", "segmentation"])[0].successful


def test_qos_overrides_in_a_parameter_file_reach_the_topics(weights: Path, tmp_path: Path) -> None:
    """rclpy's standard qos_overrides.<topic>.publisher|subscription.<policy> parameters set the QoS of the
    node's outputs and camera subscription; one that matches nothing is named in a warning."""
    from rclpy.qos import ReliabilityPolicy

    node = "qos_node"
    params = tmp_path / "qos.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "/**": {
                    "ros__parameters": {
                        "qos_overrides": {
                            f"/{node}/detections": {"publisher": {"reliability": "best_effort", "depth": 3}},
                            "/image": {"subscription": {"reliability": "reliable"}},
                            f"/{node}/detectoins": {"publisher": {"depth": 2}},
                        }
                    }
                }
            }
        )
    )
    process = start_node(
        "-p", f"weights:={weights}", "-p", "autostart:=true", "--params-file", str(params), name=node
    )  # fmt: skip
    c = Client(node)
    try:
        assert c.wait_for(lambda: c.state() == "active", 60)

        def infos() -> tuple[list[Any], list[Any]]:
            publishers = c.node.get_publishers_info_by_topic(f"/{node}/detections")
            subscriptions = c.node.get_subscriptions_info_by_topic("/image")
            return publishers, [i for i in subscriptions if i.node_name == node]

        assert c.wait_for(lambda: all(infos()), 20)
        (publisher,), (subscription,) = infos()
        assert publisher.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        assert subscription.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        (pose_publisher,) = c.node.get_publishers_info_by_topic(f"/{node}/poses")  # not overridden
        assert pose_publisher.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        # Topics without overrides follow the node's QoS parameters through cleanup and configure (rclpy's
        # read-only override parameters, once declared for a topic, kept its first QoS for good).
        assert c.lifecycle("deactivate") and c.lifecycle("cleanup")
        assert c.set_parameters(publisher_reliability="best_effort")[0].successful
        assert c.lifecycle("configure") and c.lifecycle("activate")

        def pose_reliability() -> list[Any]:
            return [i.qos_profile.reliability for i in c.node.get_publishers_info_by_topic(f"/{node}/poses")]

        assert c.wait_for(lambda: pose_reliability() == [ReliabilityPolicy.BEST_EFFORT], 20), (
            pose_reliability()
        )
        (publisher,) = c.node.get_publishers_info_by_topic(f"/{node}/detections")
        assert publisher.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT  # still the override's
        # The graph does not carry history depths: the declared override parameter tells it.
        (depth,) = c.parameter_values(f"qos_overrides./{node}/detections.publisher.depth")
        assert depth.integer_value == 3
    finally:
        c.close()
        log = stop_node(process)
    expected = "ignoring QoS overrides that match none of this node's publishers and subscriptions: "
    assert f"{expected}qos_overrides./{node}/detectoins.publisher.depth" in log, log
    assert "parameters this node does not have" not in log, log


def test_a_namespaced_node_on_simulated_time(weights: Path) -> None:
    """Two namespaced nodes' /diagnostics statuses share no name (they were both "mcn_node: inference"), and
    on simulated time a frame processed before the first /clock has no stamp age (it read -1000 s: now was 0
    while the frame was stamped 1000 s)."""
    import math

    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from rosgraph_msgs.msg import Clock
    from vision_msgs.msg import Detection2DArray

    process = start_node(
        "-p", f"weights:={weights}", "-p", "autostart:=true", "-p", f"score_threshold:={SCORE}",
        "-p", "use_sim_time:=true", "-p", "diagnostics_period:=0.2", "-r", "__ns:=/ns_a",
        "-r", "image:=/image",
    )  # fmt: skip
    c = Client("mcn_node", namespace="/ns_a")
    try:
        c.subscribe("detections", Detection2DArray)
        c.subscribe("/diagnostics", DiagnosticArray)
        image = image_message(test_image(), stamp=(1000, 0))
        assert c.publish_until(image, lambda: bool(c.messages("detections")), 60)  # before any /clock
        clock = c.node.create_publisher(Clock, "/clock", 10)

        def status() -> dict[str, str]:
            for msg in reversed(c.messages("/diagnostics")):
                for entry in msg.status:
                    if entry.name == "ns_a/mcn_node: inference":
                        return {kv.key: kv.value for kv in entry.values}
            return {}

        deadline = time.monotonic() + 30
        while not status() and time.monotonic() < deadline:
            clock.publish(
                Clock(clock=Time(sec=1000, nanosec=500_000_000))
            )  # the diagnostics timer runs on it
            time.sleep(0.1)
        age = float(status()["stamp_age_p50_ms"])
        assert math.isnan(age) or age >= 0, status()
    finally:
        c.close()
        stop_node(process)


def test_a_task_nobody_listens_to_is_not_computed(weights: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.msg import ParameterType
    from sensor_msgs.msg import Image

    # batch_timeout_ms:=20 is an integer for a double parameter: the node starts and sets it as 20.0.
    process = start_node(
        "-p", f"weights:={weights}", "-p", "autostart:=true", "-p", "batch_timeout_ms:=20", name="quiet_node"
    )  # fmt: skip
    c = Client("quiet_node")
    try:
        (value,) = c.parameter_values("batch_timeout_ms")
        assert (value.type, value.double_value) == (ParameterType.PARAMETER_DOUBLE, 20.0)
        c.subscribe("segmentation", Image)
        c.subscribe("/diagnostics", DiagnosticArray)
        assert c.publish_until(image_message(test_image()), lambda: bool(c.messages("segmentation")), 60)

        def computed() -> set[str]:
            for msg in c.messages("/diagnostics")[-3:]:
                for status in msg.status:
                    if status.name.startswith("quiet_node"):
                        values = {kv.key: kv.value for kv in status.values}
                        if int(values["frames_processed"]) > 0:
                            return set(values["tasks_computed"].split(","))
            return set()

        assert c.wait_for(lambda: computed() == {"segmentation"}, 10), computed()
    finally:
        c.close()
        stop_node(process)


def test_segmentation_resampling_changes_at_run_time(tmp_path: Path) -> None:
    """The demo weights (trained: several classes per image) segment a synthetic scene; bilinear and nearest
    resampling each give the model runtime's map, and they differ."""
    import cv2
    from sensor_msgs.msg import Image

    from mcn_ros.model.predictor import Predictor
    from mcn_training.synthetic import generate_dataset

    weights = REPO / "demo" / "mcn_demo.safetensors"
    files = generate_dataset(tmp_path, 1, 4, (96, 160), split="val")
    image = cv2.cvtColor(cv2.imread(str(next(files["images"].iterdir()))), cv2.COLOR_BGR2RGB)
    predictor = Predictor.from_weights(weights, device="cpu")
    expected = {
        mode: predictor.predict(image, tasks=["segmentation"], segmentation_resampling=mode).segmentation
        for mode in ("nearest", "bilinear")
    }
    assert np.any(expected["nearest"] != expected["bilinear"])
    process = start_node(
        "-p", f"weights:={weights}", "-p", "autostart:=true", "-p", "tasks:=[segmentation]",
        "-p", "segmentation_resampling:=bilinear", name="resampling_node",
    )  # fmt: skip
    c = Client("resampling_node")
    try:
        c.subscribe("segmentation", Image)
        for mode in ("bilinear", "nearest"):
            assert c.set_parameters(segmentation_resampling=mode)[0].successful

            def answered(mode: str = mode) -> bool:  # a frame taken before the change may still come first
                return bool(c.messages("segmentation")) and segmentation_equal(c, expected[mode])

            assert c.publish_until(image_message(image), answered, 60), mode
    finally:
        c.close()
        stop_node(process)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def test_lifecycle_transitions(weights: Path, tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection2DArray

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(weights.read_bytes()[:5000])
    process = start_node("-p", f"weights:={corrupt}", "-p", f"score_threshold:={SCORE}", name="managed_node")
    c = Client("managed_node")
    try:
        c.subscribe("detections", Detection2DArray)
        c.subscribe("/diagnostics", DiagnosticArray)
        image = image_message(test_image())
        assert c.state() == "unconfigured"
        assert not c.lifecycle("configure")  # corrupt weights: configure fails, node stays up
        assert c.state() == "unconfigured"
        assert c.set_parameters(weights=str(weights))[0].successful
        refused = c.set_parameters(input_size=[50, 50])[0]  # 50 is not a multiple of 32
        assert not refused.successful and "multiples of 32" in refused.reason
        assert c.set_parameters(input_size=[64, 96])[0].successful
        assert c.lifecycle("configure")
        inactive = c.set_parameters(input_size=[64, 64])[0].reason  # fixed while configured
        assert inactive == "input_size takes effect on configure: clean up first"  # no deactivate to do
        assert c.state() == "inactive"
        assert not c.publish_until(image, lambda: bool(c.messages("detections")), 3)  # inactive: silent
        assert c.lifecycle("activate")
        assert c.state() == "active"
        assert c.publish_until(image, lambda: bool(c.messages("detections")), 30)
        assert c.lifecycle("deactivate")
        time.sleep(0.5)
        c.clear()
        assert not c.publish_until(image, lambda: bool(c.messages("detections")), 3)
        assert c.lifecycle("cleanup")
        assert c.state() == "unconfigured"
        # Off CUDA, cuda_graphs warns and the forward runs eagerly, which torch_compile then compiles.
        assert all(r.successful for r in c.set_parameters(cuda_graphs=True, torch_compile=True))
        assert c.lifecycle("configure") and c.lifecycle("activate")
        c.clear()
        assert c.publish_until(image, lambda: bool(c.messages("detections")), 60)  # compiles first

        def forward_options() -> tuple[str, str]:  # /diagnostics: each asked for, on or off and why
            values = diagnostics_values(c, "managed_node") or {}
            return values.get("cuda_graphs", ""), values.get("torch_compile", "")

        assert c.wait_for(lambda: forward_options()[0].startswith("off: CUDA graphs need a CUDA device"), 10)
        assert forward_options()[1] == "on"
        # Active with no frame coming: the status says so, naming the topic (it said OK, "active").
        assert c.wait_for(lambda: "no input: no frame on /image for" in status_message(c, "managed_node"), 15)
        # A second configure/activate cycle left exactly one publisher and one camera subscription.
        assert c.node.count_publishers("/managed_node/detections") == 1
        readers = c.node.get_subscriptions_info_by_topic("/image")
        assert [info.node_name for info in readers].count("managed_node") == 1
        assert c.lifecycle("deactivate") and c.lifecycle("cleanup")
        if not cuda_available():  # a device that cannot be used fails configure with a message
            assert c.set_parameters(device="cuda:0")[0].successful
            assert not c.lifecycle("configure")
            assert c.state() == "unconfigured"
    finally:
        c.close()
        log = stop_node(process)
    assert "cannot load weights" in log
    assert "unconfigured, waiting for a lifecycle manager (ros2 lifecycle set /managed_node configure" in log
    after_graphs = log.split("parameter cuda_graphs: CUDA graphs need a CUDA device")[-1]
    assert cuda_available() or "configure failed: cannot load weights" in after_graphs  # device cuda:0
    assert log.count("parameter cuda_graphs: CUDA graphs need a CUDA device") == 1  # once, not every tick


def status_message(c: Client, node: str, level: int | None = None) -> str:
    """The message of the newest /diagnostics status of ``node`` (at ``level``, if given); "" if none."""
    for msg in reversed(c.messages("/diagnostics")):
        for status in msg.status:
            if status.name.startswith(f"{node}:") and (level is None or status.level == level):
                return str(status.message)
    return ""


def diagnostics_values(c: Client, node: str) -> dict[str, str] | None:
    """The key-values of the newest /diagnostics status of ``node``."""
    for msg in reversed(c.messages("/diagnostics")):
        for status in msg.status:
            if status.name.startswith(f"{node}:"):
                return {kv.key: kv.value for kv in status.values}
    return None


COUNTERS = ("sent", "received", "lost", "dropped", "rejected", "processed", "idle", "pending")


def settled_counts(c: Client, node: str, timeout: float = 60.0) -> dict[str, int]:
    """The node's frame counters once nothing is waiting or in flight and three reports agree."""
    seen: list[dict[str, int]] = []

    def settled() -> bool:
        values = diagnostics_values(c, node)
        if values is None:
            return False
        counts = {k: int(values[f"frames_{k}"]) for k in COUNTERS}
        if not seen or seen[-1] != counts:
            seen.append(counts)
            c.clear_topic("/diagnostics")
            return False
        c.clear_topic("/diagnostics")
        seen.append(counts)
        return counts["pending"] == 0 and len(seen) >= 3 and seen[-3] == counts

    assert c.wait_for(settled, timeout), seen[-3:]
    return seen[-1]


def test_a_slow_node_accounts_for_every_frame_sent(weights: Path) -> None:
    """A burst far faster than the node processes (paced by its measured time a frame):
    the frames it never received (lost in transport) and those replaced in its slot (dropped) are counted,
    and received + lost is what was sent."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from vision_msgs.msg import Detection2DArray

    node = "slow_node"
    process = start_node(
        "-p", f"weights:={weights}", "-p", "autostart:=true", "-p", "input_size:=[256, 256]",
        "-p", "diagnostics_period:=0.2", name=node,
    )  # fmt: skip
    c = Client(node)
    try:
        c.subscribe("detections", Detection2DArray)
        c.subscribe("/diagnostics", DiagnosticArray)
        image = test_image(240, 320)
        assert c.publish_until(image_message(image, stamp=(1, 0)), lambda: bool(c.messages("detections")), 90)
        # How long the node takes for a frame here (its processing_p50_ms over a few frames sent one at a
        # time): the burst below is paced by it, so that it outruns the node on a fast machine as on this one.
        for i in range(3):
            assert c.publish_until(
                image_message(image, stamp=(1, 1 + i)),
                lambda i=i: bool(c.stamped("detections", 1, 1 + i)),
                30,
            )

        def processing_s() -> float:
            return float((diagnostics_values(c, node) or {}).get("processing_p50_ms", "nan")) / 1e3

        assert c.wait_for(lambda: processing_s() > 0.0, 5.0)
        per_frame = processing_s()
        before = settled_counts(c, node)
        assert before["received"] + before["lost"] == before["sent"]

        # Half back to back (more than the middleware delivers to a busy node: losses), half at four frames
        # per frame processed, and at least 50 Hz (frames arrive while one is processed: drops).
        burst = 150
        interval = min(0.02, per_frame / 4)
        for i in range(burst):
            c.image_pub.publish(image_message(image, stamp=(2, i)))
            if i >= burst // 2:
                time.sleep(interval)
        # One last frame, sent until the node answers it, with a pause longer than a frame's processing
        # between tries: it is received, so every gap before it is known.
        sentinels = 0

        def answered() -> bool:
            return any(m.header.stamp.sec == 3 for m in c.messages("detections"))

        while not answered() and sentinels < 30:
            c.image_pub.publish(image_message(image, stamp=(3, 0)))
            sentinels += 1
            c.wait_for(answered, 4.0)
        assert answered()

        def timing() -> tuple[float, float]:  # the model runtime's call within the node's processing
            values = diagnostics_values(c, node) or {}
            return float(values.get("inference_p50_ms", "nan")), float(values.get("processing_p50_ms", "nan"))

        assert c.wait_for(lambda: 0.0 < timing()[0] <= timing()[1], 5.0), timing()
        warnings = [
            status.message
            for msg in c.messages("/diagnostics")
            for status in msg.status
            if status.name.startswith(f"{node}:") and status.level == DiagnosticStatus.WARN
        ]
        after = settled_counts(c, node)

        # Deactivating with a frame in flight and one waiting: both are accounted for (nothing pending).
        def received() -> int:
            values = diagnostics_values(c, node)
            return int(values["frames_received"]) if values else -1

        for i in range(3):  # spaced so that the executor takes each (a burst would be lost in transport)
            c.image_pub.publish(image_message(image, stamp=(4, i)))
            c.wait_for(lambda i=i: received() >= after["received"] + i + 1, 2.0)
        assert c.wait_for(lambda: received() >= after["received"] + 2, 20)
        assert c.lifecycle("deactivate")
        inactive = settled_counts(c, node)
        # Active again: the totals carry on (the drop count used to restart at 0, leaving frames "pending").
        assert c.lifecycle("activate")
        reactivated = settled_counts(c, node)
    finally:
        c.close()
        log = stop_node(process)
    assert "Traceback" not in log, log

    delta = {k: after[k] - before[k] for k in COUNTERS}
    assert delta["received"] + delta["lost"] == burst + sentinels, (delta, sentinels)
    assert delta["sent"] == burst + sentinels
    assert delta["received"] == delta["processed"] + delta["dropped"] + delta["idle"] + delta["rejected"]
    assert delta["rejected"] == 0 and delta["idle"] == 0
    assert delta["dropped"] > 0, delta  # frames replaced in the slot while one was processed
    assert delta["lost"] > 0, delta  # frames that never reached the node's callback
    # The paced half alone offered four frames per frame processed (about 19 processed of its 75).
    assert delta["processed"] < burst // 2, delta
    assert inactive["pending"] == 0 and inactive["received"] >= after["received"] + 2
    handled = ("processed", "dropped", "idle", "rejected")
    assert inactive["received"] == sum(inactive[k] for k in handled), inactive
    assert reactivated == inactive, (reactivated, inactive)
    # While the burst was in the diagnostics window the node said it could not keep up, and what would help.
    assert any("input_size (now 256x256)" in w and "frames/s sent" in w for w in warnings), warnings


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_node_through_the_shutdown_transition(weights: Path, stop: str) -> None:
    """Ctrl-C or SIGTERM: the node takes the lifecycle shutdown transition before it exits (exit 0), so
    /diagnostics gets its final STALE status at once (rclpy's own handler shut the context first: nothing
    could be published, and aggregators waited for their timeout)."""
    import signal

    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    process = start_node(
        "-p", f"weights:={weights}", "-p", "autostart:=true", name=f"signalled_{stop.lower()}"
    )
    c = Client(f"signalled_{stop.lower()}")
    try:
        c.subscribe("/diagnostics", DiagnosticArray)

        def statuses() -> list[Any]:
            return [s for m in c.messages("/diagnostics") for s in m.status if "signalled" in s.name]

        assert c.wait_for(lambda: any("active" in s.message for s in statuses()), 60), statuses()
        log = stop_node(process, getattr(signal, stop))
        assert process.returncode == 0, log
        assert "stopping on a signal: shutdown transition" in log and "Traceback" not in log, log
        assert c.wait_for(lambda: any(s.level == DiagnosticStatus.STALE for s in statuses()), 5), statuses()
        final = [s for s in statuses() if s.level == DiagnosticStatus.STALE]
        assert final[-1].message.startswith("finalized"), final[-1]
    finally:
        c.close()
        stop_node(process)


def test_a_signal_during_configure_stops_the_node_there() -> None:
    """Ctrl-C while autostart configures (the demo weights load for a second or more): the node stops there,
    without activating first (the signal used to wait for configure and activate to finish, and a slow
    configure outlived launch's SIGTERM and met its SIGKILL), and still exits 0 with its final status."""
    import os
    import signal

    process = start_node(
        "-p", f"weights:={REPO / 'demo' / 'mcn_demo.safetensors'}", "-p", "autostart:=true", name="early_node"
    )  # fmt: skip
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    # The node says when configure starts loading the weights.
    while time.monotonic() < deadline and not any("configuring: loading" in line for line in lines):
        lines.extend(process.stdout.readlines())
        time.sleep(0.01)
    assert any("configuring: loading" in line for line in lines), "".join(lines)
    process.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    try:
        process.wait(timeout=30)
    finally:
        log = "".join(lines) + stop_node(process)
    assert process.returncode == 0 and time.monotonic() - signalled < 30, log
    assert "stopping on a signal" in log and "Traceback" not in log, log
    assert "active: listening" not in log, log  # stopped in configure, not after activating
