"""rosbag tooling without DDS: bags made from COCO images, type hashes, messages <-> Results, bookkeeping,
and every bad input ending in one message and exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from bagtools import camera_bag, image, synthetic_coco, with_exif_orientation, write_bag
from needs import unavailable

from mcn_ros.bag import BagError
from mcn_ros.bag.__main__ import main
from mcn_ros.bag.bagio import (
    header_stamp_ns,
    read_camera_bag,
    sequence_length_after_header,
    staged_output,
    with_stamp,
)
from mcn_ros.bag.ground_truth import read_ground_truth
from mcn_ros.bag.pacing import FrameRecord, rate_schedule, read_records, write_records
from mcn_ros.bag.timing import timing_summary
from mcn_ros.bag.typestore import message_dir, typestore

START_NS = 1_700_000_000 * 1_000_000_000


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_coco(tmp_path_factory.mktemp("coco"), images=4)


@pytest.fixture(scope="module")
def bag(coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return camera_bag(coco, tmp_path_factory.mktemp("bags") / "cam", rate_hz=20.0, frame_id="front")


def _ament_hash(package: str, name: str) -> str:
    data = json.loads((message_dir(package) / f"{name}.json").read_text())
    return next(h["hash_string"] for h in data["type_hashes"] if h["type_name"] == f"{package}/msg/{name}")


@pytest.mark.parametrize(("storage", "compressed"), [("mcap", False), ("sqlite3", True)])
def test_make_bag_round_trip(coco: Path, tmp_path: Path, storage: str, compressed: bool, ros: None) -> None:
    from rosbags.rosbag2 import Reader

    out = camera_bag(coco, tmp_path / "bag", storage=storage, compressed=compressed, rate_hz=5.0)
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    with Reader(out) as reader:
        (connection,) = reader.connections
        assert connection.msgtype == msgtype
        assert connection.topic == "/camera/image_raw" + ("/compressed" if compressed else "")
        # The standard definition's hash, as the ROS build generated it for sensor_msgs.
        assert connection.digest == _ament_hash("sensor_msgs", msgtype.rsplit("/", 1)[1])
        rows = [(t, raw) for _, t, raw in reader.messages()]
    assert (out / f"bag.{'mcap' if storage == 'mcap' else 'db3'}").is_file()

    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image

    ground_truth = read_ground_truth(out)
    files = {im["id"]: im["file_name"] for im in ground_truth.dataset["images"]}
    stamps = []
    for log_time, raw in rows:
        message = deserialize_message(raw, CompressedImage if compressed else Image)
        stamp = message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec
        assert stamp == log_time and message.header.frame_id == "camera"
        stamps.append(stamp)
        path = coco / "images" / "val" / files[ground_truth.image_of_stamp[stamp]]
        if compressed:
            assert bytes(message.data) == path.read_bytes()  # the JPEG file as it is
        else:
            pixels = np.frombuffer(message.data, np.uint8).reshape(message.height, message.width, 3)
            assert message.encoding == "rgb8"
            np.testing.assert_array_equal(pixels, cv2.imread(str(path))[:, :, ::-1])
    assert stamps == [START_NS + i * 200_000_000 for i in range(4)]
    assert [ground_truth.image_of_stamp[s] for s in stamps] == [1, 2, 3, 4]
    assert sorted(files) == [1, 2, 3, 4]
    annotations = ground_truth.dataset["annotations"]
    assert annotations and {a["image_id"] for a in annotations} <= {1, 2, 3, 4}
    assert any("keypoints" in a for a in annotations)  # person keypoints merged into the instances


def test_a_compressed_bag_holds_jpegs_as_their_annotations_see_them(
    coco: Path, tmp_path: Path, ros: None
) -> None:
    """A JPEG with an EXIF orientation is annotated as oriented (cv2.imread applies it, as training does),
    while the node decodes frames as stored: such a file is re-encoded oriented, the others go in as they
    are."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import CompressedImage

    from mcn_ros.ros.images import compressed_to_array

    root = tmp_path / "coco"
    shutil.copytree(coco, root)
    images = sorted((root / "images" / "val").iterdir())
    oriented = cv2.imread(str(images[0]))
    stored = cv2.rotate(oriented, cv2.ROTATE_90_COUNTERCLOCKWISE)  # orientation 6 turns it back clockwise
    jpeg = with_exif_orientation(
        cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes(), 6
    )
    images[0].write_bytes(jpeg)
    assert cv2.imread(str(images[0])).shape == oriented.shape != stored.shape
    out = camera_bag(root, tmp_path / "bag", compressed=True)
    with Reader(out) as reader:
        frames = [deserialize_message(raw, CompressedImage) for _, _, raw in reader.messages()]
    pixels, _ = compressed_to_array(frames[0])
    assert pixels.shape == oriented.shape
    assert np.abs(pixels.astype(int) - cv2.imread(str(images[0])).astype(int)).mean() < 3
    assert bytes(frames[1].data) == images[1].read_bytes()  # no EXIF: the file as it is


