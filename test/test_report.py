"""mcn_ros.bag.report: real PNG and MP4 files, the Markdown summary, baseline comparison, atomic reports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from mcn_ros.bag.report import (
    REPORT_FILES,
    _Sampler,
    compare_to_baseline,
    frame_strip,
    latency_stats,
    markdown_summary,
    not_compared,
    plot_latency,
    plot_per_class,
    write_report,
    write_video,
)
from mcn_ros.model.labels import NUM_KEYPOINTS
from mcn_ros.model.results import Detections, Poses, Results
from mcn_ros.visualize import color_palette, draw_results

CLASSES = ("person", "car", "traffic light", "stop sign", "sports ball")
TOPICS = ("/mcn/detections", "/mcn/poses", "/mcn/segmentation")


def _frame(index: int, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """An annotated RGB frame: a moving car box with its mask, a person with a skeleton."""
    h, w = size
    image = np.full((h, w, 3), 70 + 3 * (index % 20), np.uint8)
    x = 5 + (3 * index) % max(1, w - 50)
    seg = np.zeros((h, w), np.uint8)
    seg[h // 2 : h // 2 + 20, x : x + 40] = 2
    boxes = np.array([[x, h // 2, x + 40, h // 2 + 20], [w - 40, 5, w - 10, h - 10]], np.float32)
    keypoints = np.zeros((1, NUM_KEYPOINTS, 3), np.float32)
    keypoints[0, :, 0] = np.linspace(w - 38, w - 12, NUM_KEYPOINTS)
    keypoints[0, :, 1] = np.linspace(8, h - 12, NUM_KEYPOINTS)
    keypoints[0, :, 2] = 0.9
    results = Results(
        image_size=(h, w),
        detections=Detections(boxes, np.array([0.9, 0.7], np.float32), np.array([1, 0], np.int64)),
        poses=Poses(boxes[1:], np.array([0.7], np.float32), keypoints),
        segmentation=seg,
    )
    return draw_results(image, results, CLASSES, color_palette(len(CLASSES)))


def _latencies(n: int) -> tuple[dict[str, list[float | None]], list[float]]:
    rng = np.random.default_rng(3)
    latencies: dict[str, list[float | None]] = {
        TOPICS[0]: [float(20 + rng.gamma(2, 3)) if i % 9 else None for i in range(n)],
        TOPICS[1]: [float(25 + rng.gamma(2, 3)) for i in range(n)],
        TOPICS[2]: [float(35 + rng.gamma(3, 4)) for i in range(n)],
    }
    return latencies, [50.0 + i / 10 for i in range(n)]


def _summary() -> dict[str, Any]:
    return {
        "bbox_AP": 0.412,
        "kp_AP": 0.201,
        "mIoU": 0.637,
        "direct_bbox_AP": 0.413,
        "direct_kp_AP": 0.201,
        "direct_mIoU": 0.637,
        "loaded_bbox_AP": 0.355,
        "loaded_mIoU": 0.581,
        "latency_ms": {"p50": 29.0, "p95": 45.6, "p99": 54.1, "max": 63.5},
        "latency_by_topic_ms": {
            TOPICS[0]: {"p50": 24.7, "p95": 33.3, "p99": 35.8, "max": 45.5, "n": 116, "missing": 4},
            TOPICS[2]: {"p50": 40.9, "p95": 53.2, "p99": 57.1, "max": 63.5},
        },
        "frames": {"sent": 120, "processed": 116, "dropped": 4},
        "throughput_fps": 9.7,
        "node": {"cpu_s": 35.2, "peak_rss_mb": 812.4},
        "per_class_AP": {"person": 0.45, "car": 0.62, "traffic light": 0.0},
        "per_class_IoU": {"background": 0.97, "person": 0.61, "car": 0.7},
        "command": ["python", "-m", "mcn_ros.bag", "replay", "--pace", "lockstep"],
    }


def _png(path: Path) -> np.ndarray:
    assert path.is_file()
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


def _read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones too) with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def test_latency_stats() -> None:
    stats = latency_stats([10.0, None, 20.0, 30.0, float("nan")])
    assert stats["p50"] == 20.0 and stats["max"] == 30.0 and stats["n"] == 3 and stats["missing"] == 2
    assert stats["p95"] == pytest.approx(29.0) and stats["p99"] == pytest.approx(29.8)
    assert latency_stats([None]) == {
        "p50": None, "p95": None, "p99": None, "max": None, "mean": None, "n": 0, "missing": 1
    }  # fmt: skip


def test_plot_latency(tmp_path: Path) -> None:
    latencies, times = _latencies(80)
    latencies["/mcn/debug_image"] = [None] * 80  # never arrived at all
    image = _png(plot_latency(latencies, times, tmp_path / "latency.png"))
    assert image.shape[0] >= 600 and image.shape[1] >= 900
    assert image.std() > 10  # something is drawn
    assert [p.name for p in tmp_path.iterdir()] == ["latency.png"]  # no temporary file left
    empty = _png(plot_latency({}, [], tmp_path / "empty.png"))
    assert empty.shape == image.shape
    with pytest.raises(ValueError, match="/mcn/poses: 79 values for 80 send times"):
        plot_latency({"/mcn/poses": latencies[TOPICS[1]][:-1]}, times, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_per_class_either_mapping_empty(tmp_path: Path) -> None:
    summary = _summary()
    both = _png(plot_per_class(summary["per_class_AP"], summary["per_class_IoU"], tmp_path / "both.png"))
    ap_only = _png(plot_per_class(summary["per_class_AP"], {}, tmp_path / "ap.png"))
    iou_only = _png(plot_per_class({}, summary["per_class_IoU"], tmp_path / "iou.png"))
    none = _png(plot_per_class({}, {}, tmp_path / "none.png"))
    assert both.shape[1] > ap_only.shape[1] == iou_only.shape[1] and both.shape[0] >= 200
    assert none.shape[0] >= 200
    many = {f"class {i}": i / 30 for i in range(30)}  # the figure grows with the classes
    assert _png(plot_per_class(many, {}, tmp_path / "many.png")).shape[0] > 2 * ap_only.shape[0]


def test_frame_strip_letterboxes_into_equal_tiles(tmp_path: Path) -> None:
    images = [_frame(i) for i in range(4)] + [_frame(4, size=(120, 60))]  # a tall one
    strip = _png(frame_strip(images, tmp_path / "strip.png", columns=4, titles=[f"f{i}" for i in range(5)]))
    # tiles of the largest image (96x128) enlarged twice to 192x256, a 24 px title, 6 px gaps; 2 rows
    assert strip.shape == (6 + 2 * (24 + 192 + 6), 6 + 4 * (256 + 6), 3)
    tall = strip[6 + 222 + 24 : 6 + 222 + 24 + 192, 6 : 6 + 256]
    assert (tall[:, :40] == 0).all() and (tall[:, -40:] == 0).all()  # letterboxed: black bars left, right
    assert tall[:, 100:150].mean() > 40
    untitled = _png(frame_strip(images[:2], tmp_path / "two.png"))
    assert untitled.shape == (6 + 192 + 6, 6 + 2 * (256 + 6), 3)
    with pytest.raises(ValueError, match="2 titles for 5 images"):
        frame_strip(images, tmp_path / "bad.png", titles=["a", "b"])
    with pytest.raises(ValueError, match="no images"):
        frame_strip([], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_write_video_reads_back(tmp_path: Path) -> None:
    frames = [_frame(i, size=(97, 130)) for i in range(6)] + [_frame(6, size=(200, 100))]
    path = write_video(iter(frames), tmp_path / "v.mp4", fps=10)
    decoded = _read_video(path)
    assert len(decoded) == 7
    assert decoded[0].shape == (98, 130, 3)  # odd height rounded up to even for the codec
    first = cv2.cvtColor(decoded[0][:97], cv2.COLOR_BGR2RGB).astype(np.float32)
    assert np.abs(first - frames[0]).mean() < 12  # lossy, but the same picture
    assert (decoded[6][:, :20] < 30).all()  # the tall frame is letterboxed: dark bars at the sides
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_write_video_errors_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "v.mp4", fps=10)
    with pytest.raises(ValueError, match="fps"):
        write_video([_frame(0)], tmp_path / "v.mp4", fps=0)

    def broken() -> Iterator[np.ndarray]:
        yield _frame(0)
        yield _frame(1)
        yield np.zeros((10, 10, 3), np.float32)

    with pytest.raises(ValueError, match="frame 2: expected uint8"):
        write_video(broken(), tmp_path / "v.mp4", fps=10)
    assert list(tmp_path.iterdir()) == []


def test_markdown_summary_has_the_figures() -> None:
    text = markdown_summary({**_summary(), "files": {"latency": "latency.png", "video": "replay.mp4"}})
    assert "| metric (%) | lockstep | under load | model alone | lost under load (points) |" in text
    assert "| bbox AP | 41.2 | 35.5 | 41.3 | 5.7 |" in text
    assert "| keypoint AP | 20.1 | n/a | 20.1 | n/a |" in text
    assert "| mIoU | 63.7 | 58.1 | 63.7 | 5.6 |" in text
    assert "| `/mcn/detections` | 24.7 | 33.3 | 35.8 | 45.5 | 116 | 4 |" in text
    assert "| `/mcn/segmentation` | 40.9 | 53.2 | 57.1 | 63.5 | n/a | n/a |" in text
    assert "| all outputs | 29.0 | 45.6 | 54.1 | 63.5 |" in text
    assert "| frames dropped | 4 (3.3 %) |" in text and "| throughput (frames/s) | 9.7 |" in text
    assert "| node CPU time (s) | 35.2 |" in text and "| node peak memory (MB) | 812 |" in text
    assert "| traffic light | 0.0 | n/a |" in text and "| background | n/a | 97.0 |" in text
    assert "python -m mcn_ros.bag replay --pace lockstep" in text
    assert "![latency](latency.png)" in text and "[replay.mp4](replay.mp4)" in text
    # A run without a lockstep replay: its headline is the rate replay's, dropped frames scored as empty.
    # The loss under load is then measured against the model alone: against the rate headline, which already
    # counts the dropped frames as empty, most of it would not show (a replay that dropped 17 of 20 frames
    # showed 8.6 points where 42.3 were lost).
    rate_only = markdown_summary({**_summary(), "accuracy_from": "rate"})
    assert (
        "| metric (%) | rate, all outputs | under load | model alone "
        "| lost under load, against the model alone (points) |"
    ) in rate_only
    assert "| bbox AP | 41.2 | 35.5 | 41.3 | 5.8 |" in rate_only
    alone = {k: v for k, v in _summary().items() if not k.startswith("direct_")}
    no_reference = markdown_summary({**alone, "accuracy_from": "rate"})
    assert "| metric (%) | rate, all outputs | under load |" in no_reference and "lost" not in no_reference


def test_markdown_summary_missing_and_odd_values_never_crash() -> None:
    empty = markdown_summary({})
    assert "| bbox AP | n/a |" in empty and "| all outputs | n/a | n/a | n/a | n/a |" in empty
    assert "under load" not in empty and "| frames sent | n/a |" in empty and "## Per class" not in empty
    odd = markdown_summary(
        {
            "bbox_AP": "high",
            "mIoU": float("nan"),
            "latency_ms": [1, 2],
            "latency_by_topic_ms": {"a|b": None},
            "frames": {"sent": 0, "dropped": 0},
            "node": "?",
            "per_class_AP": {"x": None},
            "files": "nope",
        }
    )
    assert "| bbox AP | n/a |" in odd and "| mIoU | n/a |" in odd and "| frames dropped | 0 |" in odd
    assert "| `a|b` | n/a |" in odd and "| x | n/a | n/a |" in odd


def test_compare_to_baseline() -> None:
    base = _summary()
    assert compare_to_baseline(base, base) == []
    assert compare_to_baseline({}, base) == [] and compare_to_baseline(base, {}) == []
    worse = {
        **base,
        "bbox_AP": base["bbox_AP"] - 0.02,  # regressed
        "mIoU": base["mIoU"] - 0.005,  # within tolerance
        "loaded_mIoU": None,  # skipped
        "latency_ms": {**base["latency_ms"], "p95": base["latency_ms"]["p95"] * 1.3},  # regressed
        "latency_by_topic_ms": {
            TOPICS[0]: {"p95": 33.3 * 1.1},  # within tolerance
            TOPICS[2]: {"p95": 53.2 * 1.5},  # regressed
        },
    }
    lines = compare_to_baseline(worse, base)
    assert len(lines) == 3, lines
    assert lines[0].startswith("bbox_AP: 41.2 -> 39.2 (-2.0 points")
    assert lines[1].startswith("latency p95: 45.6 ms -> 59.3 ms (+30 %")
    assert lines[2].startswith(f"latency p95 {TOPICS[2]}: 53.2 ms -> 79.8 ms (+50 %")
    assert compare_to_baseline(worse, base, ap_tolerance=0.05, latency_tolerance=0.6) == []
    better = {**base, "bbox_AP": 0.9, "latency_ms": {"p95": 1.0}}
    assert compare_to_baseline(better, base) == []
    # A lockstep replay's latency is not compared with a rate replay's, nor rates of another factor.
    rate = {**base, "timing_from": "rate", "config": {"paces": {"rate": {"rate_factor": 1.0}}}}
    lockstep = {**worse, "bbox_AP": base["bbox_AP"], "timing_from": "lockstep",
                "config": {"paces": {"lockstep": {"rate_factor": None}}}}  # fmt: skip
    faster = {**lockstep, "timing_from": "rate", "config": {"paces": {"rate": {"rate_factor": 4.0}}}}
    assert compare_to_baseline(lockstep, rate) == [] and compare_to_baseline(faster, rate) == []
    same = {**faster, "config": {"paces": {"rate": {"rate_factor": 1.0}}}}
    assert len(compare_to_baseline(same, rate)) == 2  # overall and one topic, as above
    # Accuracy alike: a rate replay's headline (dropped frames scored as empty) is not a lockstep one's, and
    # figures under load are compared only at one rate factor; the model alone always.
    worse_everywhere = {
        **base,
        **{f"{p}bbox_AP": base[f"{p}bbox_AP"] - 0.1 for p in ("", "loaded_", "direct_")},
    }
    paced = {"lockstep": {"rate_factor": None}, "rate": {"rate_factor": 1.0}}
    stepped = {**worse_everywhere, "accuracy_from": "lockstep", "config": {"paces": paced}}
    from_rate = {**base, "accuracy_from": "rate", "config": {"paces": {"rate": {"rate_factor": 1.0}}}}
    regressed = [line.split(":")[0] for line in compare_to_baseline(stepped, from_rate)]
    assert regressed == ["loaded_bbox_AP", "direct_bbox_AP"]
    at_4x = {**stepped, "config": {"paces": {**paced, "rate": {"rate_factor": 4.0}}}}
    assert [line.split(":")[0] for line in compare_to_baseline(at_4x, from_rate)] == ["direct_bbox_AP"]
    from_lockstep = {**from_rate, "accuracy_from": "lockstep"}
    assert len(compare_to_baseline(stepped, from_lockstep)) == 3


def test_notes_of_what_is_not_compared() -> None:
    """Each measure measured otherwise than the baseline's gets a note; a lockstep-only run has no figures
    under load, which is not a rate replay of another factor (it said "from a rate replay (rate factor
    None)" of a run that had none)."""
    paced = {"lockstep": {"rate_factor": None}, "rate": {"rate_factor": 1.0}}
    both = {**_summary(), "accuracy_from": "lockstep", "timing_from": "rate", "config": {"paces": paced}}
    lockstep_only = {
        **both, "timing_from": "lockstep", "config": {"paces": {"lockstep": {"rate_factor": None}}},
        **{f"loaded_{m}": None for m in ("bbox_AP", "kp_AP", "mIoU")},
    }  # fmt: skip
    assert not_compared(both, both) == []
    notes = not_compared(lockstep_only, both)
    assert len(notes) == 1 and notes[0].startswith(
        "latency not compared with the baseline: its latency is from"
    ), notes
    faster = {**both, "config": {"paces": {**paced, "rate": {"rate_factor": 4.0}}}}
    notes = not_compared(faster, both)
    assert [n.split(" not compared")[0] for n in notes] == ["latency", "accuracy under load"], notes


