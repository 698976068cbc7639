"""Several cameras in one node: the batching policy on its own, then the real node over DDS."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from nodetools import Client, image_message, make_weights, start_node, stop_node

from mcn_ros.ros.batching import CameraSlots


class FakeClock:
    """A clock the test moves by hand (the slots' only notion of time besides the condition's waits)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_newer_frame_replaces_its_cameras_waiting_frame_only() -> None:
    slots: CameraSlots[str] = CameraSlots(["front", "back"])
    slots.put("front", "f1")
    slots.put("back", "b1")
    slots.put("front", "f2")
    assert (slots.dropped("front"), slots.dropped("back")) == (1, 0)
    assert slots.take_batch(timeout=0.0) == {"back": "b1", "front": "f2"}
    assert slots.take_batch(timeout=0.01) == {}


def test_the_batch_waits_for_live_cameras_only_and_never_past_the_timeout() -> None:
    clock = FakeClock()
    slots: CameraSlots[str] = CameraSlots(["front", "back", "dead"], live_s=1.0, clock=clock)
    slots.put("front", "f1")
    slots.put("back", "b1")
    slots.take_batch(timeout=0.0)
    # Both live cameras send again; "dead" never sent: the batch does not wait for it.
    slots.put("front", "f2")
    slots.put("back", "b2")
    assert slots.take_batch(timeout=0.0, batch_timeout_s=5.0) == {"front": "f2", "back": "b2"}

    # Only front is waiting; back is live, so the batch waits for it until it comes (from another thread).
    slots.put("front", "f3")
    threading.Timer(0.05, slots.put, args=("back", "b3")).start()
    assert slots.take_batch(timeout=0.0, batch_timeout_s=5.0) == {"front": "f3", "back": "b3"}

    # back goes quiet for longer than live_s: no more waiting for it.
    clock.now += 2.0
    slots.put("front", "f4")
    assert slots.take_batch(timeout=0.0, batch_timeout_s=5.0) == {"front": "f4"}


def test_a_straggler_is_waited_for_at_most_the_batch_timeout() -> None:
    slots: CameraSlots[str] = CameraSlots(["front", "back"])  # real clock
    slots.put("back", "b1")
    slots.take_batch(timeout=0.0)  # back is live now
    slots.put("front", "f1")
    assert slots.take_batch(timeout=0.0, batch_timeout_s=0.05) == {"front": "f1"}


def test_the_batch_waits_only_for_cameras_due_by_its_deadline_and_computed() -> None:
    """A 3 Hz camera held up a 30 Hz one by the whole batch timeout at each of its frames, and so did a
    camera nobody listens to (its frames are never computed): neither is waited for now."""
    import time

    slots: CameraSlots[str] = CameraSlots(["fast", "slow", "unwatched"], live_s=5.0)  # real clock
    slots.put("slow", "s1")
    slots.put("unwatched", "u1")
    slots.put("unwatched", "u2")  # sends all the time: its next frame is always due
    slots.take_batch(timeout=0.0)
    time.sleep(0.3)
    slots.put("slow", "s2")  # one frame every 0.3 s: the next not before the batch below goes
    slots.put("unwatched", "u3")
    slots.take_batch(timeout=0.0)

    def take(**kw: object) -> tuple[dict[str, str], float]:
        slots.put("fast", "f")
        start = time.monotonic()
        batch = slots.take_batch(timeout=0.0, batch_timeout_s=0.15, **kw)  # type: ignore[arg-type]
        return batch, time.monotonic() - start

    watched = lambda camera: camera != "unwatched"  # noqa: E731
    batch, took = take(waits_for=watched)
    assert batch == {"fast": "f"} and took < 0.1, took  # slow not due, unwatched not computed
    slots.put("unwatched", "u4")
    slots.take_batch(timeout=0.0)
    batch, took = take()  # without waits_for, the unwatched camera is waited for: the whole timeout
    assert batch == {"fast": "f"} and took >= 0.15
    # 0.15 s or more after slow's last frame, its next (0.3 s after it) is due within a batch's timeout.
    threading.Timer(0.05, slots.put, args=("slow", "s3")).start()
    batch, _ = take(waits_for=watched)
    assert batch == {"fast": "f", "slow": "s3"}

    def broken(camera: str) -> bool:
        raise RuntimeError("publisher destroyed")  # a camera torn down under the waiting batch

    slots.put("unwatched", "u5")
    slots.take_batch(timeout=0.0)
    batch, took = take(waits_for=broken)  # asked once, taken as wanted: the batch waits, nothing raises
    assert batch == {"fast": "f"} and took >= 0.15


def test_a_size_limit_serves_the_longest_waiting_cameras_first() -> None:
    clock = FakeClock()
    slots: CameraSlots[str] = CameraSlots(["a", "b", "c"], clock=clock)
    for name in ("b", "c", "a"):
        slots.put(name, name)
        clock.now += 0.01
    assert slots.take_batch(timeout=0.0, max_size=1) == {"b": "b"}
    assert slots.take_batch(timeout=0.0, max_size=2) == {"c": "c", "a": "a"}


