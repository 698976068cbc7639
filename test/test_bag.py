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
    assert option in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


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
