"""Score replays: accuracy (lockstep, under load, and the model runtime alone), latency, drops, resources.

    python -m mcn_ros.bag evaluate RUN_DIR [--weights W] [--baseline previous.json]
    python -m mcn_ros.bag evaluate --outputs RECORDED_BAG --ground-truth BAG/ground_truth.json [--weights W]

Accuracy goes through :func:`mcn_ros.evaluation.evaluate` (COCO bbox / keypoint AP with pycocotools, mIoU):

- ``bbox_AP`` ... ``mIoU``: the lockstep replay's outputs (nothing dropped);
- ``direct_*``: :class:`~mcn_ros.model.predictor.Predictor` alone on the same frames with the node's
  parameters (what the ROS path must not lose);
- ``loaded_*``: the rate replay, where a frame whose output never came, or came after the next frame was
  sent, counts as a frame with no predictions (no boxes, no persons, segmentation all background): the
  accuracy lost to the machine being too slow.

Timing per output topic: end-to-end latency (publish -> received, the player's monotonic clock) p50 / p95 /
p99 / max; frames sent / processed (any output came) / dropped (none came) / late; throughput; the node
process's CPU time and peak resident memory (``/proc``).

The summary's keys follow :mod:`mcn_ros.bag.report`, which writes report.json, report.md, the plots and the
video (:func:`write`); everything else (bag and weights hashes, config, machine, versions, commit, the
figures of each replay) travels in report.json as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import OutputBag, read_camera_bag, read_output_bag
from mcn_ros.bag.convert import (
    ClassIndex,
    class_map_from_message,
    detections_from_message,
    label_map,
    poses_from_message,
)
from mcn_ros.bag.ground_truth import SIDECAR, GroundTruth, read_ground_truth, sidecar_path
from mcn_ros.bag.pacing import FrameRecord
from mcn_ros.bag.provenance import git_commit, machine, versions
from mcn_ros.bag.replay import OUTPUT_BAG, command_line, find_replays, read_phase_records, read_replay_info
from mcn_ros.bag.report import latency_stats
from mcn_ros.bag.typestore import DETECTIONS, IMAGE, LABEL_INFO, POSES
from mcn_ros.evaluation import EvalReport, evaluate
from mcn_ros.model.results import Detections, Poses, Results

METRICS = ("bbox_AP", "bbox_AP50", "kp_AP", "kp_AP50", "mIoU", "person_IoU")
TASK_OF = {"detections": "detection", "poses": "pose", "segmentation": "segmentation"}


@dataclass
class Classes:
    """The class lists scored, and where they came from."""

    detection: list[str] | None
    segmentation: list[str] | None
    source: str


@dataclass
class OutputTopics:
    """Which topic of an output bag holds which output (None: not recorded)."""

    detections: str | None
    poses: str | None
    segmentation: str | None
    label_info: str | None

    def present(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "label_info"}


def _one(topics: list[str], suffix: str, what: str) -> str | None:
    if len(topics) > 1:
        preferred = [t for t in topics if t.endswith("/" + suffix)]
        if len(preferred) == 1:
            return preferred[0]
        raise BagError(f"the output bag has several {what} topics ({', '.join(topics)})")
    return topics[0] if topics else None


def output_topics(outputs: OutputBag) -> OutputTopics:
    """Find the node's outputs in a bag by type (and the class-map Image by its name, ``segmentation``)."""
    segmentation = [t for t in outputs.topics_of_type(IMAGE) if t.rstrip("/").endswith("/segmentation")]
    return OutputTopics(
        detections=_one(outputs.topics_of_type(DETECTIONS), "detections", "Detection2DArray"),
        poses=_one(outputs.topics_of_type(POSES), "poses", "HumanPose2DArray"),
        segmentation=_one(segmentation, "segmentation", "segmentation"),
        label_info=_one(outputs.topics_of_type(LABEL_INFO), "label_info", "LabelInfo"),
    )


def resolve_classes(outputs: OutputBag, topics: OutputTopics, weights: Path | None) -> Classes:
    """The weights' class lists when known; else LabelInfo's (used for segmentation too, and said so)."""
    if weights is not None:
        config = _weights_config(weights)
        return Classes(
            list(config.detection.classes) if config.detection is not None else None,
            list(config.segmentation.classes) if config.segmentation is not None else None,
            f"weights {weights}",
        )
    if topics.label_info is not None and outputs.messages[topics.label_info]:
        mapping = label_map(outputs.messages[topics.label_info][-1].message)
        names = [mapping[k] for k in sorted(mapping)]
        return Classes(
            names, names, "LabelInfo (segmentation classes assumed equal: pass --weights to be sure)"
        )
    if topics.detections or topics.segmentation:
        raise BagError("cannot tell the class names: the output bag has no LabelInfo; pass --weights")
    return Classes(None, None, "none needed")


