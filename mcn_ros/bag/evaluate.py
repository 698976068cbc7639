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

This module puts the report together; the parts live beside it: :mod:`mcn_ros.bag.accuracy` (outputs ->
results, scoring), :mod:`mcn_ros.bag.direct` (the model runtime alone), :mod:`mcn_ros.bag.timing` (frames,
latency, throughput), :mod:`mcn_ros.bag.provenance` (machine, versions, commit, weights) and
:func:`mcn_ros.bag.video.annotated_frames` (the video's frames).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mcn_ros.bag import BagError
from mcn_ros.bag._util import ACCURACY_KEYS, finite_number
from mcn_ros.bag.accuracy import (
    TASK_OF,
    Classes,
    OutputTopics,
    check_stamps,
    output_topics,
    predictions_from_outputs,
    resolve_classes,
    score,
)
from mcn_ros.bag.bagio import OutputBag, read_camera_bag, read_output_bag
from mcn_ros.bag.direct import agreement, direct_predictions
from mcn_ros.bag.ground_truth import SIDECAR, GroundTruth, read_ground_truth, sidecar_path
from mcn_ros.bag.pacing import FrameRecord
from mcn_ros.bag.provenance import git_commit, machine, versions, weights_info
from mcn_ros.bag.replay import OUTPUT_BAG, command_line, find_replays, read_phase_records, read_replay_info
from mcn_ros.bag.timing import timing_summary, topic_latencies_ms
from mcn_ros.bag.video import annotated_frames
from mcn_ros.evaluation import METRICS
from mcn_ros.model.results import Results


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
    outputs_under: str | None = None,
) -> Evaluation:
    """The report of a run folder / replay folder (``path``), or of a recorded output bag (``outputs``);
    ``outputs_under``: only the outputs under that namespace (:func:`output_topics`)."""
    replays: dict[str, Path] = find_replays(path) if path is not None else {}
    infos = {phase: read_replay_info(folder) for phase, folder in replays.items()}
    first = next(iter(infos.values()), {})
    source: dict[str, Any] = first.get("input", {})
    input_bag = source.get("bag")
    node_info: dict[str, Any] = first.get("node", {})
    parameters: dict[str, Any] = dict(node_info.get("parameters", {}))
    notes: list[str] = []
    if weights is None and parameters.get("weights"):
        if Path(parameters["weights"]).is_file():
            weights = parameters["weights"]
        else:  # e.g. replayed into a node on a robot, evaluated elsewhere: the recorded LabelInfos serve
            notes.append(
                f"the node's weights {parameters['weights']} are not on this machine: class names from the "
                "recorded LabelInfo, no direct run (pass --weights to have both)"
            )
    weights_path = Path(weights) if weights else None
    if weights_path is not None and not weights_path.is_file():
        raise BagError(
            f"weights file {weights_path} does not exist (needed for the class names and direct runs)"
        )

    gt: GroundTruth | None = None
    # What the replay was given: its --ground-truth, or the bag's own file (read below as the bag's).
    recorded = source.get("ground_truth")
    # (The bag folder may be gone from this machine: its own file was <bag>/ground_truth.json.)
    own = input_bag is not None and Path(recorded or "") in (
        sidecar_path(input_bag).resolve(),
        (Path(input_bag) / SIDECAR).resolve(),
    )
    if ground_truth is None and recorded and not own:
        if Path(recorded).is_file():
            ground_truth = recorded
        else:
            notes.append(f"the replay's ground truth {recorded} is not on this machine")
    if ground_truth is not None:
        gt = read_ground_truth(ground_truth)
        if input_bag is not None and Path(input_bag).is_dir():
            gt.check_matches(read_camera_bag(input_bag, source.get("topic")))
    elif input_bag is not None and sidecar_path(input_bag).is_file():
        gt = read_ground_truth(input_bag)
    elif input_bag is not None:
        lacks = f"has no {SIDECAR}" if Path(input_bag).is_dir() else "is not on this machine"
        notes.append(f"accuracy not evaluated: the input bag {input_bag} {lacks} (pass --ground-truth)")
    else:
        raise BagError(
            "no ground truth: pass --ground-truth (a bag folder with ground_truth.json, or the file)"
        )
    if (
        not source
        and direct
        and weights_path is not None
        and gt is not None
        and Path(str(ground_truth)).is_dir()
    ):
        # A recording scored against a camera bag: its frames (on the topic its ground truth names) are what
        # the recorded node answered, for the model runtime alone and the annotated video.
        source = {"bag": str(ground_truth), "topic": gt.camera_topic}
        input_bag = source["bag"]

    summary: dict[str, Any] = {
        "format": "mcn_ros.replay_report",
        "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "replay_commands": {phase: info.get("command") for phase, info in infos.items()},
        "bag": source or {"ground_truth": str(gt.path) if gt is not None else None},
        "weights": weights_info(weights_path) if weights_path is not None else None,
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
    scored_from: dict[str, str] = {}  # accuracy key -> the phase whose outputs it scored
    read: dict[str, tuple[OutputBag, OutputTopics]] = {}
    tasks: set[str] = set()
    for phase, (bag_path, records) in sources.items():
        output_bag = read_output_bag(bag_path)
        topics = output_topics(output_bag, outputs_under)
        if not topics.present():
            where = f" under {outputs_under}" if outputs_under else ""
            raise BagError(
                f"output bag {bag_path} holds none of the node's outputs (detections, poses, segmentation)"
                + where
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
            if topics.segmentation is not None and classes.segmentation is None:
                notes.append(
                    "segmentation not scored: its class names are not in the output bag (pass --weights)"
                )
        if gt is None:
            continue
        check_stamps(gt, output_bag, topics, records)
        predictions, missing = predictions_from_outputs(output_bag, topics, gt, classes, records)
        replayed[phase] = predictions
        key = {"lockstep": "lockstep", "recorded": "recorded"}.get(phase, "rate_all_outputs")
        scored_from[key] = phase
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
                Path(input_bag), source.get("topic"), gt, weights_path, parameters, tasks
            )
            summary["accuracy"]["direct"] = score(gt, direct_results, classes).to_dict()
            if not parameters:
                notes.append(
                    "direct (model runtime alone) figures with the node's default parameters: the recording "
                    "does not say which the node ran with"
                )
            compared = replayed.get("lockstep") or replayed.get("recorded")
            if compared is not None:
                summary["agreement_with_direct"] = agreement(direct_results, compared)
        elif direct:
            notes.append("direct (model runtime alone) figures skipped: needs the weights and the input bag")
    accuracy = summary["accuracy"]
    # The headline: a lockstep replay's, else a recording's (given with --outputs), else a rate replay's,
    # whose counts each dropped frame as empty (report.accuracy_basis); each is kept under its own key.
    headline_key = next((k for k in ("lockstep", "recorded", "rate_all_outputs") if k in accuracy), None)
    headline = accuracy[headline_key] if headline_key else {}
    summary["accuracy_from"] = scored_from.get(headline_key) if headline_key else None
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
            source.get("topic"),
            output_bag,
            topics,
            classes,
            keypoint_threshold,
        )
    return evaluation