def test_bag_tooling_runs_without_rclpy() -> None:
    """Only mcn_ros/ros/ imports rclpy: bag I/O, bookkeeping, evaluation and the CLI load without it."""
    modules = [
        "__main__",
        "bagio",
        "convert",
        "evaluate",
        "ground_truth",
        "make_bag",
        "pacing",
        "replay",
        "run",
    ]
    code = "import sys; sys.modules['rclpy'] = None\n" + "\n".join(f"import mcn_ros.bag.{m}" for m in modules)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_typestore_hashes_are_the_generated_ones() -> None:
    store = typestore()
    for package in ("vision_msgs", "mcn_ros"):
        names = sorted(p.stem for p in message_dir(package).glob("*.msg"))
        if not any(message_dir(package).glob("*.json")):
            if os.environ.get("ROS_DISTRO") == "humble":  # type descriptions and hashes came with Iron
                pytest.skip("Humble generates no type descriptions, and its bags carry no type hashes")
            unavailable(
                "MCN_REQUIRE_ROS",
                f"{package} has no generated .json type descriptions: the bags' type hashes are unchecked",
                f"{package} has no generated .json type descriptions here (not built)",
            )
        assert names
        for name in names:
            assert store.hash_rihs01(f"{package}/msg/{name}") == _ament_hash(package, name), name


def test_cdr_header_helpers(ros: None) -> None:
    from rclpy.serialization import serialize_message
    from vision_msgs.msg import Detection2D, Detection2DArray

    array = Detection2DArray(detections=[Detection2D()] * 3)
    array.header.frame_id = "odd_len"  # the sequence length sits after the padded frame_id
    array.header.stamp.sec, array.header.stamp.nanosec = 1_700_000_000, 5
    raw = serialize_message(array)
    assert header_stamp_ns(raw) == START_NS + 5
    assert sequence_length_after_header(raw) == 3
    moved = with_stamp(raw, 42)
    assert header_stamp_ns(moved) == 42
    back = typestore().deserialize_cdr(moved, "vision_msgs/msg/Detection2DArray")
    assert (back.header.stamp.sec, back.header.stamp.nanosec, len(back.detections)) == (0, 42, 3)