def _weights_config(weights: Path) -> Any:
    from mcn_ros.model.weights import WeightsError, read_metadata

    try:
        return read_metadata(weights)[0]
    except WeightsError as error:
        raise BagError(str(error)) from error


def _first_by_stamp(outputs: OutputBag, topic: str | None) -> dict[int, Any]:
    if topic is None:
        return {}
    first: dict[int, Any] = {}
    for item in outputs.messages.get(topic, []):
        first.setdefault(item.stamp_ns, item.message)
    return first


def class_index(outputs: OutputBag, topics: OutputTopics, classes: Classes) -> ClassIndex:
    """Detection class id -> index into the scored classes (through LabelInfo when it was recorded)."""
    label = None
    if topics.label_info is not None and outputs.messages[topics.label_info]:
        label = label_map(outputs.messages[topics.label_info][-1].message)
    return ClassIndex(classes.detection or [], label)


def results_by_stamp(
    outputs: OutputBag,
    topics: OutputTopics,
    classes: Classes,
    sizes: Mapping[int, tuple[int, int]],
    late: Mapping[int, set[str]] | None = None,
    fill_missing: bool = True,
) -> tuple[dict[int, Results], dict[str, int]]:
    """Results of each frame (header stamp -> (height, width)) from the output bag, and how many outputs
    each task missed (never came, or late per ``late``: stamp -> output keys).

    A missed output is an empty answer with ``fill_missing`` (no boxes, no persons, segmentation all
    background: what a consumer that heard nothing knows), else left out (None).
    """
    index = class_index(outputs, topics, classes)
    by_key = {key: _first_by_stamp(outputs, topic) for key, topic in topics.present().items()}
    missing = dict.fromkeys(by_key, 0)
    found: dict[int, Results] = {}
    for stamp, size in sizes.items():
        results = Results(image_size=size)
        for key, messages in by_key.items():
            message = messages.get(stamp)
            if message is None or (late is not None and key in late.get(stamp, set())):
                missing[key] += 1
                if not fill_missing:
                    continue
                message = None
            try:
                if key == "detections":
                    results.detections = (
                        detections_from_message(message, index) if message is not None else Detections.empty()
                    )
                elif key == "poses":
                    results.poses = poses_from_message(message) if message is not None else Poses.empty()
                else:
                    results.segmentation = (
                        class_map_from_message(message) if message is not None else np.zeros(size, np.uint8)
                    )
            except ValueError as error:
                raise BagError(f"frame stamped {stamp} ns: cannot read its {key} output: {error}") from error
        found[stamp] = results
    return found, missing


def predictions_from_outputs(
    outputs: OutputBag,
    topics: OutputTopics,
    ground_truth: GroundTruth,
    classes: Classes,
    records: Sequence[FrameRecord] | None = None,
    on_time_only: bool = False,
) -> tuple[dict[int, Results], dict[str, int]]:
    """:func:`results_by_stamp` of the ground truth's frames, by image id; with ``on_time_only`` an output
    that came after the next frame was sent counts as missed."""
    late = None
    if on_time_only and records is not None:
        late = {r.stamp_ns: {k for k in r.arrivals_ns if not r.on_time(k)} for r in records}
    sizes = {stamp: ground_truth.image_size(i) for stamp, i in sorted(ground_truth.image_of_stamp.items())}
    found, missing = results_by_stamp(outputs, topics, classes, sizes, late)
    return {ground_truth.image_of_stamp[stamp]: r for stamp, r in found.items()}, missing


def check_stamps(
    ground_truth: GroundTruth, outputs: OutputBag, topics: OutputTopics, records: Sequence[FrameRecord] | None
) -> None:
    """Raise :class:`BagError` when the ground truth is not that of the replayed frames."""
    what = f"ground truth {ground_truth.path} does not match the replay"
    known = ground_truth.image_of_stamp
    if records is not None:
        unknown = [r.stamp_ns for r in records if r.stamp_ns not in known]
        if unknown or len(records) != len(known):
            raise BagError(
                f"{what}: {len(unknown)} of the {len(records)} replayed frames have no image id in it, "
                f"which lists {len(known)} frames (first unknown stamp: {unknown[0] if unknown else None} ns)"
            )
        return
    stamps = {m.stamp_ns for topic in topics.present().values() for m in outputs.messages[topic]}
    if stamps and not stamps & set(known):
        raise BagError(f"{what}: none of the {len(stamps)} output stamps of {outputs.path} is in it")


