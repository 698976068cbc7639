"""The replay report: figures a person would rather look at than read (no ROS; matplotlib Agg, OpenCV).

:func:`write_report` writes, into one folder, ``report.json`` (every figure), ``report.md`` (the
Markdown summary), ``latency.png`` (latency over time and its histogram per output topic),
``per_class.png`` (box AP and segmentation IoU per class), ``frames.png`` (a strip of up to 8 evenly
spaced annotated frames) and ``replay.mp4`` (the annotated replay). Everything is first written to a
temporary folder inside the output folder and renamed into place only when all of it succeeded, so a
failed run never leaves a half report over an older one. The building blocks (:func:`plot_latency`,
:func:`plot_per_class`, :func:`frame_strip`, :func:`write_video`, :func:`markdown_summary`,
:func:`compare_to_baseline`, :func:`latency_stats`) are usable on their own; each file is written under
a temporary name and renamed at the end.

Plots use matplotlib's object-oriented API on an Agg canvas: no pyplot, no display, no change to the
process's matplotlib backend.

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
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory

#: The report's files: key in ``summary["files"]`` and in :func:`write_report`'s result -> file name.
REPORT_FILES: dict[str, str] = {
    "latency": "latency.png",
    "per_class": "per_class.png",
    "frames": "frames.png",
    "video": "replay.mp4",
    "markdown": "report.md",
    "json": "report.json",
}
#: Accuracy figures: (label, key); each also exists as ``direct_<key>`` and ``loaded_<key>``.
ACCURACY_KEYS: tuple[tuple[str, str], ...] = (
    ("bbox AP", "bbox_AP"),
    ("bbox AP50", "bbox_AP50"),
    ("keypoint AP", "kp_AP"),
    ("keypoint AP50", "kp_AP50"),
    ("mIoU", "mIoU"),
)
#: Frames in the strip of :func:`write_report`.
STRIP_FRAMES = 8
#: MP4 codecs tried in order (the pinned opencv-python-headless writes mp4v; avc1 needs an H.264 encoder).
VIDEO_CODECS: tuple[str, ...] = ("mp4v", "avc1")

_DPI = 100
_TILE_MIN_WIDTH, _TILE_MAX_WIDTH = 256, 640


# --------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix, for writers that pick the format by it), renamed to
    ``path`` when the block succeeds and removed when it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _number(value: Any) -> float | None:
    """A finite real number as float, else None (None, NaN, strings, booleans, ...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` or None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _pct(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{100 * number:.1f}"


def _fmt(value: Any, digits: int = 1) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def _count(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else str(round(number))


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _as_rgb8(image: Any, index: int) -> np.ndarray:
    """An image as uint8 RGB [H, W, 3] (grey [H, W] and RGBA accepted); ValueError naming ``index``."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"frame {index}: expected uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"frame {index}: expected an RGB image [H, W, 3], got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


def _letterbox(image: np.ndarray, size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """``image`` scaled to fit ``size`` (height, width) with its aspect ratio kept, centred, padded."""
    h, w = image.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return image
    scale = min(th / h, tw / w)
    nh, nw = max(1, min(th, round(h * scale))), max(1, min(tw, round(w * scale)))
    if scale < 1:
        interpolation = cv2.INTER_AREA
    elif float(scale).is_integer():
        interpolation = cv2.INTER_NEAREST  # crisp boxes and text when enlarging small frames
    else:
        interpolation = cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interpolation) if (nh, nw) != (h, w) else image
    out = np.full((th, tw, 3), fill, np.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def _save_figure(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    with _atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return path


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, Paths to str, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# --------------------------------------------------------------------------------------------- latency


def latency_stats(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """p50 / p95 / p99 / max / mean (ms) of the latencies that arrived, ``n`` of them and ``missing``
    (the None entries: outputs that never arrived). Percentiles are numpy's linear interpolation."""
    arrived: list[float] = []
    missing = 0
    for value in values:
        number = _number(value)
        if number is None:
            missing += 1
        else:
            arrived.append(number)
    stats: dict[str, float | int | None] = dict.fromkeys(("p50", "p95", "p99", "max", "mean"))
    if arrived:
        data = np.asarray(arrived, np.float64)
        p50, p95, p99 = np.percentile(data, [50, 95, 99])
        stats.update(p50=float(p50), p95=float(p95), p99=float(p99), max=float(data.max()))
        stats["mean"] = float(data.mean())
    stats.update(n=len(arrived), missing=missing)
    return stats


def plot_latency(
    latencies_ms: Mapping[str, Sequence[float | None]], send_times_s: Sequence[float], path: str | Path
) -> Path:
    """One PNG: latency over the run per output topic (top) and its histogram with p50/p95/p99 (bottom).

    ``latencies_ms[topic][i]`` is the latency of frame ``i`` (sent at ``send_times_s[i]``) on that topic,
    None when its output never arrived: such frames are a gap in the line and an ``x`` at the top of the
    panel, and are counted in the legend.
    """
    path = Path(path)
    times = np.asarray([_number(t) for t in send_times_s], np.float64)  # None -> nan
    for topic, given in latencies_ms.items():
        if len(given) != len(times):
            raise ValueError(f"latencies of {topic}: {len(given)} values for {len(times)} send times")
    t0 = float(np.nanmin(times)) if np.isfinite(times).any() else 0.0
    elapsed = times - t0
    colors = colormaps["tab10"]

    figure = Figure(figsize=(11, 8), layout="constrained")
    ax_time, ax_hist = figure.subplots(2, 1, height_ratios=[1.15, 1.0])
    series: dict[str, np.ndarray] = {
        topic: np.asarray([np.nan if _number(v) is None else _number(v) for v in given], np.float64)
        for topic, given in latencies_ms.items()
    }
    arrived_all = np.concatenate([v[np.isfinite(v)] for v in series.values()] or [np.zeros(0)])
    top_marks = blended_transform_factory(ax_time.transData, ax_time.transAxes)
    any_missing = False
    for i, (topic, values) in enumerate(series.items()):
        color = colors(i % 10)
        arrived = np.isfinite(values)
        missing = ~arrived & np.isfinite(elapsed)
        label = f"{topic}: {int(arrived.sum())} arrived"
        if missing.any():
            label += f", {int(missing.sum())} never arrived (x)"
            any_missing = True
        ax_time.plot(elapsed, values, color=color, lw=0.8, marker=".", ms=3, label=label)
        if missing.any():
            ax_time.scatter(
                elapsed[missing],
                np.full(int(missing.sum()), 0.97 - 0.035 * i),  # a row per topic: marks never overlap
                transform=top_marks,
                marker="x",
                s=28,
                color=color,
                clip_on=False,
            )
    if any_missing:  # a grey band holds the x marks: they are no latency value
        band = 0.97 - 0.035 * (len(series) - 1) - 0.025
        ax_time.add_patch(
            Rectangle((0, band), 1, 1 - band, transform=ax_time.transAxes, color="0.92", zorder=0, lw=0)
        )
        ax_time.text(
            0.995, 1 - (1 - band) / 2, "never arrived", transform=ax_time.transAxes, ha="right", va="center",
            fontsize=8, color="0.35",
        )  # fmt: skip
    ax_time.set_title("End-to-end latency per output topic (frame published -> output received)")
    ax_time.set_xlabel("time since the first frame was sent (s)")
    ax_time.set_ylabel("latency (ms)")
    ax_time.grid(alpha=0.3)
    if arrived_all.size:
        ax_time.set_ylim(0, float(arrived_all.max()) * (1.12 + 0.045 * len(series)) + 1e-9)
    else:
        ax_time.set_ylim(0, 1)
    if np.isfinite(elapsed).any():  # explicit: the x marks alone (axes-blended) do not autoscale
        end = float(np.nanmax(elapsed))
        pad = 0.02 * end if end > 0 else 0.5
        ax_time.set_xlim(-pad, end + pad)
    if series:  # one legend for both panels (same colours), above them: it never hides data
        handles, labels = ax_time.get_legend_handles_labels()
        figure.legend(
            handles,
            labels,
            loc="outside upper center",
            ncols=min(3, len(series)),
            fontsize=9,
            title="x in the grey band: the output never arrived" if any_missing else None,
            title_fontsize=9,
        )
    else:
        ax_time.text(0.5, 0.5, "no latency data", ha="center", va="center", transform=ax_time.transAxes)

    if arrived_all.size:
        bins = min(60, max(10, int(math.sqrt(arrived_all.size))))
        edges = np.histogram_bin_edges(arrived_all, bins=bins)
        for i, (topic, values) in enumerate(series.items()):
            color = colors(i % 10)
            data = values[np.isfinite(values)]
            if not data.size:
                ax_hist.plot([], [], color=color, label=f"{topic}: never arrived")
                continue
            p50, p95, p99 = np.percentile(data, [50, 95, 99])
            ax_hist.hist(data, bins=edges, histtype="stepfilled", alpha=0.25, color=color)
            ax_hist.hist(
                data,
                bins=edges,
                histtype="step",
                lw=1.2,
                color=color,
                label=f"{topic}: p50 {p50:.1f}  p95 {p95:.1f}  p99 {p99:.1f} ms",
            )
            for value, style in ((p50, "-"), (p95, "--"), (p99, ":")):
                ax_hist.axvline(float(value), color=color, ls=style, lw=1.4)
        ax_hist.legend(loc="upper right", fontsize=8)
    else:
        ax_hist.text(0.5, 0.5, "no output arrived", ha="center", va="center", transform=ax_hist.transAxes)
    ax_hist.set_title("Latency histogram (vertical lines: solid p50, dashed p95, dotted p99)")
    ax_hist.set_xlabel("latency (ms)")
    ax_hist.set_ylabel("frames")
    ax_hist.grid(alpha=0.3)
    return _save_figure(figure, path)


# ------------------------------------------------------------------------------------------- per class


def plot_per_class(
    per_class_AP: Mapping[str, float],  # noqa: N803 (the summary's key)
    per_class_IoU: Mapping[str, float],  # noqa: N803 (the summary's key)
    path: str | Path,
) -> Path:
    """One PNG of horizontal bars, best class on top, the percentage written on each bar: box AP per
    class (left) and segmentation IoU per class (right); a panel is left out when its mapping is empty."""
    path = Path(path)
    panels = [
        ("Box AP per class (IoU 0.50:0.95)", dict(per_class_AP), "tab:blue"),
        ("Segmentation IoU per class", dict(per_class_IoU), "tab:green"),
    ]
    panels = [panel for panel in panels if panel[1]]
    rows = max((len(values) for _, values, _ in panels), default=0)
    width = 6.0 * max(1, len(panels)) + 1.0
    figure = Figure(figsize=(width, max(2.6, 1.3 + 0.32 * rows)), layout="constrained")
    if not panels:
        ax = figure.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no per-class figures", ha="center", va="center", transform=ax.transAxes)
        return _save_figure(figure, path)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, values, color) in zip(axes, panels, strict=True):
        # ascending, n/a first: barh draws the first item at the bottom, so the best class is on top
        items = sorted(
            ((str(name), _number(value)) for name, value in values.items()),
            key=lambda item: (item[1] is not None, item[1] if item[1] is not None else 0.0, item[0]),
        )
        pct = [0.0 if v is None else 100.0 * v for _, v in items]
        y = np.arange(len(items))
        ax.barh(y, pct, color=color, height=0.7)
        ax.set_yticks(y, [name for name, _ in items])
        for yi, (_, value), p in zip(y, items, pct, strict=True):
            text = "n/a" if value is None else f"{p:.1f}%"
            if value is not None and p >= 18:
                ax.text(p - 1.0, yi, text, ha="right", va="center", color="white", fontsize=8)
            else:
                ax.text(p + 1.0, yi, text, ha="left", va="center", color="black", fontsize=8)
        known = [v for _, v in items if v is not None]
        if known:
            mean = 100.0 * float(np.mean(known))
            ax.axvline(mean, color="black", ls="--", lw=1.0, label=f"mean {mean:.1f}%", zorder=0.5)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_ylim(-0.6, len(items) - 0.4)
        ax.set_xlabel("%")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    return _save_figure(figure, path)


# ---------------------------------------------------------------------------------------------- frames


def frame_strip(
    images_rgb: Sequence[np.ndarray],
    path: str | Path,
    columns: int = 4,
    titles: Sequence[str] | None = None,
) -> Path:
    """A PNG grid of RGB images (uint8 [H, W, 3]), ``columns`` wide, a title above each when given.

    Tiles are all the size of the largest image, scaled to between 256 and 640 pixels wide (small frames
    are enlarged by a whole factor where possible); images of another size are letterboxed into them.
    """
    path = Path(path)
    images = [_as_rgb8(image, i) for i, image in enumerate(images_rgb)]
    if not images:
        raise ValueError("frame_strip: no images")
    if columns < 1:
        raise ValueError(f"frame_strip: columns must be at least 1, got {columns}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"frame_strip: {len(titles)} titles for {len(images)} images")
    h, w = max((image.shape[:2] for image in images), key=lambda hw: hw[0] * hw[1])
    if w < _TILE_MIN_WIDTH:
        scale = float(math.ceil(_TILE_MIN_WIDTH / w))
    elif w > _TILE_MAX_WIDTH:
        scale = _TILE_MAX_WIDTH / w
    else:
        scale = 1.0
    tile_h, tile_w = max(1, round(h * scale)), max(1, round(w * scale))
    title_h = 24 if titles is not None else 0
    gap, background = 6, 235
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    cell_h, cell_w = title_h + tile_h, tile_w
    canvas = np.full((gap + rows * (cell_h + gap), gap + columns * (cell_w + gap), 3), background, np.uint8)
    for i, image in enumerate(images):
        top = gap + (i // columns) * (cell_h + gap)
        left = gap + (i % columns) * (cell_w + gap)
        canvas[top + title_h : top + cell_h, left : left + cell_w] = _letterbox(image, (tile_h, tile_w))
        if titles is not None:
            canvas[top : top + title_h, left : left + cell_w] = 255
            text = _fit_text(str(titles[i]), cell_w - 8, 0.5)
            cv2.putText(
                canvas,
                text,
                (left + 4, top + 17),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (20, 20, 20),
                1,
                cv2.LINE_AA,
            )
    with _atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
    return path


def _fit_text(text: str, width: int, scale: float) -> str:
    """``text`` (ASCII: OpenCV's fonts have no other glyphs) shortened with '...' to fit ``width`` px."""
    text = text.encode("ascii", "replace").decode()

    def fits(candidate: str) -> bool:
        return cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width

    if fits(text):
        return text
    while text and not fits(text + "..."):
        text = text[:-1]
    return text + "..."


def write_video(frames_rgb: Iterable[np.ndarray], path: str | Path, fps: float) -> Path:
    """An MP4 (OpenCV, codec mp4v) of RGB frames (uint8 [H, W, 3]) at ``fps``, consumed one at a time.

    The video has the first frame's size (rounded up to even numbers, as the codec needs); frames of other
    sizes are letterboxed into it. Written under a temporary name, read back (frame count and size) and
    only then renamed to ``path``.
    """
    path = Path(path)
    rate = _number(fps)
    if rate is None or rate <= 0:
        raise ValueError(f"write_video: fps must be a positive number, got {fps!r}")
    frames = iter(frames_rgb)
    first = next(frames, None)
    if first is None:
        raise ValueError("write_video: no frames")
    first = _as_rgb8(first, 0)
    h, w = first.shape[:2]
    size = (max(2, h + h % 2), max(2, w + w % 2))
    with _atomic_path(path) as tmp:
        writer = _open_writer(tmp, rate, size)
        count = 0
        try:
            for index, frame in enumerate(itertools.chain([first], frames)):
                rgb = _letterbox(_as_rgb8(frame, index), size)
                writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                count += 1
        finally:
            writer.release()
        _check_video(tmp, count, size)
    return path


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    for codec in VIDEO_CODECS:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*codec), fps, (size[1], size[0]))
        if writer.isOpened():
            return writer
        writer.release()
    raise RuntimeError(f"OpenCV cannot write an MP4 video here (tried the codecs {', '.join(VIDEO_CODECS)})")


def _check_video(path: Path, count: int, size: tuple[int, int]) -> None:
    capture = cv2.VideoCapture(str(path))
    try:
        opened = capture.isOpened()
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        got = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
    finally:
        capture.release()
    if not opened or frames != count or got != size:
        raise RuntimeError(
            f"the video written does not read back: {frames} frames of {got[1]}x{got[0]} "
            f"for {count} frames of {size[1]}x{size[0]}"
        )


# -------------------------------------------------------------------------------------------- markdown


def markdown_summary(summary: Mapping[str, Any]) -> str:
    """The report as Markdown: accuracy (lockstep, under load, model runtime alone), latency per topic,
    frames, throughput, the node's CPU and memory, per-class figures, the command and the files.

    Missing figures render as "n/a"; the columns "under load" and "model alone" appear when any of their
    figures is present.
    """
    lines = ["# Replay report", ""]

    # accuracy
    rows = [(label, key) for label, key in ACCURACY_KEYS if not key.endswith("AP50") or _any_of(summary, key)]
    columns = [("lockstep", "")]
    if any(_number(summary.get(f"loaded_{key}")) is not None for _, key in rows):
        columns.append(("under load", "loaded_"))
    if any(_number(summary.get(f"direct_{key}")) is not None for _, key in rows):
        columns.append(("model alone", "direct_"))
    lost = len(columns) > 1 and columns[1][1] == "loaded_"
    header = ["metric (%)"] + [name for name, _ in columns] + (["lost under load (points)"] if lost else [])
    lines += ["## Accuracy", "", _row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for label, key in rows:
        cells = [label] + [_pct(summary.get(prefix + key)) for _, prefix in columns]
        if lost:
            a, b = _number(summary.get(key)), _number(summary.get(f"loaded_{key}"))
            cells.append("n/a" if a is None or b is None else f"{100 * (a - b):.1f}")
        lines.append(_row(cells))
    lines.append("")

    # latency
    lines += ["## Latency (ms, frame published -> output received)", ""]
    by_topic = summary.get("latency_by_topic_ms")
    topics: list[tuple[str, Any]] = list(by_topic.items()) if isinstance(by_topic, Mapping) else []
    topics.append(("all outputs", summary.get("latency_ms")))
    counts = any(isinstance(stats, Mapping) and ("n" in stats or "missing" in stats) for _, stats in topics)
    header = ["topic", "p50", "p95", "p99", "max"] + (["arrived", "never arrived"] if counts else [])
    lines += [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for topic, stats in topics:
        cells = [f"`{topic}`" if topic != "all outputs" else topic]
        cells += [_fmt(_get(stats, key)) for key in ("p50", "p95", "p99", "max")]
        if counts:
            cells += [_count(_get(stats, "n")), _count(_get(stats, "missing"))]
        lines.append(_row(cells))
    lines.append("")

    # frames, throughput, node
    frames = summary.get("frames")
    sent, dropped = _number(_get(frames, "sent")), _number(_get(frames, "dropped"))
    dropped_pct = f" ({100 * dropped / sent:.1f} %)" if sent and dropped is not None else ""
    lines += [
        "## Frames and resources",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| frames sent | {_count(_get(frames, 'sent'))} |",
        f"| frames processed | {_count(_get(frames, 'processed'))} |",
        f"| frames dropped | {_count(_get(frames, 'dropped'))}{dropped_pct} |",
        f"| throughput (frames/s) | {_fmt(summary.get('throughput_fps'))} |",
        f"| node CPU time (s) | {_fmt(_get(summary.get('node'), 'cpu_s'))} |",
        f"| node peak memory (MB) | {_fmt(_get(summary.get('node'), 'peak_rss_mb'), 0)} |",
        "",
    ]

    # per class
    ap, iou = summary.get("per_class_AP"), summary.get("per_class_IoU")
    ap = ap if isinstance(ap, Mapping) else {}
    iou = iou if isinstance(iou, Mapping) else {}
    if ap or iou:
        names = list(dict.fromkeys([*ap, *iou]))
        lines += ["## Per class", "", "| class | box AP (%) | IoU (%) |", "| --- | ---: | ---: |"]
        lines += [_row([_cell(name), _pct(ap.get(name)), _pct(iou.get(name))]) for name in names]
        lines.append("")

    # command and files
    command = summary.get("command")
    if isinstance(command, (list, tuple)):
        command = shlex.join(str(part) for part in command)
    lines += ["## Command", "", "```", str(command) if command else "n/a", "```", ""]
    files = summary.get("files")
    if isinstance(files, Mapping) and files:
        lines += ["## Files", ""]
        pictures = []
        for name, rel in files.items():
            if name == "markdown":
                continue
            target = Path(str(rel)).as_posix()
            lines.append(f"- {name}: [{target}]({target})")
            if target.lower().endswith(".png"):
                pictures.append(f"![{name}]({target})")
        lines.append("")
        for picture in pictures:
            lines += [picture, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _any_of(summary: Mapping[str, Any], key: str) -> bool:
    return any(_number(summary.get(prefix + key)) is not None for prefix in ("", "loaded_", "direct_"))


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# ------------------------------------------------------------------------------------------- baseline


def compare_to_baseline(
    current: Mapping[str, Any],
    baseline: Mapping[str, Any],
    ap_tolerance: float = 0.01,
    latency_tolerance: float = 0.2,
) -> list[str]:
    """The figures of ``current`` that regressed against ``baseline`` (two summaries), one line each.

    Accuracy (every key of :data:`ACCURACY_KEYS`, lockstep, under load and model alone) regresses when it
    drops by more than ``ap_tolerance`` (absolute, fractions: 0.01 = one point); the p95 latency, overall
    and per topic, when it rises by more than ``latency_tolerance`` (relative: 0.2 = 20 %). Figures
    missing (or None) on either side are skipped. Empty when nothing regressed.
    """
    regressions: list[str] = []
    for _, key in ACCURACY_KEYS:
        for name in (key, f"loaded_{key}", f"direct_{key}"):
            now, before = _number(current.get(name)), _number(baseline.get(name))
            if now is not None and before is not None and before - now > ap_tolerance:
                regressions.append(
                    f"{name}: {100 * before:.1f} -> {100 * now:.1f} "
                    f"({100 * (now - before):+.1f} points, tolerance {100 * ap_tolerance:.1f})"
                )
    pairs: list[tuple[str, Any, Any]] = [
        ("latency p95", _get(current, "latency_ms", "p95"), _get(baseline, "latency_ms", "p95"))
    ]
    now_topics, before_topics = current.get("latency_by_topic_ms"), baseline.get("latency_by_topic_ms")
    if isinstance(now_topics, Mapping) and isinstance(before_topics, Mapping):
        pairs += [
            (f"latency p95 {topic}", _get(stats, "p95"), _get(before_topics.get(topic), "p95"))
            for topic, stats in now_topics.items()
        ]
    for name, now_value, before_value in pairs:
        now, before = _number(now_value), _number(before_value)
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
        text = json.dumps(_plain(summary), indent=2, allow_nan=False) + "\n"
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