def test_node_messages_convert_back_to_results(ros: None) -> None:
    """ros/messages.py's messages (rclpy) -> CDR -> rosbags -> convert.py gives the Results back."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from mcn_ros.bag.convert import (
        ClassIndex,
        class_map_from_message,
        detections_from_message,
        label_map,
        poses_from_message,
    )
    from mcn_ros.model.results import Detections, Poses
    from mcn_ros.ros import messages

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (3, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(1, 20, (3, 2)).astype(np.float32)], axis=1)
    detections = Detections(boxes, np.array([0.9, 0.5, 0.2], np.float32), np.array([1, 0, 1]))
    keypoints = rng.uniform(0, 60, (2, 17, 3)).astype(np.float32)
    poses = Poses(boxes[:2], np.array([0.8, 0.4], np.float32), keypoints)
    class_map = rng.integers(0, 3, (7, 9)).astype(np.uint8)
    header = Header(frame_id="cam")
    store = typestore()

    def through_bag(message: object, msgtype: str) -> object:
        return store.deserialize_cdr(serialize_message(message), msgtype)

    labels = through_bag(
        messages.label_info_message(header, ["person", "car"], 0.3), "vision_msgs/msg/LabelInfo"
    )
    index = ClassIndex(["car", "person"], label_map(labels))  # another order than the node's: mapped by name
    got = detections_from_message(
        through_bag(messages.detections_message(header, detections), "vision_msgs/msg/Detection2DArray"),
        index,
    )
    np.testing.assert_allclose(got.boxes, boxes, atol=1e-4)
    np.testing.assert_allclose(got.scores, detections.scores)
    assert got.class_ids.tolist() == [0, 1, 0]
    got_poses = poses_from_message(
        through_bag(messages.poses_message(header, poses, 0.1), "mcn_ros/msg/HumanPose2DArray")
    )
    np.testing.assert_allclose(got_poses.keypoints, keypoints, atol=1e-4)
    np.testing.assert_allclose(got_poses.boxes, boxes[:2], atol=1e-4)
    got_map = class_map_from_message(
        through_bag(messages.image_message(header, class_map, "mono8"), "sensor_msgs/msg/Image")
    )
    np.testing.assert_array_equal(got_map, class_map)


def test_pacing_bookkeeping(tmp_path: Path) -> None:
    offsets, period = rate_schedule([10, 110, 210, 310], 2.0)
    assert offsets == [0, 50, 100, 150] and period == 50
    ms = 1_000_000
    records = [
        FrameRecord(0, 1, 7, 0, 50 * ms, {"detections": 20 * ms, "segmentation": 30 * ms}, {"detections": 2}),
        FrameRecord(1, 2, 8, 50 * ms, 100 * ms, {"detections": 120 * ms, "segmentation": 130 * ms}),  # late
        FrameRecord(2, 3, 9, 100 * ms, 150 * ms, {"detections": None, "segmentation": None}),  # dropped
        FrameRecord(
            3, 4, None, 150 * ms, 200 * ms, {"detections": 170 * ms, "segmentation": None}
        ),  # incomplete
    ]
    write_records(tmp_path / "f.jsonl", records)
    assert read_records(tmp_path / "f.jsonl") == records
    summary = timing_summary(records, {"detections": "/n/detections", "segmentation": "/n/segmentation"})
    # Frame 3 is incomplete, not late: its detections came in time, its segmentation never.
    assert summary["frames"] == {"sent": 4, "processed": 3, "dropped": 1, "incomplete": 1, "late": 1}
    assert summary["frames"]["sent"] == summary["frames"]["processed"] + summary["frames"]["dropped"]
    detections = summary["latency_by_topic_ms"]["/n/detections"]
    assert (detections["max"], detections["n"], detections["missing"]) == (70.0, 3, 1)
    assert (summary["latency_ms"]["n"], summary["latency_ms"]["missing"]) == (
        2,
        2,
    )  # frames with every output


def test_staged_output_never_replaces_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "earlier.txt").write_text("keep")
    with pytest.raises(BagError, match="exists already"), staged_output(final):
        pass
    with pytest.raises(RuntimeError), staged_output(final, overwrite=True) as staged:
        staged.mkdir()
        (staged / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in final.iterdir()] == ["earlier.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    with staged_output(final, overwrite=True) as staged:
        staged.mkdir()
        (staged / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]


def test_staged_output_can_keep_what_a_failed_run_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    final = tmp_path / "run"
    kept = tmp_path / f"run.failed-{os.getpid()}"
    with pytest.raises(BagError) as error, staged_output(final, keep_failed=True) as staged:
        staged.mkdir()
        (staged / "node.log").write_text("log")
        raise BagError("lockstep: frame 7 not answered")
    assert str(error.value) == f"lockstep: frame 7 not answered; what it wrote before failing is in {kept}"
    assert not final.exists() and (kept / "node.log").read_text() == "log"
    with pytest.raises(KeyboardInterrupt), staged_output(final, keep_failed=True) as staged:
        staged.mkdir()
        (staged / "node.log").write_text("again")
        raise KeyboardInterrupt
    assert (kept / "node.log").read_text() == "again"  # the same process's earlier one replaced
    assert capsys.readouterr().err.strip() == f"KeyboardInterrupt: what it wrote before failing is in {kept}"
    with pytest.raises(BagError, match=r"^nothing yet$"), staged_output(tmp_path / "b", keep_failed=True):
        raise BagError("nothing yet")  # nothing written: nothing kept, the message as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]


# -- bad input: one message, exit status 2, nothing replaced -----------------------------------------------
def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *phrases: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def test_bag_without_camera_topic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    types = typestore().types
    chatter = write_bag(
        tmp_path / "chatter", "/chatter", "std_msgs/msg/String", [(1, types["std_msgs/msg/String"](data="x"))]
    )
    _fails(
        capsys, ["replay", "--bag", str(chatter), "--out", str(tmp_path / "o")], "no camera topic", "/chatter"
    )
    _fails(
        capsys,
        ["replay", "--bag", str(chatter), "--topic", "/camera", "--out", str(tmp_path / "o")],
        "has no topic /camera",
    )


def test_topic_of_the_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    types = typestore().types
    chatter = write_bag(
        tmp_path / "chatter", "/cam", "std_msgs/msg/String", [(1, types["std_msgs/msg/String"](data="x"))]
    )
    _fails(
        capsys,
        ["replay", "--bag", str(chatter), "--topic", "/cam", "--out", str(tmp_path / "o")],
        "/cam", "std_msgs/msg/String", "expected one of sensor_msgs/msg/Image",
    )  # fmt: skip


@pytest.mark.parametrize("damage", ["truncated", "no metadata", "missing"])
def test_truncated_or_corrupt_bag(
    bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bag, broken)
    if damage == "truncated":
        storage = broken / "cam.mcap"
        os.truncate(storage, storage.stat().st_size // 2)
        expected = "truncated or corrupt"
    elif damage == "no metadata":
        (broken / "metadata.yaml").unlink()
        expected = "not a rosbag2 folder"
    else:
        shutil.rmtree(broken)
        expected = "does not exist"
    _fails(capsys, ["replay", "--bag", str(broken), "--out", str(tmp_path / "o")], str(broken), expected)
    assert not (tmp_path / "o").exists()


def test_truncated_sqlite3_bag(coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = camera_bag(coco, tmp_path / "lite", storage="sqlite3")
    storage = bag / "lite.db3"
    os.truncate(storage, storage.stat().st_size // 2)
    _fails(capsys, ["replay", "--bag", str(bag), "--out", str(tmp_path / "o")], "truncated or corrupt")


def test_ground_truth_that_does_not_match(
    bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    shutil.copytree(bag, other)
    data = json.loads((other / "ground_truth.json").read_text())
    data["frames"][2]["stamp"]["nanosec"] += 1
    (other / "ground_truth.json").write_text(json.dumps(data))
    _fails(
        capsys,
        ["replay", "--bag", str(other), "--out", str(tmp_path / "o")],
        "does not match",
        "1 of 4 frames",
    )
    data = json.loads((bag / "ground_truth.json").read_text())
    data["coco"]["images"][0]["width"] = 64
    (other / "ground_truth.json").write_text(json.dumps(data))
    _fails(
        capsys, ["replay", "--bag", str(other), "--out", str(tmp_path / "o")], "does not match", "is 128x96"
    )
    (other / "ground_truth.json").write_text("{not json")
    _fails(capsys, ["replay", "--bag", str(other), "--out", str(tmp_path / "o")], "not readable JSON")
    # One image the ground truth of two frames (a looped sequence written by hand): the results are kept per
    # image, so the second would replace the first; refused, as are two frames with one stamp.
    data = json.loads((bag / "ground_truth.json").read_text())
    data["frames"][3]["image_id"] = data["frames"][1]["image_id"]
    (other / "ground_truth.json").write_text(json.dumps(data))
    _fails(
        capsys,
        ["replay", "--bag", str(other), "--out", str(tmp_path / "o")],
        "is the ground truth of 2 frames",
    )
    data = json.loads((bag / "ground_truth.json").read_text())
    data["frames"][3]["stamp"] = data["frames"][1]["stamp"]
    (other / "ground_truth.json").write_text(json.dumps(data))
    _fails(capsys, ["replay", "--bag", str(other), "--out", str(tmp_path / "o")], "the same stamp")
    # Annotations are checked as training and evaluation read them, before anything is replayed.
    data = json.loads((bag / "ground_truth.json").read_text())
    annotation = data["coco"]["annotations"][1]
    annotation["bbox"] = annotation["bbox"][:3]
    (other / "ground_truth.json").write_text(json.dumps(data))
    _fails(
        capsys,
        ["replay", "--bag", str(other), "--out", str(tmp_path / "o")],
        f"annotation {annotation['id']}",
        "bbox",
    )
    # A polygon of two points (pycocotools cannot draw it; evaluation crashed in annToMask) is left out.
    data = json.loads((bag / "ground_truth.json").read_text())
    polygon = next(a for a in data["coco"]["annotations"] if isinstance(a.get("segmentation"), list))
    polygon["segmentation"].append([5, 5, 25, 25])
    (other / "ground_truth.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="1 polygons of fewer than 3 points left out"):
        truth = read_ground_truth(other)
    (kept,) = [a for a in truth.dataset["annotations"] if a["id"] == polygon["id"]]
    assert kept["segmentation"] == polygon["segmentation"][:-1]
    truth.coco()  # draws


def test_a_compressed_bag_is_checked_against_the_sizes_of_its_ground_truth(
    coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Compressed frames had no size (0x0), so a ground truth of other sizes went through unchecked and
    scored AP 0 without a word; the size now comes from the JPEG header, and the bag is refused as a raw one
    is."""
    bag = camera_bag(coco, tmp_path / "jpeg", compressed=True)
    camera = read_camera_bag(bag)
    assert [(f.height, f.width) for f in camera.frames] == [(96, 128)] * 4
    read_ground_truth(bag).check_matches(camera)  # its own ground truth matches
    data = json.loads((bag / "ground_truth.json").read_text())
    for entry in data["coco"]["images"]:
        entry["height"], entry["width"] = 2 * entry["height"], 2 * entry["width"]
    doubled = tmp_path / "gt_x2.json"
    doubled.write_text(json.dumps(data))
    argv = ["replay", "--bag", str(bag), "--ground-truth", str(doubled), "--out", str(tmp_path / "o")]
    _fails(capsys, argv, "does not match", "is 128x96 but image 1 is 256x192")
    assert not (tmp_path / "o").exists()


