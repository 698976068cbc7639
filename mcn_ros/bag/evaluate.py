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
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import OutputBag, read_camera_bag, read_output_bag, write_text_atomic
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
from mcn_ros.bag.typestore import DETECTIONS, IMAGE, LABEL_INFO, POSES
from mcn_ros.evaluation import EvalReport, evaluate
from mcn_ros.model.results import Detections, Poses, Results

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
METRICS = ("bbox_AP", "bbox_AP50", "kp_AP", "kp_AP50", "mIoU", "person_IoU")
#: Figures a baseline comparison checks (higher is better), besides the p95 latency.
COMPARED = (
    "bbox_AP", "bbox_AP50", "kp_AP", "kp_AP50", "mIoU",
    "loaded_bbox_AP", "loaded_kp_AP", "loaded_mIoU",
)  # fmt: skip
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


def predictions_from_outputs(
    outputs: OutputBag,
    topics: OutputTopics,
    ground_truth: GroundTruth,
    classes: Classes,
    records: Sequence[FrameRecord] | None = None,
    on_time_only: bool = False,
) -> tuple[dict[int, Results], dict[str, int]]:
    """Results of every ground-truth frame from the output bag, and how many outputs each task missed.

    A frame without a message of a recorded task gets an empty answer for it (no boxes, no persons,
    segmentation all background); with ``on_time_only`` the same goes for a message that came late.
    """
    label = None
    if topics.label_info is not None and outputs.messages[topics.label_info]:
        label = label_map(outputs.messages[topics.label_info][-1].message)
    class_index = ClassIndex(classes.detection or [], label)
    by_key = {key: _first_by_stamp(outputs, topic) for key, topic in topics.present().items()}
    late: dict[int, set[str]] = {}
    if on_time_only and records is not None:
        late = {r.stamp_ns: {k for k in r.arrivals_ns if not r.on_time(k)} for r in records}
    missing = dict.fromkeys(by_key, 0)
    predictions: dict[int, Results] = {}
    for stamp, image_id in sorted(ground_truth.image_of_stamp.items()):
        size = ground_truth.image_size(image_id)
        results = Results(image_size=size)
        for key, messages in by_key.items():
            message = messages.get(stamp)
            if message is None or key in late.get(stamp, set()):
                missing[key] += 1
                message = None
            try:
                if key == "detections":
                    results.detections = (
                        detections_from_message(message, class_index)
                        if message is not None
                        else Detections.empty()
                    )
                elif key == "poses":
                    results.poses = poses_from_message(message) if message is not None else Poses.empty()
                else:
                    results.segmentation = (
                        class_map_from_message(message) if message is not None else np.zeros(size, np.uint8)
                    )
            except ValueError as error:
                raise BagError(f"image {image_id}: cannot read its {key} output: {error}") from error
        predictions[image_id] = results
    return predictions, missing


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
def latency_stats(values_ms: Sequence[float]) -> dict[str, float | int] | None:
    """count, mean, p50, p95, p99, max of latencies in ms (None when there are none)."""
    if not values_ms:
        return None
    array = np.asarray(values_ms, np.float64)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "count": int(array.size),
        "mean": round(float(array.mean()), 3),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(array.max()), 3),
    }


def timing_summary(records: Sequence[FrameRecord]) -> dict[str, Any]:
    """Frames and latencies of one replay (see the module docstring)."""
    keys = list(records[0].arrivals_ns) if records else []
    per_topic = {
        key: latency_stats([lat / 1e6 for r in records if (lat := r.latency_ns(key)) is not None])
        for key in keys
    }
    frame_latency = [max(r.latency_ns(k) or 0 for k in keys) / 1e6 for r in records if r.complete()]
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
        "latency_ms": latency_stats(frame_latency),
        "latency_ms_per_topic": per_topic,
        "throughput_hz": round(len(answered) / span_s, 3) if span_s > 0 else None,
        "send_rate_hz": round((len(sends) - 1) / ((sends[-1] - sends[0]) / 1e9), 3)
        if len(sends) > 1 and sends[-1] > sends[0]
        else None,
    }


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