def test_sampler_picks_evenly_spaced_frames() -> None:
    for total in (None, 100):
        sampler = _Sampler(8, total)
        assert sum(1 for _ in sampler.tap(np.full((1,), i) for i in range(100))) == 100
        picked = [i for i, _ in sampler.picked()]
        assert len(picked) == 8 and picked[0] == 0 and picked == sorted(picked) and picked[-1] >= 80
        assert len(sampler.kept) <= 16
        assert all(int(frame[0]) == i for i, frame in sampler.picked())
    short = _Sampler(8, None)
    list(short.tap(np.zeros(1) for _ in range(3)))
    assert [i for i, _ in short.picked()] == [0, 1, 2]


def test_write_report(tmp_path: Path) -> None:
    latencies, times = _latencies(24)
    summary = _summary()
    del summary["latency_by_topic_ms"]  # filled from the latencies
    out = tmp_path / "report"
    files = write_report(out, summary, latencies, times, (_frame(i) for i in range(24)), fps=10)
    assert set(files) == set(REPORT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES.values())  # no temporary folder
    report = json.loads((out / "report.json").read_text())
    assert report["files"] == REPORT_FILES and report["bbox_AP"] == 0.412
    assert report["latency_by_topic_ms"][TOPICS[0]]["missing"] == 3
    markdown = (out / "report.md").read_text()
    assert "![frames](frames.png)" in markdown and "| bbox AP | 41.2 |" in markdown
    assert len(_read_video(out / "replay.mp4")) == 24
    strip = _png(out / "frames.png")
    assert strip.shape == (6 + 2 * (24 + 192 + 6), 6 + 4 * (256 + 6), 3)  # 8 frames, 2 rows of 4
    _png(out / "latency.png")
    _png(out / "per_class.png")
    assert "latency_by_topic_ms" not in summary and "files" not in summary  # the caller's dict untouched

    # A later run without frames: no video or strip, and the old ones go (not left to mismatch the rest).
    files = write_report(out, {"bbox_AP": 0.5}, {}, [], [], fps=10)
    assert set(files) == {"latency", "per_class", "markdown", "json"}
    assert sorted(p.name for p in out.iterdir()) == [
        "latency.png",
        "per_class.png",
        "report.json",
        "report.md",
    ]
    assert "frames.png" not in (out / "report.md").read_text()