def test_a_compressed_frame_of_another_format_keeps_an_unknown_size(tmp_path: Path) -> None:
    """A format whose header is not read (here BMP) keeps 0x0: its size is not checked, as before."""
    types = typestore().types
    messages = []
    for index in range(2):
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=index), frame_id="camera"
        )
        data = cv2.imencode(".bmp", np.zeros((8, 8, 3), np.uint8))[1].reshape(-1)
        messages.append(
            (index, types["sensor_msgs/msg/CompressedImage"](header=header, format="bmp", data=data))
        )
    bag = write_bag(tmp_path / "bmp", "/cam/compressed", "sensor_msgs/msg/CompressedImage", messages)
    assert [(f.height, f.width) for f in read_camera_bag(bag).frames] == [(0, 0), (0, 0)]


def _camera_topic_with_a_string_connection(path: Path) -> Path:
    """A bag whose /camera/image_raw has an Image connection and a std_msgs/String one (two publishers)."""
    from rosbags.rosbag2 import Writer

    from mcn_ros.bag.bagio import serialize

    store = typestore()
    pixels = np.zeros((8, 10, 3), np.uint8)
    with Writer(path, version=9) as writer:
        frames = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
        text = writer.add_connection("/camera/image_raw", "std_msgs/msg/String", typestore=store)
        for index in range(3):
            stamp = START_NS + index * 100_000_000
            writer.write(frames, stamp, serialize(image(stamp, pixels), "sensor_msgs/msg/Image"))
            string = store.types["std_msgs/msg/String"](data=f"note {index}")
            writer.write(text, stamp + 1, serialize(string, "std_msgs/msg/String"))
    return path