def evaluate_run(
    path: str | Path | None = None,
    *,
    outputs: str | Path | None = None,
    ground_truth: str | Path | None = None,
    weights: str | Path | None = None,
    direct: bool = True,
) -> dict[str, Any]:
    """The report of a run folder / replay folder (``path``), or of a recorded output bag (``outputs``)."""
    replays: dict[str, Path] = find_replays(path) if path is not None else {}
    infos = {phase: read_replay_info(folder) for phase, folder in replays.items()}
    first = next(iter(infos.values()), {})
    input_bag = first.get("input", {}).get("bag")
    parameters: dict[str, Any] = dict(first.get("node", {}).get("parameters", {}))
    if weights is None and parameters.get("weights"):
        weights = parameters["weights"]
    weights_path = Path(weights) if weights else None
    if weights_path is not None and not weights_path.is_file():
        raise BagError(
            f"weights file {weights_path} does not exist (needed for the class names and direct runs)"
        )

    gt: GroundTruth | None = None
    no_gt = None
    if ground_truth is not None:
        gt = read_ground_truth(ground_truth)
        if input_bag is not None and Path(input_bag).is_dir():
            gt.check_matches(read_camera_bag(input_bag, first["input"]["topic"]))
    elif input_bag is not None and sidecar_path(input_bag).is_file():
        gt = read_ground_truth(input_bag)
    elif input_bag is not None:
        no_gt = f"accuracy not evaluated: the input bag {input_bag} has no {SIDECAR} (pass --ground-truth)"
    else:
        raise BagError(
            "no ground truth: pass --ground-truth (a bag folder with ground_truth.json, or the file)"
        )

    report: dict[str, Any] = {
        "format": "mcn_ros.replay_report",
        "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "replay_commands": {phase: info.get("command") for phase, info in infos.items()},
        "bag": first.get("input") or {"ground_truth": str(gt.path) if gt is not None else None},
        "weights": _weights_info(weights_path) if weights_path is not None else None,
        "node": {k: v for k, v in first.get("node", {}).items() if k != "parameters"},
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
        "accuracy": {},
        "timing": {},
        "node_process": {},
        "notes": [no_gt] if no_gt else [],
    }
    for metric in METRICS:
        report[metric] = None

    sources: dict[str, tuple[Path, list[FrameRecord] | None]] = {
        phase: (folder / str(infos[phase].get("output_bag", OUTPUT_BAG)), read_phase_records(folder))
        for phase, folder in replays.items()
    }
    if outputs is not None:
        sources["recorded"] = (Path(outputs), None)
    classes: Classes | None = None
    replayed: dict[str, dict[int, Results]] = {}
    tasks: set[str] = set()
    for phase, (bag_path, records) in sources.items():
        if records is not None:
            report["timing"][phase] = timing_summary(records)
            report["node_process"][phase] = infos[phase].get("node_process")
        if gt is None:
            continue
        output_bag = read_output_bag(bag_path)
        topics = output_topics(output_bag)
        if not topics.present():
            raise BagError(
                f"output bag {bag_path} holds none of the node's outputs (detections, poses, segmentation)"
            )
        check_stamps(gt, output_bag, topics, records)
        tasks |= {TASK_OF[k] for k in topics.present()}
        if classes is None:
            classes = resolve_classes(output_bag, topics, weights_path)
            report["classes"] = dataclasses.asdict(classes)
        predictions, missing = predictions_from_outputs(output_bag, topics, gt, classes, records)
        replayed[phase] = predictions
        key = "lockstep" if phase in ("lockstep", "recorded") else "rate_all_outputs"
        report["accuracy"][key] = {
            **score(gt, predictions, classes).to_dict(),
            "frames_without_output": missing,
        }
        if phase == "rate" and records is not None:
            loaded, late = predictions_from_outputs(
                output_bag, topics, gt, classes, records, on_time_only=True
            )
            report["accuracy"]["loaded"] = {
                **score(gt, loaded, classes).to_dict(),
                "frames_late_or_missing": late,
            }

    headline = report["accuracy"].get("lockstep") or report["accuracy"].get("rate_all_outputs") or {}
    for metric in METRICS:
        report[metric] = headline.get(metric)
    loaded = report["accuracy"].get("loaded", {})
    for metric in ("bbox_AP", "kp_AP", "mIoU"):
        report[f"loaded_{metric}"] = loaded.get(metric)

    if gt is None or classes is None:
        pass
    elif direct and weights_path is not None and input_bag is not None:
        topic = first["input"]["topic"]
        direct_results = direct_predictions(Path(input_bag), topic, gt, weights_path, parameters, tasks)
        report["accuracy"]["direct"] = score(gt, direct_results, classes).to_dict()
        compared = replayed.get("lockstep") or replayed.get("recorded")
        if compared is not None:
            report["agreement_with_direct"] = agreement(direct_results, compared)
    elif direct:
        report["notes"].append(
            "direct (model runtime alone) figures skipped: needs the weights and the input bag"
        )
    for metric in METRICS:
        report[f"direct_{metric}"] = report["accuracy"].get("direct", {}).get(metric)

    timing_phase = (
        "rate" if "rate" in report["timing"] else "lockstep" if "lockstep" in report["timing"] else None
    )
    if timing_phase is not None:
        timing = report["timing"][timing_phase]
        report["latency_ms"] = timing["latency_ms"]
        report["frames"] = timing["frames"]
        report["throughput_hz"] = timing["throughput_hz"]
        report["timing_from"] = timing_phase
    return report