def score(ground_truth: GroundTruth, predictions: Mapping[int, Results], classes: Classes) -> EvalReport:
    """:func:`mcn_ros.evaluation.evaluate`, its errors turned into one message about the ground truth."""
    det = classes.detection if any(r.detections is not None for r in predictions.values()) else None
    seg = classes.segmentation if any(r.segmentation is not None for r in predictions.values()) else None
    try:
        return evaluate(ground_truth.coco(), predictions, det, seg)
    except (KeyError, ValueError) as error:
        text = error.args[0] if error.args else error
        raise BagError(
            f"ground truth {ground_truth.path or ''} does not match the outputs: {text}"
        ) from error


# -- the model runtime alone ---------------------------------------------------------------------------------
def direct_predictions(
    bag: Path,
    topic: str,
    ground_truth: GroundTruth,
    weights: Path,
    parameters: Mapping[str, Any],
    tasks: set[str],
) -> dict[int, Results]:
    """Predictor on the bag's frames, decoded as the node decodes them, with the node's parameters."""
    from mcn_ros.bag.typestore import typestore
    from mcn_ros.model.predictor import Predictor
    from mcn_ros.model.weights import WeightsError
    from mcn_ros.ros.images import compressed_to_array, image_to_array

    try:
        predictor = Predictor.from_weights(
            weights, device=str(parameters.get("device", "auto")), half=bool(parameters.get("half", False))
        )
    except WeightsError as error:
        raise BagError(str(error)) from error
    size = [int(v) for v in parameters.get("input_size", [0, 0])]
    if size != [0, 0]:
        predictor.config = dataclasses.replace(predictor.config, input_size=(size[0], size[1]))
    enabled = set(parameters.get("tasks", predictor.tasks))
    camera = read_camera_bag(bag, topic)
    store = typestore()
    predictions: dict[int, Results] = {}
    for frame in camera.frames:
        image_id = ground_truth.image_of_stamp.get(frame.stamp_ns)
        if image_id is None:
            continue
        message = store.deserialize_cdr(frame.data, camera.msgtype)
        convert = compressed_to_array if camera.compressed else image_to_array
        pixels, order = convert(message)
        result = predictor.predict(
            pixels,
            tasks=sorted(tasks & enabled & set(predictor.tasks)),
            color_order=order,
            score_threshold=float(parameters.get("score_threshold", 0.3)),
            pose_score_threshold=float(parameters.get("pose_score_threshold", 0.3)),
            max_detections=int(parameters.get("max_detections", 100)),
            flip_test=bool(parameters.get("flip_test", False)),
        )
        assert isinstance(result, Results)
        predictions[image_id] = result
    return predictions


def agreement(direct: Mapping[int, Results], replayed: Mapping[int, Results]) -> dict[str, Any]:
    """How far the replayed boxes are from the model runtime's: frames whose box counts differ, largest
    box coordinate difference (px) among the others, frames whose segmentation differs."""
    count_differs = seg_differs = 0
    largest = 0.0
    for image_id, mine in direct.items():
        theirs = replayed.get(image_id)
        if theirs is None:
            continue
        if mine.detections is not None and theirs.detections is not None:
            if len(mine.detections) != len(theirs.detections):
                count_differs += 1
            elif len(mine.detections):
                largest = max(largest, float(np.abs(mine.detections.boxes - theirs.detections.boxes).max()))
        if mine.segmentation is not None and theirs.segmentation is not None:
            seg_differs += int(not np.array_equal(mine.segmentation, theirs.segmentation))
    return {
        "frames_with_other_box_count": count_differs,
        "max_box_difference_px": round(largest, 4),
        "frames_with_other_segmentation": seg_differs,
    }