def test_failed_report_leaves_the_old_one_untouched(tmp_path: Path) -> None:
    latencies, times = _latencies(10)
    out = tmp_path / "report"
    (out / "other").mkdir(parents=True)
    (out / "other" / "outputs.mcap").write_bytes(b"not ours")  # a replay's files share the folder
    write_report(out, _summary(), latencies, times, [_frame(i) for i in range(10)], fps=10)
    before = _snapshot(out)

    def broken() -> Iterator[np.ndarray]:  # the video is half written when the input turns bad
        for i in range(6):
            yield _frame(i)
        yield np.zeros((4, 4), np.float64)

    with pytest.raises(ValueError, match="frame 6"):
        write_report(out, {**_summary(), "bbox_AP": 0.1}, latencies, times, broken(), fps=10)
    assert _snapshot(out) == before
    with pytest.raises(TypeError, match="not JSON serializable"):  # the very last step fails
        write_report(out, {"bbox_AP": 0.2, "config": object()}, {}, [], [_frame(0)], fps=10)
    assert _snapshot(out) == before
    assert (out / "other" / "outputs.mcap").read_bytes() == b"not ours"

    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="send times"):
        write_report(fresh, _summary(), {"/t": [1.0]}, [], [], fps=10)
    assert not fresh.exists()  # the folder this call made goes too