def test_a_camera_topic_with_a_connection_of_another_type(tmp_path: Path) -> None:
    """Without --topic such a bag was read (the String connection skipped) and replayed, then evaluation,
    which names the topic, refused it; with --topic it was refused at once. Decided once, when the bag is
    read: the camera frames are used, the other connections named in one warning, with or without a topic."""
    bag = _camera_topic_with_a_string_connection(tmp_path / "mixed")
    found = []
    for topic in (None, "/camera/image_raw"):
        with pytest.warns(UserWarning) as caught:
            camera = read_camera_bag(bag, topic)
        (warning,) = caught
        assert "/camera/image_raw also has 3 message(s) of std_msgs/msg/String; left out" in str(
            warning.message
        )
        assert camera.msgtype == "sensor_msgs/msg/Image"
        found.append([(f.stamp_ns, f.height, f.width) for f in camera.frames])
    assert found[0] == found[1] == [(START_NS + i * 100_000_000, 8, 10) for i in range(3)]


def test_duplicate_stamps_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pixels = np.zeros((8, 8, 3), np.uint8)
    twice = write_bag(
        tmp_path / "twice", "/cam", "sensor_msgs/msg/Image", [(1, image(5, pixels)), (2, image(5, pixels))]
    )
    with pytest.raises(BagError, match="same header stamp"):
        read_camera_bag(twice)