# -- timing --------------------------------------------------------------------------------------------------
def timing_summary(records: Sequence[FrameRecord], topics: Mapping[str, str]) -> dict[str, Any]:
    """Frames, latencies (per output topic, and of a frame's last output) and throughput of one replay.

    ``topics`` maps the records' output keys to topic names (the keys of ``latency_by_topic_ms``).
    """
    keys = list(records[0].arrivals_ns) if records else []
    answered = [r for r in records if r.answered()]
    arrivals = [a for r in records for a in r.arrivals_ns.values() if a is not None]
    span_s = (max(arrivals) - records[0].send_ns) / 1e9 if arrivals else 0.0
    sends = [r.send_ns for r in records]
    late = sum(1 for r in answered if r.deadline_ns is not None and not all(r.on_time(k) for k in keys))
    return {
        "frames": {
            "sent": len(records),
            "processed": len(answered),
            "dropped": len(records) - len(answered),
            "incomplete": sum(1 for r in answered if not r.complete()),
            "late": late,
        },
        "latency_ms": latency_stats(frame_latencies_ms(records)),
        "latency_by_topic_ms": {
            topics.get(key, key): latency_stats(values) for key, values in topic_latencies_ms(records).items()
        },
        "throughput_fps": round(len(answered) / span_s, 3) if span_s > 0 else None,
        "send_rate_fps": round((len(sends) - 1) / ((sends[-1] - sends[0]) / 1e9), 3)
        if len(sends) > 1 and sends[-1] > sends[0]
        else None,
    }


def topic_latencies_ms(records: Sequence[FrameRecord]) -> dict[str, list[float | None]]:
    """Per output key, each frame's latency in ms (None: the output never came)."""
    keys = list(records[0].arrivals_ns) if records else []
    return {key: [None if (lat := r.latency_ns(key)) is None else lat / 1e6 for r in records] for key in keys}


def frame_latencies_ms(records: Sequence[FrameRecord]) -> list[float | None]:
    """Each frame's latency to its last output in ms (None unless every output came)."""
    return [max(r.latency_ns(k) or 0 for k in r.arrivals_ns) / 1e6 if r.complete() else None for r in records]


# -- the whole evaluation ------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_info(weights: Path) -> dict[str, Any]:
    from mcn_ros.model.weights import WeightsError, read_metadata

    try:
        config, provenance = read_metadata(weights)
    except WeightsError as error:
        raise BagError(str(error)) from error
    return {
        "path": str(weights.resolve()),
        "sha256": file_sha256(weights),
        "model": config.name,
        "backbone": config.backbone,
        "input_size": list(config.input_size),
        "tasks": sorted(config.tasks),
        "provenance": provenance,
    }


@dataclass
class Evaluation:
    """A report: its figures (``summary``, the content of report.json) and what its plots and video are
    drawn from (:func:`mcn_ros.bag.report.write_report`)."""

    summary: dict[str, Any]
    latencies_ms: dict[str, list[float | None]] = field(default_factory=dict)
    send_times_s: list[float] = field(default_factory=list)
    video: Callable[[], Iterator[np.ndarray]] | None = None
    fps: float = 10.0


