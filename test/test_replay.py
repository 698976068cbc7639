"""Replay through the real node (its own process, DDS on loopback, real rosbag2 files): the ROS path loses
nothing against the model runtime, rate mode accounts for every frame, and a node that fails says why."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from bagtools import (
    camera_bag,
    cli,
    image,
    main,
    read_json,
    synthetic_coco,
    weights_missing_a_tensor,
    write_bag,
)
from nodetools import make_weights

pytestmark = pytest.mark.usefixtures("ros")

SCORE = 0.05  # random-init test weights score about 0.1: a low threshold gives boxes to compare
# The node on the CPU, as the runtime it is compared with (config/mcn.yaml's device auto would take a GPU).
NODE_PARAMS = [
    "--param",
    "device=cpu",
    "--param",
    f"score_threshold={SCORE}",
    "--param",
    f"pose_score_threshold={SCORE}",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("replay")
    coco = synthetic_coco(root / "coco", images=6, size=(96, 128))
    return {
        "coco": coco,
        "bag": camera_bag(coco, root / "bag", rate_hz=10.0),
        "weights": make_weights(root / "weights.safetensors"),
        "root": root,
    }


@pytest.fixture(scope="module")
def run_dir(inputs: dict[str, Path]) -> Iterator[Path]:
    """One `run` (node + lockstep + rate at 4x + evaluation) shared by the tests of its results."""
    out = inputs["root"] / "run"
    done = cli(
        "run", "--bag", str(inputs["bag"]), "--weights", str(inputs["weights"]), "--out", str(out),
        "--rate-factor", "4", *NODE_PARAMS,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| bbox AP |" in done.stdout and "video: " in done.stdout and "report.md" in done.stdout
    yield out


def _direct(inputs: dict[str, Path]) -> tuple[Any, dict[int, Any]]:
    """The model runtime alone on the bag's images (decoded from the files, as make_bag wrote them)."""
    from mcn_ros.bag.ground_truth import read_ground_truth
    from mcn_ros.model.predictor import Predictor

    ground_truth = read_ground_truth(inputs["bag"])
    predictor = Predictor.from_weights(inputs["weights"], device="cpu")
    results = {}
    for info in ground_truth.dataset["images"]:
        rgb = cv2.imread(str(inputs["coco"] / "images" / "val" / info["file_name"]))[:, :, ::-1]
        results[info["id"]] = predictor.predict(
            np.ascontiguousarray(rgb), score_threshold=SCORE, pose_score_threshold=SCORE
        )
    return ground_truth, results


def test_lockstep_replay_equals_the_model_runtime(inputs: dict[str, Path], run_dir: Path) -> None:
    from mcn_ros.bag.bagio import read_output_bag
    from mcn_ros.bag.convert import (
        ClassIndex,
        class_map_from_message,
        detections_from_message,
        poses_from_message,
    )
    from mcn_ros.evaluation import evaluate

    ground_truth, direct = _direct(inputs)
    outputs = read_output_bag(run_dir / "lockstep" / "outputs")
    index = ClassIndex(["person", "car"])
    by_stamp = {topic: {m.stamp_ns: m.message for m in items} for topic, items in outputs.messages.items()}
    compared_boxes = 0
    for stamp, image_id in ground_truth.image_of_stamp.items():
        expected = direct[image_id]
        got = detections_from_message(by_stamp["/mcn_node/detections"][stamp], index)
        assert len(got) == len(expected.detections), image_id
        np.testing.assert_allclose(got.boxes, expected.detections.boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, expected.detections.scores, atol=1e-5)
        assert got.class_ids.tolist() == expected.detections.class_ids.tolist()
        compared_boxes += len(got)
        poses = poses_from_message(by_stamp["/mcn_node/poses"][stamp])
        np.testing.assert_allclose(poses.keypoints, expected.poses.keypoints, atol=1e-3)
        seg = class_map_from_message(by_stamp["/mcn_node/segmentation"][stamp])
        np.testing.assert_array_equal(seg, expected.segmentation)
    assert compared_boxes >= 6  # the comparison is not vacuous

    report = read_json(run_dir / "report.json")
    mine = evaluate(ground_truth.coco(), direct, ["person", "car"], ["person", "car"])
    for metric in ("bbox_AP", "kp_AP", "mIoU"):
        assert report[metric] is not None
        assert abs(report[metric] - getattr(mine, metric)) <= 0.01, metric
        assert abs(report[metric] - report[f"direct_{metric}"]) <= 0.01, metric
    assert report["agreement_with_direct"]["frames_with_other_box_count"] == 0
    assert report["agreement_with_direct"]["max_box_difference_px"] <= 1e-3