def test_make_refuses_to_overwrite(bag: Path, coco: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in bag.iterdir())
    _fails(capsys, ["make", "--coco", str(coco), "--out", str(bag)], "exists already", "--overwrite")
    _fails(
        capsys, ["make", "--coco", str(coco), "--split", "nope", "--out", str(bag) + "2"], "no image folder"
    )
    assert sorted(p.name for p in bag.iterdir()) == before


@pytest.mark.parametrize(
    ("option", "value"),
    [("--rate-factor", "0"), ("--rate-factor", "-1"), ("--rate-factor", "nan"), ("--timeout", "inf"),
     ("--startup-timeout", "0"), ("--latency-tolerance", "-0.1"), ("--rate-factor", "fast")],
)  # fmt: skip
def test_bad_numbers_are_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    """Checked by the argument parser (exit 2, the option named), not after a replay phase has run."""
    argv = ["run", "--bag", str(tmp_path / "none"), "--weights", str(tmp_path / "w.safetensors")]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--out", str(tmp_path / "o"), option, value])
    assert exited.value.code == 2
    (err,) = capsys.readouterr().err.strip().splitlines()  # one line, no usage block before it
    assert err.startswith("python -m mcn_ros.bag run: error: argument " + option), err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv",
    [["replay", "--bag", "b", "--out", "o", "--rate-factor", "0"], ["replay", "--bag", "b"],
     ["evaluate", "--ap-tolerance", "-1"], ["make", "--out", "o", "--rate", "0"], ["make", "--coco", "c"],
     ["run", "--bag", "b", "--weights", "w", "--out", "o", "--pace", "slow"], ["nosuch"], []],
)  # fmt: skip
def test_argument_errors_are_one_line_for_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """`--rate-factor 0` printed argparse's 11-15 line usage block before its error line; the docs promise
    one line (and exit 2) for every error."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    command = f" {argv[0]}" if argv and argv[0] != "nosuch" else ""
    assert err.startswith(f"python -m mcn_ros.bag{command}: error: "), err
    assert err.endswith(f"(see python -m mcn_ros.bag{command} --help)"), err


def test_run_refuses_a_node_parameter_the_node_does_not_have() -> None:
    """`run --param nosuch=1` went through: the node only warned in its log, and the run went on."""
    from mcn_ros.bag.run import parse_params

    assert parse_params(["score_threshold=0.1", "tasks:=[detection]"]) == [
        "score_threshold:=0.1", "tasks:=[detection]"
    ]  # fmt: skip
    with pytest.raises(BagError, match="'nosuch': the node has no such parameter"):
        parse_params(["nosuch=1"])
    with pytest.raises(BagError, match="replaced by precision"):
        parse_params(["half=true"])
    assert parse_params(["use_sim_time=true", "start_type_description_service=false"])  # rclpy's own
    with pytest.raises(BagError, match="expected NAME=VALUE"):
        parse_params(["score_threshold"])


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_make_refuses_a_max_images_that_is_not_a_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """`make --max-images 0` said the annotations list no images; now the option is named."""
    with pytest.raises(SystemExit) as exited:
        main(["make", "--coco", str(tmp_path), "--out", str(tmp_path / "bag"), "--max-images", value])
    assert exited.value.code == 2 and "--max-images" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "phrases"),
    [(["--start", "3000000000"], ["start 3000000000.0 s", "4 frames at 10 Hz", "3000000000.300000000 s",
                                  "latest header stamp 2147483647.999999999 s"]),
     (["--start", "2147483647.9", "--rate", "1"], ["would be stamped 2147483650.900000000 s"]),
     (["--rate", "5e9"], ["rate 5e+09 Hz", "rounds to 0", "below 2e9 Hz"]),
     (["--rate", "2e9"], ["rounds to 0"])],
)  # fmt: skip
def test_make_refuses_stamps_a_header_cannot_hold(
    coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], phrases: list[str]
) -> None:
    """`--start 3000000000` was a struct.error traceback (a header's sec is an int32), and `--rate 5e9` wrote
    frames of one stamp (the period rounded to 0 ns) that `run` refused later; both are refused up front."""
    out = tmp_path / "bag"
    _fails(capsys, ["make", "--coco", str(coco), "--out", str(out), *options], *phrases)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("start", ["-1", "nan", "inf"])
def test_make_refuses_a_negative_start(
    coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], start: str
) -> None:
    """`--start -1` was an OverflowError traceback: refused by the parser, the option named, one line."""
    with pytest.raises(SystemExit) as exited:
        main(["make", "--coco", str(coco), "--out", str(tmp_path / "bag"), "--start", start])
    assert exited.value.code == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "argument --start" in err and "at least 0" in err
    assert not (tmp_path / "bag").exists()


def test_make_takes_the_last_stamp_a_header_holds(coco: Path, tmp_path: Path) -> None:
    out = camera_bag(coco, tmp_path / "bag", start_s=2147483647.5, rate_hz=10.0)
    stamps = [f.stamp_ns for f in read_camera_bag(out).frames]  # 4 frames, the last at .8 s
    assert stamps == [2147483647_500_000_000 + i * 100_000_000 for i in range(4)]


def test_make_checks_the_annotations_first(
    coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An annotation evaluation cannot read stops `make` with its id, before a bag is written."""
    copy = tmp_path / "coco"
    shutil.copytree(coco, copy)
    instances = copy / "annotations" / "instances_val.json"
    data = json.loads(instances.read_text())
    data["annotations"][0]["category_id"] = 999
    instances.write_text(json.dumps(data))
    _fails(
        capsys,
        ["make", "--coco", str(copy), "--out", str(tmp_path / "bag")],
        f"annotation {data['annotations'][0]['id']}",
        "instances_val.json",
    )
    assert not (tmp_path / "bag").exists()
    # An id used twice (pycocotools keeps one of them) or missing: one line, in the keypoints file too.
    data["annotations"][0]["category_id"] = data["annotations"][1]["category_id"]
    data["annotations"][1]["id"] = data["annotations"][0]["id"]
    instances.write_text(json.dumps(data))
    args = ["make", "--coco", str(copy), "--out", str(tmp_path / "bag")]
    _fails(capsys, args, f"annotation id {data['annotations'][0]['id']} is used twice", "instances_val.json")
    del data["annotations"][1]["id"]
    instances.write_text(json.dumps(data))
    _fails(capsys, args, "the annotation at index 1", "has no id")
    keypoints = copy / "annotations" / "person_keypoints_val.json"
    if keypoints.is_file():
        data["annotations"][1]["id"] = 10**9
        instances.write_text(json.dumps(data))
        kp = json.loads(keypoints.read_text())
        kp["annotations"].append(dict(kp["annotations"][0]))
        keypoints.write_text(json.dumps(kp))
        twice = f"annotation id {kp['annotations'][0]['id']} is used twice in"
        _fails(capsys, args, twice, "person_keypoints_val.json")
    assert not (tmp_path / "bag").exists()


def test_make_with_coco_takes_keypoints_and_refuses_explicit_files(
    coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make --coco ROOT --keypoints FILE` used the split's own keypoints file and said nothing."""
    keypoints = json.loads((coco / "annotations" / "person_keypoints_val.json").read_text())
    person = keypoints["annotations"][0]
    person["keypoints"] = [11.0, 12.0, 2] + [0] * 48
    person["num_keypoints"] = 1
    mine = tmp_path / "my_keypoints.json"
    mine.write_text(json.dumps(keypoints))
    assert main(["make", "--coco", str(coco), "--keypoints", str(mine), "--out", str(tmp_path / "bag")]) == 0
    capsys.readouterr()
    (taken,) = [
        a for a in read_ground_truth(tmp_path / "bag").dataset["annotations"] if a["id"] == person["id"]
    ]
    assert taken["keypoints"][:3] == [11.0, 12.0, 2] and not any(taken["keypoints"][3:])
    for option, value in (("--images", coco / "images" / "val"), ("--annotations", mine)):
        _fails(
            capsys,
            ["make", "--coco", str(coco), option, str(value), "--out", str(tmp_path / "o")],
            "not both",
        )
    assert not (tmp_path / "o").exists()