def evaluate_run(
    path: str | Path | None = None,
    *,
    outputs: str | Path | None = None,
    ground_truth: str | Path | None = None,
    weights: str | Path | None = None,
    direct: bool = True,
) -> Evaluation:
    """The report of a run folder / replay folder (``path``), or of a recorded output bag (``outputs``)."""
    replays: dict[str, Path] = find_replays(path) if path is not None else {}
    infos = {phase: read_replay_info(folder) for phase, folder in replays.items()}
    first = next(iter(infos.values()), {})
    source: dict[str, Any] = first.get("input", {})
    input_bag = source.get("bag")
    node_info: dict[str, Any] = first.get("node", {})
    parameters: dict[str, Any] = dict(node_info.get("parameters", {}))
    if weights is None and parameters.get("weights"):
        weights = parameters["weights"]
    weights_path = Path(weights) if weights else None
    if weights_path is not None and not weights_path.is_file():
        raise BagError(
            f"weights file {weights_path} does not exist (needed for the class names and direct runs)"
        )

    gt: GroundTruth | None = None
    notes: list[str] = []
    if ground_truth is not None:
        gt = read_ground_truth(ground_truth)
        if input_bag is not None and Path(input_bag).is_dir():
            gt.check_matches(read_camera_bag(input_bag, source["topic"]))
    elif input_bag is not None and sidecar_path(input_bag).is_file():
        gt = read_ground_truth(input_bag)
    elif input_bag is not None:
        notes.append(
            f"accuracy not evaluated: the input bag {input_bag} has no {SIDECAR} (pass --ground-truth)"
        )
    else:
        raise BagError(
            "no ground truth: pass --ground-truth (a bag folder with ground_truth.json, or the file)"
        )

    summary: dict[str, Any] = {
        "format": "mcn_ros.replay_report",
        "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "replay_commands": {phase: info.get("command") for phase, info in infos.items()},
        "bag": source or {"ground_truth": str(gt.path) if gt is not None else None},
        "weights": _weights_info(weights_path) if weights_path is not None else None,
        "node": {k: v for k, v in node_info.items() if k != "parameters"},
        "config": {
            "node_parameters": parameters,
            "paces": {
                phase: {"rate_factor": i.get("rate_factor"), "timeout_s": i.get("timeout_s")}
                for phase, i in infos.items()
            },
        },
        "machine": machine(),
        "versions": versions(),
        "git_commit": git_commit(),
        **dict.fromkeys(f"{prefix}{m}" for prefix in ("", "direct_", "loaded_") for m in METRICS),
        "accuracy": {},
        "timing": {},
        "notes": notes,
    }

    sources: dict[str, tuple[Path, list[FrameRecord] | None]] = {
        phase: (folder / str(infos[phase].get("output_bag", OUTPUT_BAG)), read_phase_records(folder))
        for phase, folder in replays.items()
    }
    if outputs is not None:
        sources["recorded"] = (Path(outputs), None)
    classes: Classes | None = None
    replayed: dict[str, dict[int, Results]] = {}
    read: dict[str, tuple[OutputBag, OutputTopics]] = {}
    tasks: set[str] = set()
    for phase, (bag_path, records) in sources.items():
        output_bag = read_output_bag(bag_path)
        topics = output_topics(output_bag)
        if not topics.present():
            raise BagError(
                f"output bag {bag_path} holds none of the node's outputs (detections, poses, segmentation)"
            )
        read[phase] = (output_bag, topics)
        tasks |= {TASK_OF[k] for k in topics.present()}
        if records is not None:
            timing = timing_summary(records, dict(infos[phase].get("node", {}).get("outputs", {})))
            summary["timing"][phase] = {**timing, "node_process": infos[phase].get("node_process")}
        if classes is None:
            try:
                classes = resolve_classes(output_bag, topics, weights_path)
            except BagError:
                if gt is not None:
                    raise
                notes.append("video not made: the class names are unknown (no LabelInfo; pass --weights)")
                continue
            summary["classes"] = dataclasses.asdict(classes)
        if gt is None:
            continue
        check_stamps(gt, output_bag, topics, records)
        predictions, missing = predictions_from_outputs(output_bag, topics, gt, classes, records)
        replayed[phase] = predictions
        key = "lockstep" if phase in ("lockstep", "recorded") else "rate_all_outputs"
        summary["accuracy"][key] = {
            **score(gt, predictions, classes).to_dict(),
            "frames_without_output": missing,
        }
        if phase == "rate" and records is not None:
            loaded, late = predictions_from_outputs(
                output_bag, topics, gt, classes, records, on_time_only=True
            )
            summary["accuracy"]["loaded"] = {
                **score(gt, loaded, classes).to_dict(),
                "frames_late_or_missing": late,
            }

    if gt is not None and classes is not None:
        if direct and weights_path is not None and input_bag is not None:
            direct_results = direct_predictions(
                Path(input_bag), source["topic"], gt, weights_path, parameters, tasks
            )
            summary["accuracy"]["direct"] = score(gt, direct_results, classes).to_dict()
            compared = replayed.get("lockstep") or replayed.get("recorded")
            if compared is not None:
                summary["agreement_with_direct"] = agreement(direct_results, compared)
        elif direct:
            notes.append("direct (model runtime alone) figures skipped: needs the weights and the input bag")
    accuracy = summary["accuracy"]
    headline = accuracy.get("lockstep") or accuracy.get("rate_all_outputs") or {}
    for prefix, figures in (("", headline), ("loaded_", accuracy.get("loaded", {})),
                            ("direct_", accuracy.get("direct", {}))):  # fmt: skip
        for metric in METRICS:
            summary[prefix + metric] = figures.get(metric)
    summary["per_class_AP"] = headline.get("per_class_AP", {})
    summary["per_class_IoU"] = headline.get("per_class_IoU", {})

    evaluation = Evaluation(summary, fps=float(source.get("rate_hz") or 10.0))
    timing_phase = next((p for p in ("rate", "lockstep") if p in summary["timing"]), None)
    if timing_phase is not None:
        timing = summary["timing"][timing_phase]
        process = timing.get("node_process") or {}
        summary.update(
            timing_from=timing_phase,
            latency_ms=timing["latency_ms"],
            latency_by_topic_ms=timing["latency_by_topic_ms"],
            frames=timing["frames"],
            throughput_fps=timing["throughput_fps"],
        )
        summary["node"].update({k: v for k, v in process.items() if k != "samples"})
        records = sources[timing_phase][1] or []
        names = dict(infos[timing_phase].get("node", {}).get("outputs", {}))
        evaluation.latencies_ms = {names.get(k, k): v for k, v in topic_latencies_ms(records).items()}
        evaluation.send_times_s = [r.send_ns / 1e9 for r in records]
    video_phase = next((p for p in ("lockstep", "recorded", "rate") if p in read), None)
    if video_phase is not None and classes is not None and input_bag is not None and Path(input_bag).is_dir():
        output_bag, topics = read[video_phase]
        keypoint_threshold = float(parameters.get("keypoint_threshold", 0.1))
        summary["video_from"] = video_phase
        evaluation.video = functools.partial(
            annotated_frames,
            Path(input_bag),
            source["topic"],
            output_bag,
            topics,
            classes,
            keypoint_threshold,
        )
    return evaluation


