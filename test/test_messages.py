"""The project's messages: vision_msgs wire identity, the pose messages' layout, a real DDS round trip."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from rostools import rclpy_node, read_json_lines, start_script

pytestmark = pytest.mark.usefixtures("ros")

# Type hashes of upstream vision_msgs 4.1.1 (identical on Humble, Jazzy and Kilted; ../shared/ENVIRONMENT.md).
UPSTREAM_VISION_MSGS_HASHES = {
    "BoundingBox2D": "RIHS01_008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "BoundingBox2DArray": "RIHS01_2464e82838009386d371b523211c21c91d74d313fcdd6788223c531d621cf691",
    "BoundingBox3D": "RIHS01_bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "BoundingBox3DArray": "RIHS01_a81938db9576b10c2eecd7c5a5da3eac496efd00221b25ed051dfbc81fb56da6",
    "Classification": "RIHS01_f74db28d0eaef3afb78f48bf2161cd709a1383a0309d3454383b25be11345143",
    "Detection2D": "RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "Detection2DArray": "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "Detection3D": "RIHS01_ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "Detection3DArray": "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
    "LabelInfo": "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "ObjectHypothesis": "RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "ObjectHypothesisWithPose": "RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc",
    "Point2D": "RIHS01_eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "Pose2D": "RIHS01_b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "VisionClass": "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
    "VisionInfo": "RIHS01_95d3116a17484ad91c9a2686e1d54890bbfc3ff6c6a2de137738c4950d45d284",
}


def generated_hashes(package: str) -> dict[str, str]:
    """Type hashes that rosidl wrote into <share>/<package>/msg/*.json for the package in use."""
    from ament_index_python.packages import get_package_share_directory

    hashes = {}
    for path in sorted((Path(get_package_share_directory(package)) / "msg").glob("*.json")):
        entries = json.loads(path.read_text())["type_hashes"]
        own = f"{package}/msg/{path.stem}"
        hashes[path.stem] = next(e["hash_string"] for e in entries if e["type_name"] == own)
    return hashes


def test_vision_msgs_is_wire_identical_to_upstream() -> None:
    assert generated_hashes("vision_msgs") == UPSTREAM_VISION_MSGS_HASHES


def test_pose_message_layout() -> None:
    from mcn_ros.model.labels import KEYPOINT_NAMES
    from mcn_ros.msg import HumanPose2D, Keypoint2D

    pose = HumanPose2D()
    assert len(pose.keypoints) == HumanPose2D.NUM_KEYPOINTS == len(KEYPOINT_NAMES) == 17
    for index, name in enumerate(KEYPOINT_NAMES):
        assert getattr(HumanPose2D, name.upper()) == index
    # A fixed-size array in the wire format: consumers can rely on 17 slots in every message.
    assert HumanPose2D.get_fields_and_field_types()["keypoints"] == "mcn_ros/Keypoint2D[17]"
    assert Keypoint2D.get_fields_and_field_types() == {
        "x": "float",
        "y": "float",
        "score": "float",
        "valid": "boolean",
    }


def make_messages() -> dict[str, object]:
    """One message of every type the node publishes, with recognisable content."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from vision_msgs.msg import (
        Detection2D,
        Detection2DArray,
        LabelInfo,
        ObjectHypothesisWithPose,
        VisionClass,
    )

    from mcn_ros.msg import HumanPose2D, HumanPose2DArray, Keypoint2D, PoseInfo

    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = 1234, 5678

    detection = Detection2D(header=header, id="")
    detection.bbox.center.position.x, detection.bbox.center.position.y = 10.5, 20.25
    detection.bbox.size_x, detection.bbox.size_y = 4.0, 8.0
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = "2", 0.75
    detection.results = [hypothesis]

    pose = HumanPose2D(score=0.9)
    pose.keypoints = [Keypoint2D(x=float(i), y=float(2 * i), score=0.5, valid=i % 2 == 0) for i in range(17)]

    image = Image(header=header, height=4, width=6, encoding="mono8", step=6)
    image.data = np.arange(24, dtype=np.uint8).tobytes()
    return {
        "/rt/detections": Detection2DArray(header=header, detections=[detection]),
        "/rt/label_info": LabelInfo(header=header, class_map=[VisionClass(class_id=2, class_name="car")]),
        "/rt/poses": HumanPose2DArray(header=header, poses=[pose]),
        "/rt/pose_info": PoseInfo(header=header, keypoint_names=["nose"], skeleton_from=[0], skeleton_to=[1]),
        "/rt/segmentation": image,
    }


def test_every_published_type_crosses_dds_between_processes() -> None:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    messages = make_messages()
    types = {
        topic: f"{type(msg).__module__.split('.')[0]}/msg/{type(msg).__name__}"
        for topic, msg in messages.items()
    }
    latched = {"/rt/label_info", "/rt/pose_info"}
    echo = start_script(
        "echo.py",
        "--timeout",
        "30",
        *[f"{t}={types[t]}{'@latched' if t in latched else ''}" for t in messages],
    )
    with rclpy_node("round_trip_publisher") as node:
        publishers = {}
        for topic, msg in messages.items():
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            if topic in latched:
                qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
            publishers[topic] = node.create_publisher(type(msg), topic, qos)
        # Latched topics are published once; the others until the echo process has them all.
        for topic in latched:
            publishers[topic].publish(messages[topic])
        deadline = time.monotonic() + 30
        while echo.poll() is None and time.monotonic() < deadline:
            for topic, publisher in publishers.items():
                if topic not in latched and publisher.get_subscription_count() > 0:
                    publisher.publish(messages[topic])
            time.sleep(0.2)
        rows = read_json_lines(echo, timeout=10)

    got = {row["topic"]: row for row in rows if "topic" in row}
    assert set(got) == set(messages), f"missing: {set(messages) - set(got)}"
    assert got["/rt/detections"]["type_hashes"] == [UPSTREAM_VISION_MSGS_HASHES["Detection2DArray"]]
    assert got["/rt/label_info"]["type_hashes"] == [UPSTREAM_VISION_MSGS_HASHES["LabelInfo"]]
    for row in got.values():
        header = row["message"]["header"]
        assert header == {"stamp": {"sec": 1234, "nanosec": 5678}, "frame_id": "camera_optical"}
    detection = got["/rt/detections"]["message"]["detections"][0]
    assert detection["bbox"]["center"]["position"] == {"x": 10.5, "y": 20.25}
    assert detection["results"][0]["hypothesis"] == {"class_id": "2", "score": 0.75}
    keypoints = got["/rt/poses"]["message"]["poses"][0]["keypoints"]
    assert len(keypoints) == 17
    assert keypoints[3] == {"x": 3.0, "y": 6.0, "score": 0.5, "valid": False}
    assert got["/rt/label_info"]["message"]["class_map"] == [{"class_id": 2, "class_name": "car"}]
    assert got["/rt/pose_info"]["message"]["keypoint_names"] == ["nose"]
    image = got["/rt/segmentation"]["message"]
    assert (image["height"], image["width"], image["encoding"]) == (4, 6, "mono8")
    assert image["data"] == list(range(24))


# -- the converters of mcn_ros/ros/messages.py ------------------------------------------------------------
def header_of(sec: int = 7, frame: str = "cam") -> object:
    from std_msgs.msg import Header

    header = Header(frame_id=frame)
    header.stamp.sec = sec
    return header


def test_detections_message_boxes_class_ids_and_scores() -> None:
    from mcn_ros.model.results import Detections
    from mcn_ros.ros.messages import detections_message

    detections = Detections(
        boxes=np.array([[10, 20, 30, 60], [0.5, 1.5, 2.5, 2.0]], np.float32),
        scores=np.array([0.9, 0.25], np.float32),
        class_ids=np.array([3, 0], np.int64),
    )
    msg = detections_message(header_of(), detections)  # type: ignore[arg-type]
    assert (msg.header.stamp.sec, msg.header.frame_id) == (7, "cam")
    assert len(msg.detections) == 2
    first, second = msg.detections
    assert (first.bbox.center.position.x, first.bbox.center.position.y) == (20.0, 40.0)
    assert (first.bbox.size_x, first.bbox.size_y, first.bbox.center.theta) == (20.0, 40.0, 0.0)
    assert [d.results[0].hypothesis.class_id for d in msg.detections] == ["3", "0"]
    assert [d.results[0].hypothesis.score for d in msg.detections] == pytest.approx([0.9, 0.25])
    assert second.bbox.center.position.x == pytest.approx(1.5)
    assert second.bbox.size_y == pytest.approx(0.5)
    assert all(d.header.frame_id == "cam" and len(d.results) == 1 for d in msg.detections)
    assert detections_message(header_of(), Detections.empty()).detections == []  # type: ignore[arg-type]


def test_poses_message_marks_keypoints_under_the_threshold_invalid() -> None:
    from mcn_ros.model.results import Poses
    from mcn_ros.ros.messages import poses_message

    keypoints = np.zeros((2, 17, 3), np.float32)
    keypoints[:, :, 0] = np.arange(17)
    keypoints[:, :, 1] = 100 + np.arange(17)
    keypoints[0, :, 2] = np.arange(17) / 16  # exact in float32: 0.5 is slot 8
    keypoints[1, :, 2] = 0.5
    poses = Poses(
        boxes=np.array([[0, 0, 10, 20], [5, 5, 7, 9]], np.float32),
        scores=np.array([0.8, 0.4], np.float32),
        keypoints=keypoints,
    )
    msg = poses_message(header_of(9), poses, keypoint_threshold=0.5)  # type: ignore[arg-type]
    assert msg.header.stamp.sec == 9 and len(msg.poses) == 2
    first, second = msg.poses
    assert first.score == pytest.approx(0.8)
    assert (first.bbox.center.position.x, first.bbox.size_y) == (5.0, 20.0)
    assert [k.valid for k in first.keypoints] == [s >= 0.5 for s in keypoints[0, :, 2]]
    assert [k.valid for k in first.keypoints].index(True) == 8  # the threshold itself is valid
    assert all(k.valid for k in second.keypoints)  # exactly at the threshold
    assert (first.keypoints[4].x, first.keypoints[4].y) == (4.0, 104.0)
    assert first.keypoints[4].score == pytest.approx(0.25)
    stricter = poses_message(header_of(), poses, keypoint_threshold=0.51)  # type: ignore[arg-type]
    assert not any(k.valid for k in stricter.poses[1].keypoints)


def test_class_maps_are_mono8_up_to_255_classes_and_mono16_beyond() -> None:
    from mcn_ros.ros.images import class_map_encoding
    from mcn_ros.ros.messages import image_message

    small = np.array([[0, 1, 255], [3, 4, 5]], np.uint8)
    assert class_map_encoding(small) == "mono8"
    msg = image_message(header_of(), small, class_map_encoding(small))  # type: ignore[arg-type]
    assert (msg.height, msg.width, msg.step, msg.encoding) == (2, 3, 3, "mono8")
    assert bytes(msg.data) == small.tobytes()

    wide = np.array([[0, 256, 300], [1, 2, 65535]], np.uint16)
    assert class_map_encoding(wide) == "mono16"
    msg = image_message(header_of(), wide, class_map_encoding(wide))  # type: ignore[arg-type]
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.is_bigendian) == (2, 3, 6, "mono16", 0)
    back = np.frombuffer(bytes(msg.data), "<u2").reshape(2, 3)
    np.testing.assert_array_equal(back, wide)


def test_image_message_of_a_non_contiguous_view() -> None:
    from mcn_ros.ros.messages import image_message

    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    bgr = rgb[:, :, ::-1]  # a view with negative strides
    msg = image_message(header_of(), bgr, "bgr8")  # type: ignore[arg-type]
    assert (msg.height, msg.width, msg.step) == (4, 5, 15)
    assert bytes(msg.data) == np.ascontiguousarray(bgr).tobytes()


def test_label_and_pose_info() -> None:
    from mcn_ros.model.labels import KEYPOINT_NAMES, SKELETON
    from mcn_ros.ros.messages import label_info_message, pose_info_message, segmentation_label_info_message

    labels = label_info_message(header_of(), ["person", "car"], 0.3)  # type: ignore[arg-type]
    assert [(c.class_id, c.class_name) for c in labels.class_map] == [(0, "person"), (1, "car")]
    assert labels.threshold == pytest.approx(0.3)
    classes = segmentation_label_info_message(header_of(), ["person", "car"]).class_map  # type: ignore[arg-type]
    assert [(c.class_id, c.class_name) for c in classes] == [(0, "background"), (1, "person"), (2, "car")]
    info = pose_info_message(header_of(), 0.25)  # type: ignore[arg-type]
    assert list(info.keypoint_names) == list(KEYPOINT_NAMES)
    assert list(zip(info.skeleton_from, info.skeleton_to, strict=True)) == [tuple(e) for e in SKELETON]
    assert info.keypoint_threshold == pytest.approx(0.25)