# -- baseline ------------------------------------------------------------------------------------------------
def compare_to_baseline(
    report: Mapping[str, Any], baseline: Mapping[str, Any], ap_tolerance: float, latency_tolerance: float
) -> list[str]:
    """The figures that regressed against a stored report, each as one phrase (empty: none did).

    An accuracy figure (:data:`COMPARED`, fractions) regresses when it is more than ``ap_tolerance`` below the
    baseline's; the p95 latency when it is more than ``latency_tolerance`` (a fraction: 0.2 = 20 %) above it.
    Figures missing on either side are not compared.
    """
    regressions = []
    for key in COMPARED:
        now, before = report.get(key), baseline.get(key)
        if now is not None and before is not None and float(now) < float(before) - ap_tolerance:
            regressions.append(f"{key} {now:.4f} < baseline {before:.4f} - {ap_tolerance:g}")
    now_p95 = (report.get("latency_ms") or {}).get("p95")
    before_p95 = (baseline.get("latency_ms") or {}).get("p95")
    if now_p95 is not None and before_p95 is not None and now_p95 > before_p95 * (1 + latency_tolerance):
        regressions.append(
            f"latency p95 {now_p95:.1f} ms > baseline {before_p95:.1f} ms + {100 * latency_tolerance:g} %"
        )
    return regressions


def read_baseline(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BagError(f"cannot read baseline {path}: {error}") from error
    if not isinstance(data, dict):
        raise BagError(f"baseline {path} is not a JSON object")
    return data


# -- writing -------------------------------------------------------------------------------------------------
def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}"


def _ms(stats: Mapping[str, Any] | None, key: str) -> str:
    return "n/a" if not stats or stats.get(key) is None else f"{float(stats[key]):.1f}"