def test_a_size_limit_serves_busy_cameras_in_turn() -> None:
    """A synchronised rig: every camera sends a new frame, in the same order, before each take. The
    camera whose frame is replaced first each round must not be the only one served."""
    clock = FakeClock()
    slots: CameraSlots[str] = CameraSlots(["a", "b", "c"], clock=clock)
    served = []
    for round_index in range(9):
        for name in ("a", "b", "c"):
            slots.put(name, f"{name}{round_index}")
            clock.now += 0.001
        served += list(slots.take_batch(timeout=0.0, max_size=1))
    assert served == ["a", "b", "c"] * 3
    # every frame was served, replaced in its slot (dropped) or is still waiting (a's and b's last)
    assert sum(slots.dropped(name) for name in "abc") == 27 - 9 - 2


def test_camera_names_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        CameraSlots(["front", "front"])
    with pytest.raises(ValueError, match="at least one"):
        CameraSlots([])


# -- the real node over DDS -------------------------------------------------------------------------------
SCORE = 0.05
CAMERAS = {"front": (48, 80), "left": (64, 64), "back": (40, 100)}  # camera -> image (height, width)


def camera_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    cv2.rectangle(image, (5, 5), (width // 2, height // 2), (240, 30, 30), -1)
    return image


def camera_status(c: Client, camera: str) -> dict[str, str]:
    for msg in reversed(c.messages("/diagnostics")):
        for status in msg.status:
            if status.name == f"cameras_node: camera {camera}":
                return {kv.key: kv.value for kv in status.values}
    return {}


def node_status(c: Client) -> dict[str, str]:
    for msg in reversed(c.messages("/diagnostics")):
        for status in msg.status:
            if status.name == "cameras_node: inference":
                return {kv.key: kv.value for kv in status.values}
    return {}


def publish_until(
    c: Client, frames: dict[str, object], condition: Callable[[], bool], timeout: float
) -> bool:
    """Publish each camera's frame on /<camera>/image, all in one go every 0.3 s, until ``condition()``."""
    import time

    from sensor_msgs.msg import Image

    publishers = {name: c.node.create_publisher(Image, f"/{name}/image", 10) for name in frames}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in publishers.values()):
                for name, publisher in publishers.items():
                    publisher.publish(frames[name])
            if c.wait_for(condition, 0.3):
                return True
        return condition()
    finally:
        for publisher in publishers.values():
            c.node.destroy_publisher(publisher)


def boxes_of(message: object) -> np.ndarray:
    detections = message.detections  # type: ignore[attr-defined]
    centres = np.array([[d.bbox.center.position.x, d.bbox.center.position.y] for d in detections])
    sizes = np.array([[d.bbox.size_x, d.bbox.size_y] for d in detections])
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).reshape(-1, 4)


