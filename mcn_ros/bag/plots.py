"""The report's figures: latency over time and its histogram, per-class bars, a strip of frames.

Plots use matplotlib's object-oriented API on an Agg canvas: no pyplot, no display, no change to the
process's matplotlib backend. Each file is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory

from mcn_ros.bag._util import as_rgb8, atomic_path, finite_number, letterbox

_DPI = 100
_TILE_MIN_WIDTH, _TILE_MAX_WIDTH = 256, 640


def _save_figure(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return path


# --------------------------------------------------------------------------------------------- latency


def latency_stats(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """p50 / p95 / p99 / max / mean (ms) of the latencies that arrived, ``n`` of them and ``missing``
    (the None entries: outputs that never arrived). Percentiles are numpy's linear interpolation."""
    arrived: list[float] = []
    missing = 0
    for value in values:
        number = finite_number(value)
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
    times = np.asarray([finite_number(t) for t in send_times_s], np.float64)  # None -> nan
    for topic, given in latencies_ms.items():
        if len(given) != len(times):
            raise ValueError(f"latencies of {topic}: {len(given)} values for {len(times)} send times")
    t0 = float(np.nanmin(times)) if np.isfinite(times).any() else 0.0
    elapsed = times - t0
    colors = colormaps["tab10"]

    figure = Figure(figsize=(11, 8), layout="constrained")
    ax_time, ax_hist = figure.subplots(2, 1, height_ratios=[1.15, 1.0])
    series: dict[str, np.ndarray] = {
        topic: np.asarray(
            [np.nan if finite_number(v) is None else finite_number(v) for v in given], np.float64
        )
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
            ((str(name), finite_number(value)) for name, value in values.items()),
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
    images = [as_rgb8(image, i) for i, image in enumerate(images_rgb)]
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
        canvas[top + title_h : top + cell_h, left : left + cell_w] = letterbox(image, (tile_h, tile_w))
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
    with atomic_path(path) as tmp:
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