def markdown(report: Mapping[str, Any]) -> str:
    """The human summary: accuracy table, timing tables, provenance."""
    acc = report.get("accuracy", {})
    names = (
        ("lockstep", "lockstep"),
        ("at rate, every output", "rate_all_outputs"),
        ("model alone", "direct"),
        ("under load", "loaded"),
    )
    columns = [(name, acc[key]) for name, key in names if acc.get(key)]
    if "lockstep" in acc:
        columns = [c for c in columns if c[0] != "at rate, every output"]
    bag, weights = report.get("bag") or {}, report.get("weights") or {}
    mach = report.get("machine", {})
    lines = ["# Replay report", ""]
    lines.append(
        f"- bag: `{bag.get('bag', bag.get('ground_truth'))}` ({bag.get('frames', '?')} frames on "
        f"`{bag.get('topic', '?')}`, sha256 {str(bag.get('sha256', ''))[:12]})"
    )
    if weights:
        lines.append(f"- weights: `{weights['path']}` ({weights['model']}, sha256 {weights['sha256'][:12]})")
    lines.append(
        f"- machine: {mach.get('cpu')} ({mach.get('cpu_count')} CPUs), git {report.get('git_commit')}"
    )
    lines += ["", "## Accuracy (%)", ""]
    if columns:
        lines.append("| metric | " + " | ".join(n for n, _ in columns) + " |")
        lines.append("| --- |" + " ---: |" * len(columns))
        for metric in METRICS:
            if any(c.get(metric) is not None for _, c in columns):
                lines.append(f"| {metric} | " + " | ".join(_pct(c.get(metric)) for _, c in columns) + " |")
    else:
        lines.append("not evaluated (no ground truth)")
    agree = report.get("agreement_with_direct")
    if agree:
        lines += [
            "",
            f"Lockstep vs model alone: {agree['frames_with_other_box_count']} frames with another box count, "
            f"largest box difference {agree['max_box_difference_px']} px, "
            f"{agree['frames_with_other_segmentation']} frames with another segmentation.",
        ]
    paces = report.get("config", {}).get("paces", {})
    for phase, timing in report.get("timing", {}).items():
        frames = timing["frames"]
        rate = (paces.get(phase) or {}).get("rate_factor")
        title = phase + (f" (x{rate:g} the recorded rate)" if rate else "")
        lines += ["", f"## Latency, {title}: publish -> received (ms)", ""]
        lines += ["| output | p50 | p95 | p99 | max |", "| --- | ---: | ---: | ---: | ---: |"]
        rows = [("all outputs of a frame", timing["latency_ms"]), *timing["latency_ms_per_topic"].items()]
        for name, stats in rows:
            cells = " | ".join(_ms(stats, k) for k in ("p50", "p95", "p99", "max"))
            lines.append(f"| {name} | {cells} |")
        lines += [
            "",
            f"Frames: {frames['sent']} sent, {frames['processed']} processed, {frames['dropped']} dropped, "
            f"{frames['late']} late; throughput {timing['throughput_hz']} Hz.",
        ]
        process = report.get("node_process", {}).get(phase)
        if process and "cpu_s" in process:
            lines.append(
                f"Node process: {process['cpu_s']} CPU s ({process['cpu_percent']} % of one core), "
                f"peak RSS {process['peak_rss_mib']} MiB."
            )
    baseline = report.get("baseline")
    if baseline:
        found = "; ".join(baseline["regressions"]) or "no regression"
        lines += ["", "## Baseline", "", f"Compared with `{baseline['path']}`: {found}."]
    for note in report.get("notes", []):
        lines += ["", f"Note: {note}"]
    artifacts = report.get("artifacts") or {}
    if artifacts:
        lines += ["", "## Files", ""] + [f"- {name}: `{path}`" for name, path in artifacts.items()]
    lines += ["", "Command:", "", f"    {report.get('command')}", ""]
    return "\n".join(lines)


def table(report: Mapping[str, Any]) -> str:
    """The short console summary: the accuracy and latency lines of the Markdown."""
    text = markdown(report)
    start = text.index("## Accuracy")
    ends = [
        i
        for i in (text.find(m, start) for m in ("\n## Baseline", "\nNote:", "\n## Files", "\nCommand:"))
        if i >= 0
    ]
    return text[start : min(ends)].strip()


def render_extras(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """THE call site of ``mcn_ros.bag.report`` (plots: latency over time and histogram, per-class AP bars, a
    strip of annotated frames; the MP4 video), written by a second engineer.

    Expected interface: ``render(folder: Path, report: dict) -> dict[str, str]`` (artifact name -> path
    relative to ``folder``), reading the replay folders and bags in ``folder``. Until that module exists the
    report says so and carries on.
    """
    try:
        extras = importlib.import_module("mcn_ros.bag.report")
    except ModuleNotFoundError:
        report["notes"].append("plots and video not made: mcn_ros/bag/report.py is not in this checkout")
        return {}
    return dict(extras.render(folder, report))


def write_report(folder: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """report.json and report.md in ``folder`` (plots and video through :func:`render_extras`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report["artifacts"] = {
        **render_extras(folder, report),
        "report_json": REPORT_JSON,
        "report_md": REPORT_MD,
    }
    write_text_atomic(folder / REPORT_JSON, json.dumps(report, indent=1, default=_json_default))
    write_text_atomic(folder / REPORT_MD, markdown(report))
    return {"json": folder / REPORT_JSON, "markdown": folder / REPORT_MD}


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