def test_rate_replay_accounts_for_every_frame(run_dir: Path) -> None:
    report = read_json(run_dir / "report.json")
    frames = report["frames"]
    assert report["timing_from"] == "rate"
    assert frames["sent"] == 6 == frames["processed"] + frames["dropped"]
    assert frames["processed"] >= 1
    rows = [json.loads(line) for line in (run_dir / "rate" / "frames.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and [r["image_id"] for r in rows] == [1, 2, 3, 4, 5, 6]
    sends = [r["send_s"] for r in rows]
    # Never before its time: 50 ms after the start (the player's lead), then a frame every 25 ms (4x 10 Hz).
    # No upper bound: a player descheduled on a busy machine sends late, which the deadlines then show.
    assert sends == sorted(sends) and all(send >= 0.05 + 0.025 * i - 1e-3 for i, send in enumerate(sends))
    answered = [r for r in rows if any(v is not None for v in r["arrival_s"].values())]
    assert len(answered) == frames["processed"]
    assert all(r["latency_ms"]["detections"] > 0 for r in answered if r["latency_ms"]["detections"])
    assert report["loaded_bbox_AP"] is not None and report["loaded_mIoU"] is not None
    for key in ("p50", "p95", "p99", "max"):
        assert report["latency_ms"][key] > 0
    node = report["node"]
    assert node["cpu_s"] > 0 and node["peak_rss_mb"] > 50 and node["node"] == "/mcn_node"
    assert report["timing"]["rate"]["node_process"]["samples"]
    lockstep = report["timing"]["lockstep"]["frames"]
    assert lockstep == {"sent": 6, "processed": 6, "dropped": 0, "incomplete": 0, "late": 0}
    for key in ("command", "bag", "weights", "config", "machine", "versions", "git_commit"):
        assert report[key], key
    assert len(report["bag"]["sha256"]) == 64 and len(report["weights"]["sha256"]) == 64
    assert "## Accuracy" in (run_dir / "report.md").read_text()
    for name in ("latency.png", "per_class.png", "frames.png", "replay.mp4"):  # mcn_ros/bag/report.py's
        assert (run_dir / name).stat().st_size > 1000, name
    assert report["files"]["video"] == "replay.mp4" and report["video_from"] == "lockstep"
    assert "configure failed" not in (run_dir / "node.log").read_text()


def test_output_bag_is_a_standard_rosbag(inputs: dict[str, Path], run_dir: Path) -> None:
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray, LabelInfo

    from mcn_ros.bag.ground_truth import read_ground_truth
    from mcn_ros.bag.typestore import message_dir
    from mcn_ros.msg import HumanPose2DArray, PoseInfo

    classes = {"/mcn_node/detections": Detection2DArray, "/mcn_node/poses": HumanPose2DArray,
               "/mcn_node/segmentation": Image, "/mcn_node/label_info": LabelInfo,
               "/mcn_node/segmentation/label_info": LabelInfo, "/mcn_node/pose_info": PoseInfo}  # fmt: skip
    stamps = set(read_ground_truth(inputs["bag"]).image_of_stamp)
    seen: dict[str, int] = {}
    with Reader(run_dir / "lockstep" / "outputs") as reader:
        for connection in reader.connections:
            package, _, name = connection.msgtype.split("/")
            description = json.loads((message_dir(package) / f"{name}.json").read_text())
            assert connection.digest == description["type_hashes"][0]["hash_string"]
            # The latched infos as the node offers them, so that `ros2 bag play` republishes them latched.
            offered = [
                (q.durability.name, q.reliability.name, q.depth) for q in connection.ext.offered_qos_profiles
            ]
            latched = connection.topic.endswith("_info")
            assert offered == ([("TRANSIENT_LOCAL", "RELIABLE", 1)] if latched else []), connection.topic
        for connection, _, raw in reader.messages():
            message = deserialize_message(raw, classes[connection.topic])
            seen[connection.topic] = seen.get(connection.topic, 0) + 1
            if not connection.topic.endswith("_info"):
                assert message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec in stamps
    assert seen == {"/mcn_node/detections": 6, "/mcn_node/poses": 6, "/mcn_node/segmentation": 6,
                    "/mcn_node/label_info": 1, "/mcn_node/segmentation/label_info": 1,
                    "/mcn_node/pose_info": 1}  # fmt: skip


def _recording(source: Path, out: Path, drop: tuple[str, ...] = (), log: bool = False) -> Path:
    """A copy of the output bag ``source`` without the topics ``drop``; ``log``: with a /rosout message and a
    /parameter_events one too, as ``ros2 bag record -a`` has them (types without a header)."""
    from rosbags.rosbag2 import Reader

    from mcn_ros.bag.bagio import OutputBagWriter, serialize
    from mcn_ros.bag.typestore import typestore

    writer = OutputBagWriter(out, "mcap")
    with Reader(source) as reader:
        kept = [c for c in reader.connections if c.topic not in drop]
        for connection in kept:
            writer.add_topic(connection.topic, connection.msgtype)
        for connection, time_ns, raw in reader.messages(connections=kept):
            writer.write(connection.topic, time_ns, raw)
    if log:
        types = typestore().types
        stamp = types["builtin_interfaces/msg/Time"](sec=1, nanosec=0)
        log_type, event_type = "rcl_interfaces/msg/Log", "rcl_interfaces/msg/ParameterEvent"
        extra = {
            "/rosout": (log_type, types[log_type](
                stamp=stamp, level=20, name="mcn_node", msg="active", file="node.py", function="f", line=1
            )),
            "/parameter_events": (event_type, types[event_type](
                stamp=stamp, node="/mcn_node", new_parameters=[], changed_parameters=[], deleted_parameters=[]
            )),
        }  # fmt: skip
        for topic, (msgtype, message) in extra.items():
            writer.add_topic(topic, msgtype)
            writer.write(topic, 1, serialize(message, msgtype))
    writer.close()
    return out


def test_evaluate_a_recorded_bag_and_a_baseline(
    inputs: dict[str, Path], run_dir: Path, tmp_path: Path
) -> None:
    """An output bag alone (as `ros2 bag record` writes one, also with -a) scores like the replay, the class
    names from the node's LabelInfos; a baseline regresses."""
    report = read_json(run_dir / "report.json")
    outputs = run_dir / "lockstep" / "outputs"
    recording = _recording(outputs, tmp_path / "record_all", log=True)
    code, _, err = main(
        "evaluate", "--outputs", str(recording), "--ground-truth", str(inputs["bag"]),
        "--report-dir", str(tmp_path / "recorded"),
    )  # fmt: skip
    assert code == 0, err
    recorded = read_json(tmp_path / "recorded" / "report.json")
    assert recorded["classes"]["source"] == "LabelInfo"
    assert recorded["direct_bbox_AP"] is None  # no --weights: the camera bag's frames are not read
    assert report["accuracy_from"] == "lockstep" and recorded["accuracy_from"] == "recorded"
    assert recorded["classes"]["segmentation"] == report["classes"]["segmentation"]
    for metric in ("bbox_AP", "kp_AP", "mIoU"):
        assert recorded[metric] == pytest.approx(report[metric], abs=1e-9)
    # With the weights, the camera bag's frames also run through the model runtime alone (and make the
    # annotated video), as for a replay: it said "needs the weights and the input bag", both given.
    code, _, err = main(
        "evaluate", "--outputs", str(recording), "--ground-truth", str(inputs["bag"]),
        "--weights", str(inputs["weights"]), "--report-dir", str(tmp_path / "recorded_direct"),
    )  # fmt: skip
    assert code == 0, err
    direct = read_json(tmp_path / "recorded_direct" / "report.json")
    assert direct["direct_bbox_AP"] is not None and direct["agreement_with_direct"] is not None, direct[
        "notes"
    ]
    assert direct["video_from"] == "recorded" and (tmp_path / "recorded_direct" / "frames.png").is_file()
    # Without ~/segmentation/label_info (a node before it had one) the class map is not scored, and the
    # report says why; with the weights it scores like the replay.
    older = _recording(outputs, tmp_path / "older", drop=("/mcn_node/segmentation/label_info",))
    code, _, err = main(
        "evaluate", "--outputs", str(older), "--ground-truth", str(inputs["bag"]),
        "--report-dir", str(tmp_path / "older_report"),
    )  # fmt: skip
    assert code == 0, err
    without = read_json(tmp_path / "older_report" / "report.json")
    assert without["mIoU"] is None and without["bbox_AP"] == pytest.approx(report["bbox_AP"], abs=1e-9)
    assert any("segmentation not scored" in note for note in without["notes"]), without["notes"]
    code, _, err = main(
        "evaluate", "--outputs", str(older), "--ground-truth", str(inputs["bag"]),
        "--weights", str(inputs["weights"]), "--no-direct", "--report-dir", str(tmp_path / "with_weights"),
    )  # fmt: skip
    assert code == 0, err
    assert read_json(tmp_path / "with_weights" / "report.json")["mIoU"] == pytest.approx(
        report["mIoU"], abs=1e-9
    )
    better = {**report, "bbox_AP": report["bbox_AP"] + 0.5}
    (tmp_path / "baseline.json").write_text(json.dumps(better))
    code, out, err = main(
        "evaluate", str(run_dir), "--no-direct", "--report-dir", str(tmp_path / "again"),
        "--baseline", str(tmp_path / "baseline.json"),
    )  # fmt: skip
    assert code == 1, out + err
    assert "bbox_AP" in err and "regressed" in err
    # A run evaluated with a recording beside it keeps both: the recording did replace the lockstep figures.
    no_boxes = _recording(outputs, tmp_path / "no_boxes", drop=("/mcn_node/detections",))
    code, _, err = main(
        "evaluate", str(run_dir), "--outputs", str(no_boxes), "--no-direct",
        "--report-dir", str(tmp_path / "both"),
    )  # fmt: skip
    assert code == 0, err
    both = read_json(tmp_path / "both" / "report.json")
    assert both["accuracy_from"] == "lockstep" and both["bbox_AP"] == pytest.approx(
        report["bbox_AP"], abs=1e-9
    )
    assert (
        both["accuracy"]["recorded"]["bbox_AP"] is None and both["accuracy"]["recorded"]["mIoU"] is not None
    )
    # A recording's figures (frames the node dropped scored as empty) are not held against a lockstep run's.
    (tmp_path / "recorded_baseline.json").write_text(json.dumps({**recorded, "bbox_AP": 1.0}))
    code, out, err = main(
        "evaluate", str(run_dir), "--no-direct", "--report-dir", str(tmp_path / "third"),
        "--baseline", str(tmp_path / "recorded_baseline.json"),
    )  # fmt: skip
    assert code == 0, out + err
    notes = read_json(tmp_path / "third" / "report.json")["notes"]
    assert any(
        n.startswith("accuracy not compared with the baseline: its figures are from a recorded")
        for n in notes
    )


def test_evaluate_one_camera_of_a_recording_with_several(
    inputs: dict[str, Path], run_dir: Path, tmp_path: Path
) -> None:
    """A recording of a several-camera node (or of several nodes) has several detection topics: evaluate
    refused it with no way to choose; --outputs-under picks one camera, with its node's LabelInfos."""
    from rosbags.rosbag2 import Reader

    from mcn_ros.bag.bagio import OutputBagWriter

    report = read_json(run_dir / "report.json")
    recording = tmp_path / "several"
    writer = OutputBagWriter(recording, "mcap")
    with Reader(run_dir / "lockstep" / "outputs") as reader:
        copies: dict[str, list[str]] = {}
        for connection in reader.connections:
            leaf = connection.topic.removeprefix("/mcn_node/")
            node_level = leaf in ("label_info", "segmentation/label_info", "pose_info")
            names = [connection.topic, "/other" + connection.topic] if node_level else [
                f"/mcn_node/{camera}/{leaf}" for camera in ("front", "back")
            ]  # fmt: skip
            for name in names:
                writer.add_topic(name, connection.msgtype, latched=node_level)
            copies[connection.topic] = names
        for connection, time_ns, raw in reader.messages():
            for name in copies[connection.topic]:
                writer.write(name, time_ns, raw)
    writer.close()
    common = ("--ground-truth", str(inputs["bag"]), "--no-direct")
    code, _, err = main("evaluate", "--outputs", str(recording), *common, "--report-dir", str(tmp_path / "a"))
    assert code == 2 and "several Detection2DArray topics" in err and "--outputs-under" in err, err
    code, _, err = main(
        "evaluate", "--outputs", str(recording), *common, "--report-dir", str(tmp_path / "front"),
        "--outputs-under", "/mcn_node/front",
    )  # fmt: skip
    assert code == 0, err
    front = read_json(tmp_path / "front" / "report.json")
    assert front["classes"]["source"] == "LabelInfo"
    for metric in ("bbox_AP", "kp_AP", "mIoU"):
        assert front[metric] is not None and front[metric] == pytest.approx(report[metric], abs=1e-9)
    code, _, err = main(
        "evaluate", "--outputs", str(recording), *common, "--report-dir", str(tmp_path / "none"),
        "--outputs-under", "/mcn_node/side",
    )  # fmt: skip
    assert code == 2 and "none of the node's outputs" in err and "under /mcn_node/side" in err, err


def test_evaluate_where_the_nodes_weights_are_not(run_dir: Path, tmp_path: Path) -> None:
    """A run made with weights on another machine (a robot) is scored from its recorded LabelInfos."""
    import shutil

    copy = tmp_path / "from_robot"
    shutil.copytree(run_dir, copy)
    for info in copy.glob("*/replay.json"):
        replay = read_json(info)
        replay["node"]["parameters"]["weights"] = "/robot/ws/model.safetensors"
        info.write_text(json.dumps(replay))
    code, _, err = main("evaluate", str(copy), "--report-dir", str(tmp_path / "report"))
    assert code == 0, err
    report, original = read_json(tmp_path / "report" / "report.json"), read_json(run_dir / "report.json")
    assert report["classes"]["source"] == "LabelInfo"
    for metric in ("bbox_AP", "kp_AP", "mIoU"):
        assert report[metric] == pytest.approx(original[metric], abs=1e-9)
    assert report["direct_bbox_AP"] is None and original["direct_bbox_AP"] is not None
    assert any("/robot/ws/model.safetensors are not on this machine" in n for n in report["notes"])


def test_evaluate_scores_against_the_ground_truth_the_replay_was_given(
    inputs: dict[str, Path], run_dir: Path, tmp_path: Path
) -> None:
    """A replay given `--ground-truth FILE` for a bag without its own is evaluated against that file later."""
    import shutil

    bag, truth = tmp_path / "bag", tmp_path / "truth.json"
    shutil.copytree(inputs["bag"], bag)
    (bag / "ground_truth.json").rename(truth)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for info in copy.glob("*/replay.json"):
        replay = read_json(info)
        replay["input"].update(bag=str(bag.resolve()), ground_truth=str(truth.resolve()))
        info.write_text(json.dumps(replay))
    code, _, err = main("evaluate", str(copy), "--no-direct", "--report-dir", str(tmp_path / "report"))
    assert code == 0, err
    report, original = read_json(tmp_path / "report" / "report.json"), read_json(run_dir / "report.json")
    for metric in ("bbox_AP", "kp_AP", "mIoU"):
        assert report[metric] is not None and report[metric] == pytest.approx(original[metric], abs=1e-9)
    truth.unlink()  # gone (evaluated on another machine): said, and not scored against anything else
    code, _, err = main("evaluate", str(copy), "--no-direct", "--report-dir", str(tmp_path / "again"))
    assert code == 0, err
    again = read_json(tmp_path / "again" / "report.json")
    assert again["bbox_AP"] is None
    assert any(f"ground truth {truth.resolve()} is not on this machine" in n for n in again["notes"])


def _one_line_error(done: tuple[int, str, str]) -> str:
    code, out, err = done
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    return lines[0]


def test_weights_that_fail_to_load_in_the_node(inputs: dict[str, Path], tmp_path: Path) -> None:
    broken = weights_missing_a_tensor(inputs["weights"], tmp_path / "broken.safetensors")
    out = tmp_path / "run"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier run")
    error = _one_line_error(
        main("run", "--bag", str(inputs["bag"]), "--weights", str(broken), "--out", str(out), "--overwrite")
    )
    assert "configure failed" in error and "missing" in error
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]
    # What the run wrote (the node's log) is kept beside it, and the one line names where.
    (kept,) = (p for p in tmp_path.iterdir() if p.name.startswith("run.failed-"))
    assert error.endswith(f"what it wrote before failing is in {kept}")
    assert "missing" in (kept / "node.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.safetensors", "run", kept.name]


def test_a_frame_the_node_never_answers(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """Lockstep: frame 1 is refused by the node (unsupported encoding): the timeout names the topics; the
    frames kept are those sent (frames 2 and 3 never were, and are not listed as sent at 0 s)."""
    rng = np.random.default_rng(1)
    good = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    odd = rng.random((48, 64), dtype=np.float32)
    frames = [
        (10**9, good, "rgb8"),
        (2 * 10**9, odd, "32FC1"),
        (3 * 10**9, good, "rgb8"),
        (4 * 10**9, good, "rgb8"),
    ]
    bag = write_bag(
        tmp_path / "odd", "/cam", "sensor_msgs/msg/Image", [(t, image(t, p, e)) for t, p, e in frames]
    )
    error = _one_line_error(main(
        "run", "--bag", str(bag), "--weights", str(inputs["weights"]), "--out", str(tmp_path / "run"),
        "--pace", "lockstep", "--timeout", "3",
    ))  # fmt: skip
    assert "frame 1" in error and "/mcn_node/detections" in error and "/mcn_node/segmentation" in error
    assert "within 3 s" in error
    assert not (tmp_path / "run").exists()
    (kept,) = (p for p in tmp_path.iterdir() if p.name.startswith("run.failed-"))
    assert str(kept) in error and (kept / "node.log").is_file()
    from mcn_ros.bag.bagio import read_output_bag

    answered = read_output_bag(kept / "lockstep" / "outputs")  # frame 0's outputs, a readable bag
    assert [m.stamp_ns for m in answered.messages["/mcn_node/detections"]] == [10**9]
    records = [json.loads(line) for line in (kept / "lockstep" / "frames.jsonl").read_text().splitlines()]
    assert [r["stamp_ns"] for r in records] == [t for t, _, _ in frames[:2]]
    assert 0 < records[0]["send_s"] < records[1]["send_s"]
    assert all(records[0]["arrival_s"].values()) and not any(records[1]["arrival_s"].values())


def test_a_compressed_bag_replays_through_the_compressed_transport(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    """A bag of CompressedImage frames: `run` starts the node with image_transport:=compressed, and every
    frame is answered with the model runtime's results on the same JPEG."""
    bag = camera_bag(inputs["coco"], tmp_path / "bag", rate_hz=10.0, compressed=True)
    out = tmp_path / "run"
    done = cli(
        "run", "--bag", str(bag), "--weights", str(inputs["weights"]), "--out", str(out),
        "--pace", "lockstep", *NODE_PARAMS,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = read_json(out / "report.json")
    assert report["config"]["node_parameters"]["image_transport"] == "compressed"
    assert report["agreement_with_direct"]["frames_with_other_segmentation"] == 0
    assert report["frames"]["sent"] == 6 and report["frames"]["processed"] == 6, report["frames"]
    assert report["agreement_with_direct"]["frames_with_other_box_count"] == 0
    assert report["agreement_with_direct"]["max_box_difference_px"] <= 1e-3


def test_the_model_alone_runs_with_the_nodes_settings(
    inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct (model-alone) figures take every node setting that changes results: the recorded node
    parameters reach the Predictor it builds and each predict call (they used to stop at precision and
    thresholds, so an int8 or bilinear replay was compared with an fp32, nearest model)."""
    from mcn_ros.bag.direct import direct_predictions
    from mcn_ros.bag.ground_truth import read_ground_truth
    from mcn_ros.model.predictor import Predictor
    from mcn_ros.ros.node_link import PARAMETERS

    for name in (
        "backend", "int8_graph", "cuda_graphs", "torch_compile", "rect_input", "segmentation_resampling",
    ):  # fmt: skip
        assert name in PARAMETERS  # recorded with each replay
    built: list[dict[str, Any]] = []
    asked: list[dict[str, Any]] = []
    real_from_weights, real_predict = Predictor.from_weights.__func__, Predictor.predict  # type: ignore[attr-defined]

    def from_weights(cls: type[Predictor], path: Path, **options: Any) -> Predictor:
        built.append(options)
        return real_from_weights(cls, path, **options)

    def predict(self: Predictor, images: Any, **options: Any) -> Any:
        asked.append(options)
        return real_predict(self, images, **options)

    monkeypatch.setattr(Predictor, "from_weights", classmethod(from_weights))
    monkeypatch.setattr(Predictor, "predict", predict)
    parameters = {
        "rect_input": False,
        "segmentation_resampling": "bilinear",
        "backend": "torch",
        "device": "cpu",
    }
    gt = read_ground_truth(inputs["bag"])
    results = direct_predictions(
        inputs["bag"], "/camera/image_raw", gt, inputs["weights"], parameters, {"detection"}
    )
    assert len(results) == 6 and len(asked) == 6
    expected = {
        "rect": False, "backend": "torch", "int8_graph": None, "cuda_graphs": False, "torch_compile": False,
    }  # fmt: skip
    assert built == [{"device": "cpu", "precision": "fp32", **expected}]
    assert all(options["segmentation_resampling"] == "bilinear" for options in asked)


def test_replay_without_a_node(inputs: dict[str, Path], tmp_path: Path) -> None:
    error = _one_line_error(main(
        "replay", "--bag", str(inputs["bag"]), "--out", str(tmp_path / "replay"), "--node", "/nobody",
        "--startup-timeout", "1",
    ))  # fmt: skip
    assert "/nobody" in error and "lifecycle state: not reachable" in error
    assert not (tmp_path / "replay").exists()


@pytest.mark.parametrize("matched_count", [True, False], ids=["iron_and_later", "humble"])
def test_the_link_sees_the_node_publishers_with_and_without_matched_counts(
    matched_count: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The player waits until the node's outputs have a publisher. rclpy's subscriptions count their matched
    publishers since Iron; Humble's cannot (the link called it there and could not connect): it counts the
    publishers on the topic instead. Real rclpy in this process, its own context."""
    import rclpy
    from rclpy.context import Context
    from rclpy.subscription import Subscription
    from std_msgs.msg import String

    from mcn_ros.ros.node_link import has_publisher

    if not matched_count:
        monkeypatch.delattr(Subscription, "get_publisher_count")
    context = Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("link_probe", context=context)
        topic = f"link_probe_{os.getpid()}_{matched_count}"  # no other run's publisher on it
        subscription = node.create_subscription(String, topic, lambda _: None, 10)
        assert not has_publisher(node, subscription)
        node.create_publisher(String, topic, 10)
        for _ in range(50):  # discovery within the process takes a moment
            if has_publisher(node, subscription):
                break
            rclpy.spin_once(node, timeout_sec=0.1)
        assert has_publisher(node, subscription)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_a_run_evaluated_again_where_its_bag_is_not_keeps_its_report(run_dir: Path, tmp_path: Path) -> None:
    """A run evaluated again in its own folder on a machine without its bag and weights (replayed on a
    robot, evaluated on a laptop): its accuracy, video and frame strip cannot be made again, so the report
    is left as it was, with one line saying why; --overwrite replaces it."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    gone = tmp_path / "gone" / "bag"
    for info in copy.glob("*/replay.json"):
        replay = read_json(info)
        replay["input"].update(bag=str(gone), ground_truth=str(gone / "ground_truth.json"))
        replay["node"]["parameters"]["weights"] = "/robot/ws/model.safetensors"
        info.write_text(json.dumps(replay))
    before = {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()}
    assert {"report.json", "replay.mp4", "frames.png"} <= set(before)
    error = _one_line_error(main("evaluate", str(copy)))
    assert "bbox AP (headline)" in error and "replay.mp4" in error and "frames.png" in error, error
    assert f"the input bag {gone} is not on this machine" in error and "--overwrite" in error, error
    assert {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()} == before
    code, _, err = main("evaluate", str(copy), "--overwrite")
    assert code == 0, err
    report = read_json(copy / "report.json")
    assert report["bbox_AP"] is None and not (copy / "replay.mp4").exists()
    bag_notes = [note for note in report["notes"] if str(gone) in note]
    assert bag_notes == [
        f"accuracy not evaluated: the input bag {gone} is not on this machine (pass --ground-truth)"
    ]
    # --no-direct in place, where the bag is: asked to skip the model-alone figures and the video, so the
    # report is replaced without them (it was refused as if they could not be made).
    rescored = tmp_path / "rescored"
    shutil.copytree(run_dir, rescored)
    code, _, err = main("evaluate", str(rescored), "--no-direct")
    assert code == 0, err
    report = read_json(rescored / "report.json")
    assert report["bbox_AP"] is not None and report["direct_bbox_AP"] is None
