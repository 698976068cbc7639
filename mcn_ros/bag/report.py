"""The replay report: figures a person would rather look at than read (no ROS; matplotlib Agg, OpenCV).

:func:`write_report` writes, into one folder, ``report.json`` (every figure), ``report.md`` (the
Markdown summary), ``latency.png`` (latency over time and its histogram per output topic),
``per_class.png`` (box AP and segmentation IoU per class), ``frames.png`` (a strip of up to 8 evenly
spaced annotated frames) and ``replay.mp4`` (the annotated replay). Everything is first written to a
temporary folder inside the output folder and renamed into place only when all of it succeeded, so a
failed run never leaves a half report over an older one. The building blocks are usable on their own
and importable from here: :func:`plot_latency`, :func:`plot_per_class`, :func:`frame_strip` and
:func:`latency_stats` (:mod:`mcn_ros.bag.plots`), :func:`write_video` (:mod:`mcn_ros.bag.video`),
:func:`markdown_summary` (:mod:`mcn_ros.bag.markdown`) and :func:`compare_to_baseline` (this module);
each file is written under a temporary name and renamed at the end.

The summary (the content of ``report.json``) is a JSON-ready mapping. Every key is optional; a missing
key or a ``None`` renders as "n/a" and is skipped by :func:`compare_to_baseline`. Accuracy figures are
fractions in [0, 1] (shown as percentages), latencies milliseconds::

    {
      "bbox_AP": 0.41, "kp_AP": 0.20, "mIoU": 0.64,          # lockstep replay through the node
      "direct_bbox_AP": ..., "direct_kp_AP": ..., "direct_mIoU": ...,  # the model runtime alone
      "loaded_bbox_AP": ..., "loaded_kp_AP": ..., "loaded_mIoU": ...,  # rate replay: late = no output
      # optional: "bbox_AP50", "kp_AP50" with the same "direct_" / "loaded_" prefixes
      "latency_ms": {"p50": 21.0, "p95": 30.5, "p99": 41.2, "max": 55.0},  # all output topics
      "latency_by_topic_ms": {"/mcn/detections": {"p50": ..., "p95": ..., "p99": ..., "max": ...,
                                                  "n": 200, "missing": 0}},  # n, missing optional
      "frames": {"sent": 200, "processed": 198, "dropped": 2},
      "throughput_fps": 9.8,
      "node": {"cpu_s": 35.2, "peak_rss_mb": 812.0},
      "per_class_AP": {"person": 0.45, "car": 0.52},         # box AP per detection class
      "per_class_IoU": {"background": 0.97, "person": 0.61},  # segmentation IoU per class
      "command": "python -m mcn_ros.bag ...",                 # a string or a list of arguments
      "files": {"latency": "latency.png", ...},               # name -> path relative to the report
    }

Other keys (bag and weights hashes, config, machine, versions, commit) travel in ``report.json``
untouched; the Markdown summary shows the keys above.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np

from mcn_ros.bag._util import ACCURACY_KEYS, finite_number, nested_get
from mcn_ros.bag.markdown import markdown_summary
from mcn_ros.bag.plots import frame_strip, latency_stats, plot_latency, plot_per_class
from mcn_ros.bag.video import VIDEO_CODECS, write_video

__all__ = [
    "ACCURACY_KEYS",
    "REPORT_FILES",
    "STRIP_FRAMES",
    "VIDEO_CODECS",
    "accuracy_basis",
    "accuracy_comparable",
    "compare_to_baseline",
    "frame_strip",
    "latency_stats",
    "markdown_summary",
    "not_compared",
    "plot_latency",
    "plot_per_class",
    "write_report",
    "write_video",
]

#: The report's files: key in ``summary["files"]`` and in :func:`write_report`'s result -> file name.
REPORT_FILES: dict[str, str] = {
    "latency": "latency.png",
    "per_class": "per_class.png",
    "frames": "frames.png",
    "video": "replay.mp4",
    "markdown": "report.md",
    "json": "report.json",
}
#: Frames in the strip of :func:`write_report`.
STRIP_FRAMES = 8


def _to_jsonable(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, Paths to str, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# ------------------------------------------------------------------------------------------- baseline


def latency_basis(summary: Mapping[str, Any]) -> tuple[Any, Any]:
    """What a report's headline latency was measured in: (``timing_from``, that replay's rate factor);
    None where the report does not say."""
    phase = summary.get("timing_from")
    return phase, nested_get(summary, "config", "paces", phase, "rate_factor") if phase else None


def latency_comparable(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> bool:
    """Whether two reports' latencies were measured alike (the same pace and rate factor; where either
    report does not say, they are taken to be)."""
    return _alike(latency_basis(current), latency_basis(baseline))


def accuracy_basis(summary: Mapping[str, Any], prefix: str = "") -> tuple[Any, Any]:
    """What a report's accuracy figures were scored on: (the replay phase, its rate factor where it is a
    rate replay) for the headline (``prefix`` "", ``accuracy_from``) or the figures under load ("loaded_",
    always the rate replay's on-time outputs); None where the report does not say. A rate replay's figures
    count the frames the node dropped, so they move with the load the rate factor put on it."""
    if prefix == "direct_":
        return None, None
    paces = nested_get(summary, "config", "paces")
    if prefix == "loaded_" and isinstance(paces, Mapping) and "rate" not in paces:
        return None, None  # no rate replay: no figures under load to compare, nor a basis to tell
    phase = "rate" if prefix == "loaded_" else summary.get("accuracy_from")
    return phase, nested_get(summary, "config", "paces", "rate", "rate_factor") if phase == "rate" else None


def _alike(now: tuple[Any, Any], before: tuple[Any, Any]) -> bool:
    """Two bases alike, or either unknown (an older report that does not say)."""
    return now[0] is None or before[0] is None or now == before


def accuracy_comparable(current: Mapping[str, Any], baseline: Mapping[str, Any], prefix: str = "") -> bool:
    """Whether two reports' accuracy figures (``prefix``: "" the headline, "loaded_", "direct_") were scored
    alike (:func:`accuracy_basis`; where either report does not say, they are taken to be)."""
    return _alike(accuracy_basis(current, prefix), accuracy_basis(baseline, prefix))


def not_compared(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """What :func:`compare_to_baseline` leaves out because the two reports measured it otherwise (latency,
    accuracy, accuracy under load), one note each, naming both reports' replay and rate factor."""
    bases = (
        ("latency", "its latency is", latency_basis),
        ("accuracy", "its figures are", lambda summary: accuracy_basis(summary, "")),
        ("accuracy under load", "its figures are", lambda summary: accuracy_basis(summary, "loaded_")),
    )
    notes = []
    for what, said, basis in bases:
        now, before = basis(current), basis(baseline)
        if not _alike(now, before):
            notes.append(
                f"{what} not compared with the baseline: {said} from a {before[0]} replay (rate factor "
                f"{before[1]}), this one's from a {now[0]} replay (rate factor {now[1]})"
            )
    return notes


def compare_to_baseline(
    current: Mapping[str, Any],
    baseline: Mapping[str, Any],
    ap_tolerance: float = 0.01,
    latency_tolerance: float = 0.2,
) -> list[str]:
    """The figures of ``current`` that regressed against ``baseline`` (two summaries), one line each.

    Accuracy (every key of :data:`ACCURACY_KEYS`, lockstep, under load and model alone) regresses when it
    drops by more than ``ap_tolerance`` (absolute, fractions: 0.01 = one point), if both were scored alike
    (:func:`accuracy_basis`: a rate replay's figures, which count dropped frames, are not a lockstep
    replay's, nor another rate factor's); the p95 latency, overall and per topic, when it rises by more than
    ``latency_tolerance`` (relative: 0.2 = 20 %), if both were measured alike (:func:`latency_comparable`).
    Figures missing (or None) on either side are skipped. Empty when nothing regressed.
    """
    regressions: list[str] = []
    for prefix in ("", "loaded_", "direct_"):
        if not accuracy_comparable(current, baseline, prefix):
            continue
        for _, key in ACCURACY_KEYS:
            name = prefix + key
            now, before = finite_number(current.get(name)), finite_number(baseline.get(name))
            if now is not None and before is not None and before - now > ap_tolerance:
                regressions.append(
                    f"{name}: {100 * before:.1f} -> {100 * now:.1f} "
                    f"({100 * (now - before):+.1f} points, tolerance {100 * ap_tolerance:.1f})"
                )
    if not latency_comparable(current, baseline):
        return regressions
    pairs: list[tuple[str, Any, Any]] = [
        ("latency p95", nested_get(current, "latency_ms", "p95"), nested_get(baseline, "latency_ms", "p95"))
    ]
    now_topics, before_topics = current.get("latency_by_topic_ms"), baseline.get("latency_by_topic_ms")
    if isinstance(now_topics, Mapping) and isinstance(before_topics, Mapping):
        pairs += [
            (f"latency p95 {topic}", nested_get(stats, "p95"), nested_get(before_topics.get(topic), "p95"))
            for topic, stats in now_topics.items()
        ]
    for name, now_value, before_value in pairs:
        now, before = finite_number(now_value), finite_number(before_value)
        if now is not None and before is not None and now > before * (1.0 + latency_tolerance):
            rise = f"{100 * (now / before - 1):+.0f} %" if before > 0 else "up from 0"
            regressions.append(
                f"{name}: {before:.1f} ms -> {now:.1f} ms ({rise}, tolerance {100 * latency_tolerance:.0f} %)"
            )
    return regressions


# ---------------------------------------------------------------------------------------------- report


def _even_indices(count: int, k: int) -> list[int]:
    """Up to ``k`` evenly spaced indices in range(count), first and last included."""
    if count <= k:
        return list(range(count))
    return sorted({round(i * (count - 1) / (k - 1)) for i in range(k)})


class _Sampler:
    """Keeps copies of evenly spaced items of a stream of unknown length, at most ``2 * k`` at a time."""

    def __init__(self, k: int, total: int | None) -> None:
        self.k, self.total, self.count = k, total, 0
        self.wanted = set(_even_indices(total, k)) if total is not None else None
        self.stride = 1
        self.kept: list[tuple[int, np.ndarray]] = []

    def tap(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            index, self.count = self.count, self.count + 1
            if self.wanted is not None:
                if index in self.wanted:
                    self.kept.append((index, np.array(frame, copy=True)))
            elif index % self.stride == 0:
                self.kept.append((index, np.array(frame, copy=True)))
                if len(self.kept) > 2 * self.k:
                    self.stride *= 2
                    self.kept = [(i, f) for i, f in self.kept if i % self.stride == 0]
            yield frame

    def picked(self) -> list[tuple[int, np.ndarray]]:
        return [self.kept[i] for i in _even_indices(len(self.kept), self.k)]


def write_report(
    out_dir: str | Path,
    summary: Mapping[str, Any],
    latencies_ms: Mapping[str, Sequence[float | None]],
    send_times_s: Sequence[float],
    annotated_frames_rgb: Iterable[np.ndarray],
    fps: float,
) -> dict[str, Path]:
    """Write the report into ``out_dir`` and return its files (key of :data:`REPORT_FILES` -> path).

    ``summary`` is described in the module docstring; ``summary["files"]`` is filled with the paths
    relative to ``out_dir``, and ``latency_by_topic_ms`` with :func:`latency_stats` of ``latencies_ms``
    when absent. ``annotated_frames_rgb`` (uint8 RGB, an iterable consumed once: a generator keeps memory
    flat) becomes ``replay.mp4`` at ``fps`` and the strip ``frames.png``; with no frames, neither is written.

    All files are first written to a temporary folder in ``out_dir`` and moved into place at the end; any
    report file of an earlier run that this one does not produce is removed then. On an error nothing in
    ``out_dir`` changes.
    """
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        summary = dict(summary)
        if "latency_by_topic_ms" not in summary and latencies_ms:
            summary["latency_by_topic_ms"] = {t: latency_stats(v) for t, v in latencies_ms.items()}
        done: dict[str, Path] = {}
        done["latency"] = plot_latency(latencies_ms, send_times_s, tmp / REPORT_FILES["latency"])
        done["per_class"] = plot_per_class(
            _mapping(summary.get("per_class_AP")),
            _mapping(summary.get("per_class_IoU")),
            tmp / REPORT_FILES["per_class"],
        )
        total = len(annotated_frames_rgb) if isinstance(annotated_frames_rgb, Sized) else None
        sampler = _Sampler(STRIP_FRAMES, total)
        frames = iter(sampler.tap(annotated_frames_rgb))
        first = next(frames, None)
        if first is not None:
            video = tmp / REPORT_FILES["video"]
            done["video"] = write_video(itertools.chain([first], frames), video, fps)
            picked = sampler.picked()
            done["frames"] = frame_strip(
                [frame for _, frame in picked],
                tmp / REPORT_FILES["frames"],
                columns=4,
                titles=[f"frame {i + 1} of {sampler.count}" for i, _ in picked],
            )
        summary["files"] = {
            key: name for key, name in REPORT_FILES.items() if key in done or key in ("markdown", "json")
        }
        markdown = markdown_summary(summary)
        text = json.dumps(_to_jsonable(summary), indent=2, allow_nan=False) + "\n"
        (tmp / REPORT_FILES["markdown"]).write_text(markdown, encoding="utf-8")
        (tmp / REPORT_FILES["json"]).write_text(text, encoding="utf-8")
        # Everything exists: move it into place, report.json (the run's record) last.
        result: dict[str, Path] = {}
        for key, name in REPORT_FILES.items():
            if key in summary["files"]:
                (tmp / name).replace(out / name)
                result[key] = out / name
            else:
                (out / name).unlink(missing_ok=True)
        return result
    except BaseException:
        if created:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: the folder this call made
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mapping(value: Any) -> Mapping[str, float]:
    return value if isinstance(value, Mapping) else {}