def test_only_confident_boxes_and_persons_are_drawn() -> None:
    import numpy as np

    from mcn_ros.bag.video import confident
    from mcn_ros.model.results import Detections, Poses, Results

    boxes = np.array([[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]], np.float32)
    scores = np.array([0.9, 0.05, 0.3], np.float32)
    results = Results(
        image_size=(8, 8),
        detections=Detections(boxes, scores, np.array([0, 1, 2])),
        poses=Poses(boxes, scores, np.zeros((3, 17, 3), np.float32)),
        segmentation=np.zeros((8, 8), np.uint8),
    )
    shown = confident(results, 0.3)
    assert shown.detections is not None and shown.poses is not None
    assert shown.detections.class_ids.tolist() == [0, 2]
    assert shown.poses.scores.tolist() == pytest.approx([0.9, 0.3])
    assert shown.poses.keypoints.shape == (2, 17, 3) and shown.segmentation is results.segmentation
    assert confident(Results(image_size=(8, 8)), 0.3).detections is None


def test_a_baseline_that_is_not_a_report_is_refused(tmp_path: Path) -> None:
    """Compared with a JSON file that has none of a report's figures, every check would pass silently."""
    from mcn_ros.bag import BagError
    from mcn_ros.bag.evaluate import read_baseline

    path = tmp_path / "baseline.json"
    for text in ("{}", '{"frames": 3}'):
        path.write_text(text)
        with pytest.raises(BagError, match="not an evaluation report"):
            read_baseline(path)
    path.write_text('{"direct_mIoU": 0.5}')
    assert read_baseline(path) == {"direct_mIoU": 0.5}