@pytest.mark.usefixtures("ros")
def test_three_cameras_of_different_sizes_in_one_node(tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    from mcn_ros.model.predictor import Predictor
    from mcn_ros.msg import HumanPose2DArray

    weights = make_weights(tmp_path / "model.safetensors")
    cameras = [*CAMERAS, "spare"]  # nobody listens to the spare camera
    process = start_node(
        "-p", f"weights:={weights}", "-p", f"cameras:=[{','.join(cameras)}]",
        "-p", f"score_threshold:={SCORE}", "-p", f"pose_score_threshold:={SCORE}",
        "-p", "batch_timeout_ms:=200.0", "-p", "diagnostics_period:=0.2", name="cameras_node",
    )  # fmt: skip
    c = Client("cameras_node")
    try:
        c.subscribe("/diagnostics", DiagnosticArray)
        # Driven as a lifecycle manager does, with time between the steps: the diagnostics timer runs while
        # the named cameras are configured and inactive (it used to look them up in slots that only
        # activate made, raise KeyError and end the node).
        assert c.lifecycle("configure")
        assert c.wait_for(lambda: camera_status(c, "spare").get("frames_received") == "0", 10)
        c.clear_topic("/diagnostics")
        assert c.wait_for(lambda: bool(camera_status(c, "back")), 5)
        assert c.lifecycle("activate")
        for camera in CAMERAS:
            c.subscribe(f"{camera}/detections", Detection2DArray)
            c.subscribe(f"{camera}/poses", HumanPose2DArray)
            c.subscribe(f"{camera}/segmentation", Image)
        images = {name: camera_image(*size, seed=i) for i, (name, size) in enumerate(CAMERAS.items())}
        frames = {
            name: image_message(images[name], stamp=(10 + i, 5), frame=f"{name}_optical")
            for i, name in enumerate(CAMERAS)
        }
        # One camera sends BGR: a batch then mixes colour orders, which the node converts to one.
        frames["back"] = image_message(images["back"][..., ::-1].copy(), "bgr8", (12, 5), "back_optical")
        frames["spare"] = image_message(camera_image(32, 32, seed=9), stamp=(99, 0), frame="spare_optical")

        def all_answered() -> bool:
            return all(
                c.messages(f"{camera}/{topic}")
                for camera in CAMERAS
                for topic in ("detections", "poses", "segmentation")
            )

        assert publish_until(c, frames, all_answered, 90), sorted(c.received)
        predictor = Predictor.from_weights(weights, device="cpu")
        for i, camera in enumerate(CAMERAS):
            for topic in ("detections", "poses", "segmentation"):
                header = c.messages(f"{camera}/{topic}")[-1].header
                assert (header.stamp.sec, header.frame_id) == (10 + i, f"{camera}_optical"), (camera, topic)
            # The camera's boxes are the model runtime's on that image alone.
            expected = predictor.predict(images[camera], score_threshold=SCORE, pose_score_threshold=SCORE)
            assert expected.detections is not None and len(expected.detections) > 0
            received = c.messages(f"{camera}/detections")[-1]
            np.testing.assert_allclose(boxes_of(received), expected.detections.boxes, atol=1e-3)
            segmentation = c.messages(f"{camera}/segmentation")[-1]
            assert (segmentation.height, segmentation.width) == CAMERAS[camera]

        # The frames of several cameras went through one forward pass. The diagnostics come once a second,
        # so the latest may predate the answers above: keep the cameras sending until one reports a batch.
        def batched() -> bool:
            entries = node_status(c).get("batch_sizes", "")
            return any(int(entry.split(":")[0]) >= 2 for entry in entries.split(",") if entry)

        assert publish_until(c, frames, batched, 60), node_status(c)

        # The spare camera's frames arrived, and cost no head computation. The latest status may show its
        # last frame still waiting in the slot (pending): wait for the next one to count it idle.
        def spare_idle() -> bool:
            return int(camera_status(c, "spare").get("frames_idle", "0")) > 0

        assert c.wait_for(spare_idle, 10), camera_status(c, "spare")
        spare = camera_status(c, "spare")
        assert int(spare["frames_received"]) > 0, spare
        assert spare["frames_processed"] == "0" and spare["tasks_computed"] == "", spare

        # A bad frame on one camera: rejected there alone; the other cameras of the batch are still served.
        bad = image_message(images["left"], stamp=(77, 0), frame="left_optical")
        bad.encoding = "yuv_unheard_of"
        frames = {**frames, "left": bad}
        frames["front"] = image_message(images["front"], stamp=(78, 0), frame="front_optical")
        frames["back"] = image_message(images["back"][..., ::-1].copy(), "bgr8", (79, 0), "back_optical")
        c.clear()

        def others_served_left_rejected() -> bool:
            front, back = c.messages("front/detections"), c.messages("back/detections")
            left = camera_status(c, "left")
            return (
                any(m.header.stamp.sec == 78 for m in front)
                and any(m.header.stamp.sec == 79 for m in back)
                and "yuv_unheard_of" in left.get("last_error", "")
            )

        assert publish_until(c, frames, others_served_left_rejected, 60), camera_status(c, "left")
        assert not any(m.header.stamp.sec == 77 for m in c.messages("left/detections"))
        assert int(camera_status(c, "left")["frames_rejected"]) > 0
        assert camera_status(c, "front")["frames_rejected"] == "0"
    finally:
        c.close()
        log = stop_node(process)
    assert "Traceback" not in log, log
    assert "listening on /front/image, /left/image, /back/image, /spare/image" in log, log


def test_camera_names_are_ros_name_tokens() -> None:
    """A non-ASCII letter passed the check and failed later, in topic creation or in rcl's remap lexer."""
    from mcn_ros.ros.camera_names import check_camera_names

    assert check_camera_names(["front", "rear_2", "_x"]) is None
    for bad in ("caméra", "hïnten", "2nd", "a-b", "", "a b", "٣"):
        reason = check_camera_names(["front", bad])
        assert reason is not None and repr(bad) in reason and "letters, digits and underscores" in reason


@pytest.mark.usefixtures("ros")
def test_one_named_camera_has_the_node_status_and_an_unused_image_remap_is_named(tmp_path: Path) -> None:
    """With one named camera the node's status (batch sizes, device) was missing, unlike with several;
    `-r image:=...` (what a single camera takes) is unused with named cameras, which the log now says."""
    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection2DArray

    weights = make_weights(tmp_path / "model.safetensors")
    process = start_node(
        "-p", f"weights:={weights}", "-p", "cameras:=[solo]", "-p", "autostart:=true",
        "-p", f"score_threshold:={SCORE}", "-p", "diagnostics_period:=0.2", "-r", "image:=/ignored",
        name="cameras_node",
    )  # fmt: skip
    c = Client("cameras_node")
    try:
        c.subscribe("/diagnostics", DiagnosticArray)
        c.subscribe("solo/detections", Detection2DArray)
        frame = image_message(camera_image(48, 80, seed=1), stamp=(5, 0), frame="solo_optical")
        assert publish_until(c, {"solo": frame}, lambda: bool(c.messages("solo/detections")), 60)
        assert c.wait_for(lambda: node_status(c).get("batch_sizes", "").startswith("1:"), 10), node_status(c)
        assert node_status(c)["cameras"] == "solo" and camera_status(c, "solo")
    finally:
        c.close()
        log = stop_node(process)
    assert "the remapping of 'image' (to /ignored) is unused: with named cameras" in log, log
    assert "remap those (solo/image)" in log, log