# -- writing -------------------------------------------------------------------------------------------------
def read_baseline(path: str | Path) -> dict[str, Any]:
    """An earlier report.json to compare with; a JSON file holding none of a report's figures is refused
    (compared with nothing, it would pass every check)."""
    from mcn_ros.bag._util import ACCURACY_KEYS

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BagError(f"cannot read baseline {path}: {error}") from error
    if not isinstance(data, dict):
        raise BagError(f"baseline {path} is not a JSON object")
    figures = [f"{prefix}{key}" for _, key in ACCURACY_KEYS for prefix in ("", "loaded_", "direct_")]
    if not any(name in data for name in [*figures, "latency_ms"]):
        raise BagError(
            f"baseline {path} is not an evaluation report: it has none of a report.json's figures "
            f"({', '.join(key for _, key in ACCURACY_KEYS)}, latency_ms)"
        )
    return data


def would_lose(folder: str | Path, evaluation: Evaluation, direct: bool = True) -> list[str]:
    """What the report already in ``folder`` holds that ``evaluation`` would not write again: accuracy
    figures it cannot score (no ground truth, no weights here), the video and frame strip it cannot draw (the
    input bag is not here). Empty when there is no readable report. ``direct`` False (``--no-direct``): the
    model-alone figures and the video were not asked for, so they do not count."""
    from mcn_ros.bag.report import REPORT_FILES

    try:
        before = json.loads((Path(folder) / REPORT_FILES["json"]).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    if not isinstance(before, dict):
        return []
    lost = [
        f"{label} ({name})"
        for prefix, name in (("", "headline"), ("loaded_", "under load"), ("direct_", "model alone"))
        if direct or prefix != "direct_"
        for label, key in ACCURACY_KEYS
        if finite_number(before.get(prefix + key)) is not None
        and finite_number(evaluation.summary.get(prefix + key)) is None
    ]
    files = before.get("files")
    if direct and evaluation.video is None and isinstance(files, dict):
        lost += [REPORT_FILES[key] for key in ("video", "frames") if key in files]
    return lost


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