def annotated_frames(
    bag: Path,
    topic: str,
    outputs: OutputBag,
    topics: OutputTopics,
    classes: Classes,
    keypoint_threshold: float,
) -> Iterator[np.ndarray]:
    """Each camera frame of ``bag`` (RGB) with the node's outputs for it drawn on (one frame at a time)."""
    from mcn_ros.bag.typestore import typestore
    from mcn_ros.ros.images import compressed_to_array, image_to_array
    from mcn_ros.visualize import color_palette, draw_results

    camera = read_camera_bag(bag, topic)
    sizes = {f.stamp_ns: (f.height, f.width) for f in camera.frames}
    found, _ = results_by_stamp(outputs, topics, classes, sizes, fill_missing=False)
    palette = color_palette(max(len(classes.detection or []), len(classes.segmentation or []), 1))
    convert = compressed_to_array if camera.compressed else image_to_array
    store = typestore()
    for frame in camera.frames:
        pixels, order = convert(store.deserialize_cdr(frame.data, camera.msgtype))
        rgb = np.ascontiguousarray(pixels if order == "rgb" else pixels[:, :, ::-1])
        results = found.get(frame.stamp_ns) or Results(image_size=rgb.shape[:2])
        yield draw_results(rgb, results, classes.detection or [], palette, keypoint_threshold)


# -- writing -------------------------------------------------------------------------------------------------
def read_baseline(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BagError(f"cannot read baseline {path}: {error}") from error
    if not isinstance(data, dict):
        raise BagError(f"baseline {path} is not a JSON object")
    return data


def write(folder: str | Path, evaluation: Evaluation) -> dict[str, Path]:
    """report.json, report.md, the plots and the video, through :func:`mcn_ros.bag.report.write_report`."""
    from mcn_ros.bag.report import write_report

    frames = evaluation.video() if evaluation.video is not None else iter(())
    return write_report(
        folder, evaluation.summary, evaluation.latencies_ms, evaluation.send_times_s, frames, evaluation.fps
    )


def console_summary(summary: Mapping[str, Any]) -> str:
    """The accuracy, latency and frames tables of report.md, for the terminal."""
    from mcn_ros.bag.report import markdown_summary

    text = markdown_summary(summary)
    start = text.find("## Accuracy")
    ends = [i for i in (text.find(m, start) for m in ("## Per class", "## Command")) if i >= 0]
    table = text[start : min(ends) if ends else len(text)].strip()
    lockstep = summary.get("timing", {}).get("lockstep")
    if lockstep and summary.get("timing_from") != "lockstep" and lockstep.get("latency_ms"):
        stats = lockstep["latency_ms"]
        table += (
            f"\n\nLockstep (one frame at a time): latency p50 {stats['p50']:.1f} ms, "
            f"p95 {stats['p95']:.1f} ms, throughput {lockstep['throughput_fps']} frames/s."
        )
    agree = summary.get("agreement_with_direct")
    if agree:
        table += (
            f"\nLockstep vs model alone: {agree['frames_with_other_box_count']} frames with another box "
            f"count, largest box difference {agree['max_box_difference_px']} px, "
            f"{agree['frames_with_other_segmentation']} frames with another segmentation."
        )
    return table
