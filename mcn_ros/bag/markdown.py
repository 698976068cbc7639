"""The report's Markdown summary (``report.md``) of a summary mapping (see :mod:`mcn_ros.bag.report`)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcn_ros.bag._util import ACCURACY_KEYS, finite_number, nested_get


def markdown_summary(summary: Mapping[str, Any]) -> str:
    """The report as Markdown: accuracy (lockstep, under load, model runtime alone), latency per topic,
    frames, throughput, the node's CPU and memory, per-class figures, the command and the files.

    Missing figures render as "n/a"; the columns "under load" and "model alone" appear when any of their
    figures is present.
    """
    lines = ["# Replay report", ""]

    # accuracy
    rows = [(label, key) for label, key in ACCURACY_KEYS if not key.endswith("AP50") or _any_of(summary, key)]
    # The headline's replay (report.accuracy_basis): a rate replay's counts each dropped frame as empty.
    headline = {"rate": "rate, all outputs", "recorded": "recorded"}.get(str(summary.get("accuracy_from")))
    columns = [(headline or "lockstep", "")]
    if any(finite_number(summary.get(f"loaded_{key}")) is not None for _, key in rows):
        columns.append(("under load", "loaded_"))
    if any(finite_number(summary.get(f"direct_{key}")) is not None for _, key in rows):
        columns.append(("model alone", "direct_"))
    # Lost under load: against the unloaded figures, the lockstep replay's, else the model alone's (a rate
    # replay's headline already counts the dropped frames: against it, most of the loss would not show).
    prefixes = [prefix for _, prefix in columns]
    unloaded = "" if headline is None else ("direct_" if "direct_" in prefixes else None)
    lost = "loaded_" in prefixes and unloaded is not None
    lost_name = (
        "lost under load (points)" if unloaded == "" else "lost under load, against the model alone (points)"
    )
    header = ["metric (%)"] + [name for name, _ in columns] + ([lost_name] if lost else [])
    lines += ["## Accuracy", "", _row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for label, key in rows:
        cells = [label] + [_pct(summary.get(prefix + key)) for _, prefix in columns]
        if lost:
            a, b = finite_number(summary.get(f"{unloaded}{key}")), finite_number(summary.get(f"loaded_{key}"))
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
        cells += [_fmt(nested_get(stats, key)) for key in ("p50", "p95", "p99", "max")]
        if counts:
            cells += [_count(nested_get(stats, "n")), _count(nested_get(stats, "missing"))]
        lines.append(_row(cells))
    lines.append("")

    # frames, throughput, node
    frames = summary.get("frames")
    sent, dropped = finite_number(nested_get(frames, "sent")), finite_number(nested_get(frames, "dropped"))
    dropped_pct = f" ({100 * dropped / sent:.1f} %)" if sent and dropped is not None else ""
    lines += [
        "## Frames and resources",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| frames sent | {_count(nested_get(frames, 'sent'))} |",
        f"| frames processed | {_count(nested_get(frames, 'processed'))} |",
        f"| frames dropped | {_count(nested_get(frames, 'dropped'))}{dropped_pct} |",
        f"| throughput (frames/s) | {_fmt(summary.get('throughput_fps'))} |",
        f"| node CPU time (s) | {_fmt(nested_get(summary.get('node'), 'cpu_s'))} |",
        f"| node peak memory (MB) | {_fmt(nested_get(summary.get('node'), 'peak_rss_mb'), 0)} |",
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
    return any(finite_number(summary.get(prefix + key)) is not None for prefix in ("", "loaded_", "direct_"))


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _pct(value: Any) -> str:
    number = finite_number(value)
    return "n/a" if number is None else f"{100 * number:.1f}"


def _fmt(value: Any, digits: int = 1) -> str:
    number = finite_number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def _count(value: Any) -> str:
    number = finite_number(value)
    return "n/a" if number is None else str(round(number))


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
