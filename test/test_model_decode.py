"""Decoding of hand-built head outputs with exactly known answers (original-image coordinates)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch

from mcn_ros.model import decode, peaks
from mcn_ros.model.config import DetectionConfig, ModelConfig, PoseConfig, SegmentationConfig
from mcn_ros.model.decode import DecodeOptions, channel_argmax, decode_batch, decode_to_tensors
from mcn_ros.model.peaks import find_peaks, local_peaks, topk_peaks
from mcn_ros.model.preprocess import letterbox_for, nearest_cells

INPUT = (128, 128)  # output maps 32 x 32
H = W = 32
BACKGROUND = -10.0


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def config(segmentation_stride: int = 4) -> ModelConfig:
    return ModelConfig(
        name="t",
        backbone="resnet18",
        input_size=INPUT,
        detection=DetectionConfig(),
        pose=PoseConfig(),
        segmentation=SegmentationConfig(output_stride=segmentation_stride),
    )


def blank_outputs(batch: int = 1) -> dict[str, torch.Tensor]:
    return {
        "heatmap": torch.full((batch, 80, H, W), BACKGROUND),
        "size": torch.zeros(batch, 2, H, W),
        "offset": torch.zeros(batch, 2, H, W),
        "kp_offsets": torch.zeros(batch, 34, H, W),
        "kp_heatmap": torch.full((batch, 17, H, W), BACKGROUND),
        "kp_subpixel": torch.zeros(batch, 2, H, W),
        "segmentation": torch.zeros(batch, 81, H, W),
    }


def put_object(
    out: dict[str, torch.Tensor],
    b: int,
    cls: int,
    x: int,
    y: int,
    score: float,
    off: tuple[float, float],
    size: tuple[float, float],
) -> None:
    out["heatmap"][b, cls, y, x] = logit(score)
    out["offset"][b, :, y, x] = torch.tensor(off)
    out["size"][b, :, y, x] = torch.tensor(size)


def original(xy_out: tuple[float, float], hw: tuple[int, int]) -> tuple[float, float]:
    """Output-map point -> original pixels, computed independently of the decoder."""
    h, w = hw
    s = min(INPUT[0] / h, INPUT[1] / w)
    new_h, new_w = round(h * s), round(w * s)
    pad_x, pad_y = (INPUT[1] - new_w) // 2, (INPUT[0] - new_h) // 2
    return (xy_out[0] * 4 - pad_x) / (new_w / w), (xy_out[1] * 4 - pad_y) / (new_h / h)


def test_letterbox_of_the_test_image() -> None:
    box = letterbox_for((100, 200), INPUT)
    assert (box.scale_x, box.scale_y, box.pad_x, box.pad_y) == (0.64, 0.64, 0.0, 32.0)


def test_detection_box_in_original_coordinates() -> None:
    out = blank_outputs(2)
    sizes = [(100, 200), (150, 60)]  # landscape and portrait, both rescaled and padded
    for b in range(2):
        put_object(out, b, cls=2, x=10, y=12, score=0.9, off=(0.25, 0.5), size=(8.0, 4.0))
        out["heatmap"][b, 2, 12, 11] = logit(0.5)  # neighbour of the peak: suppressed by the 3x3 max-pool
        put_object(out, b, cls=0, x=20, y=20, score=0.2, off=(0.0, 0.0), size=(2.0, 2.0))  # below threshold
    boxes = [letterbox_for(s, INPUT) for s in sizes]
    results = decode_batch(out, boxes, sizes, config(), ["detection"], DecodeOptions())
    for result, hw in zip(results, sizes, strict=True):
        assert result.poses is None and result.segmentation is None and result.image_size == hw
        det = result.detections
        assert det is not None and len(det) == 1
        # centre (10.25, 12.5), size (8, 4) -> box (6.25, 10.5, 14.25, 14.5) in output-map pixels
        x1, y1 = original((6.25, 10.5), hw)
        x2, y2 = original((14.25, 14.5), hw)
        expected = np.clip([x1, y1, x2, y2], 0, [hw[1], hw[0], hw[1], hw[0]])  # clipped to the image
        np.testing.assert_allclose(det.boxes[0], expected, rtol=1e-5, atol=1e-4)
        assert det.class_ids.tolist() == [2] and det.class_ids.dtype == np.int64
        np.testing.assert_allclose(det.scores, [0.9], rtol=1e-5)
    first = results[0].detections
    assert first is not None
    np.testing.assert_allclose(first.boxes[0], np.array([39.0625, 15.625, 89.0625, 40.625]), rtol=1e-5)

    low = decode_batch(out, boxes, sizes, config(), ["detection"], DecodeOptions(score_threshold=0.1))
    assert low[0].detections is not None
    assert low[0].detections.class_ids.tolist() == [2, 0]
    capped = decode_batch(out, boxes, sizes, config(), ["detection"], DecodeOptions(0.1, max_detections=1))
    assert capped[0].detections is not None and len(capped[0].detections) == 1


def test_boxes_are_clipped_to_the_image() -> None:
    out = blank_outputs()
    put_object(out, 0, cls=5, x=1, y=9, score=0.8, off=(0.5, 0.5), size=(6.0, 2.0))
    det = decode_batch(
        out, [letterbox_for((100, 200), INPUT)], [(100, 200)], config(), ["detection"], DecodeOptions()
    )
    assert det[0].detections is not None
    x1, _, x2, _ = det[0].detections.boxes[0]
    assert x1 == 0.0 and x2 == pytest.approx(original((4.5, 0), (100, 200))[0])


def _pose_outputs() -> dict[str, torch.Tensor]:
    out = blank_outputs()
    # Person centre cell (16, 16), centre (16.5, 16.5), box (12.5, 10.5, 20.5, 22.5): longer side 12,
    # snap radius 0.3 * 12 = 3.6.
    put_object(out, 0, cls=0, x=16, y=16, score=0.8, off=(0.5, 0.5), size=(8.0, 12.0))
    regressed = {0: (-1.0, -4.0), 1: (2.0, 2.0), 2: (3.0, 0.0), 3: (0.0, 0.0)}  # from the centre cell
    for j, (dx, dy) in regressed.items():
        out["kp_offsets"][0, 2 * j, 16, 16] = dx
        out["kp_offsets"][0, 2 * j + 1, 16, 16] = dy
    # joint 0: regressed (15, 12); peak (15, 13) + subpixel (0.5, 0.25) = (15.5, 13.25), 1.35 away: snapped.
    out["kp_heatmap"][0, 0, 13, 15] = logit(0.7)
    out["kp_subpixel"][0, :, 13, 15] = torch.tensor([0.5, 0.25])
    # joint 1: regressed (18, 18); strong peak (22.x, 18) is outside the box: not snapped.
    out["kp_heatmap"][0, 1, 18, 22] = logit(0.9)
    out["kp_heatmap"][0, 1, 18, 18] = logit(0.05)  # the heatmap at the regressed cell gives the score
    # joint 2: regressed (19, 16); peak (19, 20) inside the box but 4 > 3.6 away: not snapped.
    out["kp_heatmap"][0, 2, 20, 19] = logit(0.95)
    # joint 3: regressed (16, 16); nearby peak scores 0.08 < kp_snap_score 0.1: not snapped.
    out["kp_heatmap"][0, 3, 15, 16] = logit(0.08)
    return out


@pytest.mark.parametrize(
    ("dense_max", "listed_max"),
    [(0, 0), (0, 1 << 30), (1 << 30, 0)],
    ids=["peak_lists", "listed_peaks", "every_cell"],
)
def test_pose_keypoint_snapping(dense_max: int, listed_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "DENSE_SNAP_MAX_VALUES", dense_max)
    monkeypatch.setattr(decode, "LISTED_SNAP_MAX_VALUES", listed_max)
    hw = (100, 200)
    out = _pose_outputs()
    results = decode_batch(out, [letterbox_for(hw, INPUT)], [hw], config(), ["pose"], DecodeOptions())
    result = results[0]
    assert result.detections is None and result.segmentation is None
    poses = result.poses
    assert poses is not None and len(poses) == 1 and poses.keypoints.shape == (1, 17, 3)
    np.testing.assert_allclose(poses.scores, [0.8], rtol=1e-5)
    np.testing.assert_allclose(
        poses.boxes[0], [*original((12.5, 10.5), hw), *original((20.5, 22.5), hw)], rtol=1e-5
    )
    kps = poses.keypoints[0]
    background = 1 / (1 + math.exp(-BACKGROUND))
    expected = {
        0: (*original((15.5, 13.25), hw), 0.7),
        1: (*original((18.0, 18.0), hw), 0.05),
        2: (*original((19.0, 16.0), hw), background),
        3: (*original((16.0, 16.0), hw), background),
        4: (*original((16.0, 16.0), hw), background),
    }
    for j, (x, y, score) in expected.items():
        np.testing.assert_allclose(kps[j], [x, y, score], rtol=1e-4, atol=1e-6, err_msg=f"joint {j}")
    # Widening the snap radius lets joint 2 snap; lowering the snap score lets joint 3 snap.
    wide = decode_batch(
        out, [letterbox_for(hw, INPUT)], [hw], config(), ["pose"], DecodeOptions(kp_snap_distance=0.4)
    )
    assert wide[0].poses is not None
    np.testing.assert_allclose(wide[0].poses.keypoints[0, 2], [*original((19.0, 20.0), hw), 0.95], rtol=1e-4)
    low = decode_batch(
        out, [letterbox_for(hw, INPUT)], [hw], config(), ["pose"], DecodeOptions(kp_snap_score=0.05)
    )
    assert low[0].poses is not None
    np.testing.assert_allclose(low[0].poses.keypoints[0, 3], [*original((16.0, 15.0), hw), 0.08], rtol=1e-4)


def test_snap_score_zero_snaps_to_peaks_only() -> None:
    """kp_snap_score 0 admits every peak, not the cells around one that the local-maximum test zeroed
    (they scored 0 and keypoints snapped to them: next to where they were regressed, with score 0)."""
    hw = (100, 200)
    out = _pose_outputs()
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    out["kp_heatmap"][0] = (
        -((xs - 2) ** 2 + (ys - 2) ** 2) / 200
    )  # one smooth peak per joint, outside the box
    options = DecodeOptions(kp_snap_score=0.0, keypoint_candidates=H * W)  # every cell a candidate slot
    poses = decode_batch(out, [letterbox_for(hw, INPUT)], [hw], config(), ["pose"], options)[0].poses
    assert poses is not None and len(poses) == 1
    x, y, score = poses.keypoints[0, 4]  # regressed at the centre cell (16, 16)
    np.testing.assert_allclose((x, y), original((16.0, 16.0), hw), rtol=1e-5)
    assert (
        score == pytest.approx(float(torch.sigmoid(out["kp_heatmap"][0, 4, 16, 16])), rel=1e-5) and score > 0
    )


@pytest.mark.parametrize("search", ["candidates", "topk"])
def test_threshold_zero_reports_every_peak_and_nothing_else(
    search: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """score_threshold 0 gives every local maximum, not the cells around them that the local-maximum test
    cleared (they came out as boxes scoring 0, up to max_detections), on the CPU's search and the GPU's."""
    if search == "topk":
        monkeypatch.setattr(peaks, "TOPK_SEARCH_DEVICES", frozenset({"cpu"}))
    out = blank_outputs()
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    classes = out["heatmap"].shape[1]
    centres = torch.arange(classes, dtype=torch.float32) % W  # one smooth peak per class map
    out["heatmap"][0] = -((xs - centres.view(-1, 1, 1)) ** 2 + (ys - 5) ** 2) / 50 - 2
    hw = (100, 200)
    options = DecodeOptions(score_threshold=0.0, max_detections=100, top_k=100)
    found = decode_batch(out, [letterbox_for(hw, INPUT)], [hw], config(), ["detection"], options)[
        0
    ].detections
    assert found is not None and len(found) == classes, len(found)
    assert np.all(found.scores > 0) and sorted(found.class_ids.tolist()) == list(range(classes))


def test_decode_options_refuse_values_that_mean_nothing() -> None:
    for bad, message in (
        ({"max_detections": -1}, "max_detections must be at least 0"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"score_threshold": 1.5}, "score_threshold must be in [0, 1]"),
        ({"kp_snap_score": -0.1}, "kp_snap_score must be at least 0"),
        ({"pool_kernel": 2}, "pool_kernel must be odd"),
        ({"kp_snap_distance": -1.0}, "kp_snap_distance must be at least 0"),
        ({"max_detections": 2.5}, "max_detections must be a whole number, got 2.5"),
        ({"max_detections": "5"}, "max_detections must be a whole number, got '5'"),
        ({"top_k": True}, "top_k must be a whole number, got True"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            DecodeOptions(**bad)  # type: ignore[arg-type]
    assert (
        DecodeOptions(max_detections=0, score_threshold=0.0, kp_snap_score=2.0).max_detections == 0
    )  # no snap


def _record_results(monkeypatch: pytest.MonkeyPatch, name: str) -> list[object]:
    """What each call of ``<name>`` (of the decode or the peaks module) returns, in call order (the function
    still runs)."""
    returned: list[object] = []
    module = decode if hasattr(decode, name) else peaks
    function = getattr(module, name)

    def recording(*args: object) -> object:
        returned.append(result := function(*args))
        return result

    monkeypatch.setattr(module, name, recording)
    return returned


def _exact_peaks(b: int, j: int, count: int) -> torch.Tensor:
    """Keypoint logits with exactly ``count`` peaks above the snap score per joint, on a low background."""
    logits = torch.full((b, j, H, W), -10.0)
    cells = torch.stack([torch.randperm((H // 4) * (W // 4))[:count] for _ in range(b * j)])  # 4-cell spacing
    ys, xs = 4 * torch.div(cells, W // 4, rounding_mode="floor") + 1, 4 * (cells % (W // 4)) + 1
    logits.view(b * j, H, W)[torch.arange(b * j)[:, None], ys, xs] = torch.rand(b * j, count) * 4
    return logits


@pytest.mark.parametrize(
    ("maps", "candidates"),
    [("dense", 100), ("dense", 3), ("sparse", 100), ("exactly_candidates", 3)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_keypoint_snapping_searches_agree(
    maps: str, candidates: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapping against every cell of a small map, and against the listed peaks, gives what snapping against
    each joint's peak list gives (many persons, many peaks, sub-pixel offsets, two images) on maps whose
    peak lists come from the pooled search (dense) and from the sparse one, and with exactly
    ``keypoint_candidates`` peaks per joint; with more peaks in a joint than that the search falls back to
    the lists, whose cut-off then matters. Also for bf16 heatmaps (scores in the heatmaps' dtype on all
    paths)."""
    torch.manual_seed(5)
    b, k, j = 2, 6, 17
    if maps == "exactly_candidates":
        kp_logits = _exact_peaks(b, j, candidates)
    else:  # passing cells: ~8 % per joint or ~0.6 %
        kp_logits = torch.randn(b, j, H, W) * 2 - (5 if maps == "dense" else 7.5)
    kp_logits = kp_logits.to(dtype).contiguous(memory_format=torch.channels_last)
    kp_subpixel = torch.rand(b, 2, H, W)
    corner = torch.rand(b, k, 2) * torch.tensor([W / 2, H / 2])
    boxes = torch.cat((corner, corner + torch.tensor([W / 2, H / 2])), dim=-1)
    regressed = corner.unsqueeze(2) + torch.rand(b, k, j, 2) * torch.tensor([W / 2, H / 2])
    options = DecodeOptions(keypoint_candidates=candidates)
    peaks_per_joint = (peaks.local_peaks(kp_logits.sigmoid(), 3) >= options.kp_snap_score).sum(dim=(2, 3))
    falls_back = bool((peaks_per_joint > candidates).any())
    assert falls_back == (maps == "dense" and candidates == 3), "each case is the map it is meant to be"
    cell_searches = _record_results(monkeypatch, "_nearest_peak_cells")
    candidate_searches = _record_results(monkeypatch, "_nearest_candidates")
    sparse_searches = _record_results(monkeypatch, "_sparse_candidates")
    results = {}
    # (DENSE_SNAP_MAX_VALUES, LISTED_SNAP_MAX_VALUES): per-joint lists; the listed peaks; every cell
    searches = ((0, 0), (0, 1 << 30), (1 << 30, 0))
    for search in searches:
        monkeypatch.setattr(decode, "DENSE_SNAP_MAX_VALUES", search[0])
        monkeypatch.setattr(decode, "LISTED_SNAP_MAX_VALUES", search[1])
        results[search] = decode.decode_keypoints(boxes, regressed, kp_logits, kp_subpixel, options)
    taken = [result is None for result in cell_searches]
    assert taken == [falls_back], "the cell search ran only where allowed, and fell back when needed"
    assert len(candidate_searches) == (0 if falls_back else 1), "the listed peaks measured where all fit"
    assert not sparse_searches, "keypoint maps are max-pooled whole, however few cells pass"
    lists_kp, lists_score = results[searches[0]]
    for other in searches[1:]:
        torch.testing.assert_close(results[other][0], lists_kp, rtol=0, atol=0)
        torch.testing.assert_close(results[other][1], lists_score, rtol=0, atol=0)
        assert results[other][1].dtype == lists_score.dtype == dtype
    snapped = (lists_kp != regressed).any(dim=-1)
    assert 0.05 < snapped.float().mean() < 1.0, "both snapped and unsnapped keypoints are compared"


def test_pose_threshold_and_detections_together() -> None:
    hw = (100, 200)
    out = _pose_outputs()
    options = DecodeOptions(score_threshold=0.3, pose_score_threshold=0.85)
    result = decode_batch(out, [letterbox_for(hw, INPUT)], [hw], config(), None, options)[0]
    assert result.poses is not None and len(result.poses) == 0
    assert result.detections is not None and result.detections.class_ids.tolist() == [0]
    assert result.segmentation is not None and result.segmentation.shape == hw


def test_pose_in_a_batch_with_and_without_persons(monkeypatch: pytest.MonkeyPatch) -> None:
    """An image without persons next to one with a person: the person's keypoints are snapped as when it is
    alone; a batch without any person gives empty poses (snapping skipped, but on a device of
    TOPK_SEARCH_DEVICES, where asking would wait for it)."""
    hw = (100, 200)
    single = _pose_outputs()
    pair = {name: torch.cat((value, blank_outputs()[name])) for name, value in single.items()}
    boxes = [letterbox_for(hw, INPUT)] * 2
    alone = decode_batch(single, boxes[:1], [hw], config(), ["pose"], DecodeOptions())[0].poses
    both = decode_batch(pair, boxes, [hw, hw], config(), ["pose"], DecodeOptions())
    assert alone is not None and both[0].poses is not None and both[1].poses is not None
    assert len(alone) == 1 and len(both[1].poses) == 0
    np.testing.assert_array_equal(both[0].poses.keypoints, alone.keypoints)
    assert alone.keypoints[0, 0, 2] == pytest.approx(0.7), "joint 0 was snapped to its peak"
    snapping = _record_results(monkeypatch, "decode_keypoints")
    decode_batch(pair, boxes, [hw, hw], config(), ["pose"], DecodeOptions())
    assert len(snapping) == 1, "a batch with a person snaps"
    nobody = {name: value[1:] for name, value in pair.items()}
    empty = decode_batch(nobody, boxes[:1], [hw], config(), ["pose"], DecodeOptions())[0].poses
    assert len(snapping) == 1, "a batch without persons does not"
    assert empty is not None and len(empty) == 0 and empty.keypoints.shape == (0, 17, 3)
    monkeypatch.setattr(peaks, "TOPK_SEARCH_DEVICES", frozenset({"cpu"}))  # asking would wait for a GPU
    empty = decode_batch(nobody, boxes[:1], [hw], config(), ["pose"], DecodeOptions())[0].poses
    assert len(snapping) == 2, "on a top-k search device snapping runs regardless"
    assert empty is not None and len(empty) == 0 and empty.keypoints.shape == (0, 17, 3)
    paired = decode_batch(pair, boxes, [hw, hw], config(), ["pose"], DecodeOptions())
    assert paired[0].poses is not None and paired[1].poses is not None and len(paired[1].poses) == 0
    np.testing.assert_array_equal(paired[0].poses.keypoints, alone.keypoints)


def _many_persons() -> dict[str, torch.Tensor]:
    """Outputs with many persons and objects of another class (about a fifth of their cells pass 0.3) on a
    low background, and noisy keypoint maps."""
    torch.manual_seed(5)
    out = blank_outputs()
    out["heatmap"][0, [0, 2]] = torch.randn(2, H, W) * 2 - 3
    out["size"] = torch.rand(1, 2, H, W) * 8
    out["kp_offsets"] = torch.randn(1, 34, H, W) * 3
    out["kp_heatmap"] = torch.randn(1, 17, H, W) * 2 - 4
    return out


@pytest.mark.parametrize("pooled_max", [0, 1 << 30], ids=["sparse", "pooled"])
def test_person_peaks_come_from_the_detection_search(
    pooled_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With detection asked too and a pose threshold at least the detection's, the persons are the
    detection's person-channel peaks (no second search of the person map): the same poses as pose alone.
    A lower pose threshold searches the person map itself."""
    monkeypatch.setattr(peaks, "POOLED_MAX_VALUES", pooled_max)
    hw = (100, 200)
    out, boxes = _many_persons(), [letterbox_for(hw, INPUT)]
    person_searches = []
    original = peaks.find_candidates

    def recording(logits: torch.Tensor, *args: object, **kwargs: bool) -> peaks.Candidates | None:
        if logits.shape[1] == 1:
            person_searches.append(logits.shape)
        return original(logits, *args, **kwargs)

    monkeypatch.setattr(peaks, "find_candidates", recording)
    for det, pose in ((0.3, 0.3), (0.3, 0.5), (0.5, 0.3)):
        options = DecodeOptions(score_threshold=det, pose_score_threshold=pose)
        alone = decode_batch(out, boxes, [hw], config(), ["pose"], options)[0].poses
        assert len(person_searches) == 1
        both = decode_batch(out, boxes, [hw], config(), ["detection", "pose"], options)[0].poses
        assert len(person_searches) == (1 if pose >= det else 2)
        person_searches.clear()
        assert alone is not None and both is not None and len(alone) >= 3, "several persons pass"
        np.testing.assert_array_equal(both.boxes, alone.boxes)
        np.testing.assert_array_equal(both.scores, alone.scores)
        np.testing.assert_array_equal(both.keypoints, alone.keypoints)


@pytest.mark.parametrize("tasks", [["detection", "pose", "segmentation"], ["pose"]])
def test_topk_search_device_gives_the_same_results(tasks: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """On a device of TOPK_SEARCH_DEVICES (a GPU) every peak search is the top-k of the max-pooled map and
    keypoints snap to peak lists: the same detections, poses and segmentation as the candidate searches
    (tried here by listing the CPU)."""
    hw = (100, 200)
    out, boxes = _many_persons(), [letterbox_for(hw, INPUT)]
    out["kp_heatmap"] = torch.full_like(out["kp_heatmap"], BACKGROUND)
    out["kp_heatmap"][0, :, 2::12, 3::12] = 3.0  # 9 peaks per joint: few enough for cell-by-cell snapping
    options = DecodeOptions(score_threshold=0.3, pose_score_threshold=0.3)
    monkeypatch.setattr(peaks, "POOLED_MAX_VALUES", 0)  # the listing a paper-sized map gets on the CPU
    monkeypatch.setattr(decode, "DENSE_SNAP_MAX_VALUES", 1 << 30)
    names = ("_sparse_candidates", "_pooled_candidates", "_dense_peaks")
    searches = {name: _record_results(monkeypatch, name) for name in names}
    cells = _record_results(monkeypatch, "_nearest_peak_cells")
    listed = decode_batch(out, boxes, [hw], config(), tasks, options)[0]
    listings = searches["_sparse_candidates"] + searches["_pooled_candidates"]
    assert listings and not searches["_dense_peaks"] and cells[0] is not None
    for found in (*searches.values(), cells):
        found.clear()
    monkeypatch.setattr(peaks, "TOPK_SEARCH_DEVICES", frozenset({"cpu"}))
    topk = decode_batch(out, boxes, [hw], config(), tasks, options)[0]
    listings = searches["_sparse_candidates"] + searches["_pooled_candidates"]
    assert searches["_dense_peaks"] and not listings and not cells
    assert listed.poses is not None and topk.poses is not None and len(listed.poses) >= 3
    for field in ("boxes", "scores", "keypoints"):
        np.testing.assert_array_equal(getattr(topk.poses, field), getattr(listed.poses, field))
    if "detection" in tasks:
        assert listed.detections is not None and topk.detections is not None and len(listed.detections) > 3
        for field in ("boxes", "scores", "class_ids"):
            np.testing.assert_array_equal(getattr(topk.detections, field), getattr(listed.detections, field))
        assert listed.segmentation is not None and topk.segmentation is not None
        np.testing.assert_array_equal(topk.segmentation, listed.segmentation)


@pytest.mark.parametrize(
    ("tasks", "pose_threshold"),
    [(None, 0.3), (None, 0.1), (["detection"], 0.3), (["pose"], 0.3), (["segmentation"], 0.3)],
)
def test_topk_search_device_decodes_without_looking_at_values(
    tasks: list[str] | None, pose_threshold: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a device of TOPK_SEARCH_DEVICES decode_to_tensors' work follows from shapes and options alone (what
    a CUDA graph can hold, and nothing waits for the GPU): it runs on the meta device, which has shapes but
    no values, so any step that reads one (nonzero, item, bool) fails there, as the candidate listing does.
    """
    out = {name: value.to("meta") for name, value in blank_outputs(2).items()}
    sizes = [(100, 200), (90, 120)]
    boxes = [letterbox_for(hw, INPUT) for hw in sizes]
    options = DecodeOptions(pose_score_threshold=pose_threshold)
    asked = {"detection", "pose", "segmentation"} if tasks is None else set(tasks)
    if asked & {"detection", "pose"}:
        with pytest.raises(NotImplementedError, match="nonzero"):
            decode_to_tensors(out, boxes, sizes, config(), tasks, options)  # the listing reads values
    monkeypatch.setattr(peaks, "TOPK_SEARCH_DEVICES", frozenset({"cuda", "meta"}))
    decoded = decode_to_tensors(out, boxes, sizes, config(), tasks, options)
    fields = {name: end - start for name, start, end in decoded.columns}
    assert decoded.numbers.device.type == "meta" and decoded.numbers.shape == (2, sum(fields.values()))
    assert ("det_count" in fields) == ("detection" in asked) and ("pose_count" in fields) == ("pose" in asked)
    if "pose" in asked:
        assert fields["pose_keypoints"] == options.top_k * 17 * 3
    pixels = sum(h * w for h, w in sizes)
    if "segmentation" in asked:
        assert decoded.segmentation is not None and decoded.segmentation.shape == (pixels,)
    else:
        assert decoded.segmentation is None
    # A graph holds the outputs, so they carry the cached constants the decoding read (a cache frees what
    # it drops): the letterbox mapping, and each image's sampling cells.
    device = torch.device("meta")
    read = [*decode._mapping_tensors(tuple(boxes), tuple(sizes), device)]
    if "segmentation" in asked:
        for box, hw in zip(boxes, sizes, strict=True):
            read += nearest_cells(box, hw, 4, (H, W), device)
    assert len(decoded.constants) == len(read)
    assert all(kept is cached for kept, cached in zip(decoded.constants, read, strict=True))
    bilinear = dataclasses.replace(options, segmentation_resampling="bilinear")
    if "segmentation" in asked:  # interpolates where classes meet: data-dependent, not for a graph
        with pytest.raises(NotImplementedError, match="nonzero"):
            decode_to_tensors(out, boxes, sizes, config(), tasks, bilinear)


@pytest.mark.parametrize("stride", [4, 1])
def test_segmentation_back_to_original_resolution(stride: int) -> None:
    hw = (100, 200)
    mh, mw = INPUT[0] // stride, INPUT[1] // stride
    class_map = (torch.arange(mh)[:, None] * 7 + torch.arange(mw)[None, :]) % 81
    out = {"segmentation": torch.nn.functional.one_hot(class_map, 81).permute(2, 0, 1)[None].float()}
    result = decode_batch(
        out, [letterbox_for(hw, INPUT)], [hw], config(stride), ["segmentation"], DecodeOptions()
    )[0]
    seg = result.segmentation
    assert seg is not None and seg.shape == hw and seg.dtype == np.uint8
    rows = np.clip(np.floor(((np.arange(100) + 0.5) * 0.64 + 32) / stride).astype(int), 0, mh - 1)
    cols = np.clip(np.floor(((np.arange(200) + 0.5) * 0.64) / stride).astype(int), 0, mw - 1)
    np.testing.assert_array_equal(seg, class_map.numpy()[rows][:, cols])
    if stride == 4:  # the corners, by hand
        assert seg[0, 0] == class_map[8, 0] and seg[99, 199] == class_map[23, 31]


def test_peaks_and_topk() -> None:
    heat = torch.zeros(1, 2, 4, 5)
    heat[0, 1, 2, 3] = 0.9
    heat[0, 1, 2, 4] = 0.5  # neighbour: suppressed
    heat[0, 0, 0, 0] = 0.7
    scores, flat, channels, ys, xs = topk_peaks(local_peaks(heat), 2)
    assert scores[0].tolist() == pytest.approx([0.9, 0.7])
    assert channels.tolist() == [[1, 0]] and ys.tolist() == [[2, 0]] and xs.tolist() == [[3, 0]]
    assert flat.tolist() == [[13, 0]]


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "channel_of_channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_neighbourhood_max_is_max_pooling(kernel: int, layout: str, dtype: torch.dtype) -> None:
    """The running maxima give max-pooling's answer (stride 1, padding kernel // 2) in every layout the
    decoder sees, at the borders and on a map smaller than the kernel; ties are kept (rounded values)."""
    torch.manual_seed(4)
    for shape in ((2, 6, 9, 11), (1, 3, 4, 5)):
        values = (torch.randn(shape) * 3).round().to(dtype)
        if layout == "channels_last":
            values = values.contiguous(memory_format=torch.channels_last)
        elif layout == "channel_of_channels_last":
            values = values.contiguous(memory_format=torch.channels_last)[:, 1:2]
        expected = torch.nn.functional.max_pool2d(values.float(), kernel, stride=1, padding=kernel // 2)
        assert torch.equal(peaks.neighbourhood_max(values, kernel).float(), expected)


def _reference_peaks(
    logits: torch.Tensor, k: int, threshold: float, kernel: int, per_channel: bool
) -> list[set[tuple[int, int, int, int]]]:
    """Per group: the (channel, y, x, round(score * 1e6)) of the best k local maxima >= threshold, by the
    dense max-pool and top-k of the probabilities."""
    heat = local_peaks(logits.sigmoid(), kernel)
    groups = []
    for image in heat:
        for part in image.split(1) if per_channel else [image]:
            offset = len(groups) % image.shape[0] if per_channel else 0
            scores, index = part.flatten().topk(k)
            c, rest = index // (part.shape[1] * part.shape[2]), index % (part.shape[1] * part.shape[2])
            y, x = rest // part.shape[2], rest % part.shape[2]
            groups.append(
                {
                    (int(ci) + offset, int(yi), int(xi), round(float(si) * 1e6))
                    for si, ci, yi, xi in zip(scores, c, y, x, strict=True)
                    if si >= threshold
                }
            )
    return groups


#: find_peaks' search paths: (POOLED_MAX_VALUES, POOLED_FALLBACK_MAX_VALUES) that select them on the test
#: maps, and the path each threshold of the test then takes.
PEAK_PATHS = {
    "pooled": ((1 << 30, 1 << 30), {0.3: "pooled", 0.6: "pooled", 0.05: "pooled", 0.0: "dense"}),
    "sparse": ((0, 1 << 30), {0.3: "sparse", 0.6: "sparse", 0.05: "pooled", 0.0: "dense"}),
    "sparse_topk_fallback": ((0, 0), {0.3: "sparse", 0.6: "sparse", 0.05: "dense", 0.0: "dense"}),
}


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("path", list(PEAK_PATHS))
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize(("threshold", "kernel"), [(0.3, 3), (0.6, 5), (0.05, 3), (0.0, 3)])
def test_find_peaks_equals_the_dense_search(
    threshold: float,
    kernel: int,
    per_channel: bool,
    path: str,
    layout: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each search (the whole map max-pooled then thresholded; only the cells passing the threshold
    examined; max-pool and top-k) finds exactly the dense search's peaks, also at the map borders, per image
    and per channel, best first, in PyTorch's layout and ONNX Runtime's; a low threshold leaves the sparse
    search for a fallback."""
    (pooled_max, fallback_max), expected_paths = PEAK_PATHS[path]
    monkeypatch.setattr(peaks, "POOLED_MAX_VALUES", pooled_max)
    monkeypatch.setattr(peaks, "POOLED_FALLBACK_MAX_VALUES", fallback_max)
    taken = []
    for name, function in (
        ("pooled", "_pooled_candidates"),
        ("sparse", "_sparse_candidates"),
        ("dense", "_dense_peaks"),
    ):
        original = getattr(peaks, function)
        monkeypatch.setattr(peaks, function, lambda *a, o=original, n=name: taken.append(n) or o(*a))
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 20, 24) * 2 - 4  # about 6 % of the values score >= 0.3
    logits[0, 1, 0, 0] = logits[1, 3, 19, 23] = 5.0  # peaks in the corners
    if layout == "channels_last":  # the layout the PyTorch backend gives; ONNX Runtime's are contiguous
        logits = logits.contiguous(memory_format=torch.channels_last)
    k = 7
    best = find_peaks(logits, k, threshold, kernel, per_channel)
    assert taken == [expected_paths[threshold]]
    groups = 4 if per_channel else 1
    assert best.scores.shape[:2] == (2, groups) and best.scores.shape[2] <= k
    torch.testing.assert_close(best.flat, best.ys * 24 + best.xs, rtol=0, atol=0)
    found = []
    for g in range(2 * groups):
        row = [field.reshape(2 * groups, -1)[g] for field in best]
        found.append(
            {
                (int(c), int(y), int(x), round(float(s) * 1e6))
                for s, _, c, y, x in zip(*row, strict=True)
                if s >= threshold and s >= 0
            }
        )
        scores = row[0][row[0] >= 0]
        assert torch.equal(scores, scores.sort(descending=True).values), "best first"
    assert found == _reference_peaks(logits, k, threshold, kernel, per_channel)
    assert any(found), "the test maps have peaks above every threshold tried"


def test_find_peaks_single_image_and_channel_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """One image, one channel (the person map, sliced from the channels-last heatmap): the same peaks on
    both paths, and one empty slot scoring -1 when nothing passes."""
    torch.manual_seed(3)
    heatmap = (torch.randn(1, 5, 30, 40) * 2 - 4).contiguous(memory_format=torch.channels_last)
    person = heatmap[:, 2:3]
    expected = _reference_peaks(person, 10, 0.3, 3, per_channel=False)
    for pooled_max in (0, 1 << 30):
        monkeypatch.setattr(peaks, "POOLED_MAX_VALUES", pooled_max)
        best = find_peaks(person, 10, 0.3, 3)
        got = {
            (int(c), int(y), int(x), round(float(s) * 1e6))
            for s, _, c, y, x in zip(*(field[0, 0] for field in best), strict=True)
            if s >= 0
        }
        assert got == expected[0] and got
        nothing = find_peaks(person, 10, 0.999, 3)
        assert nothing.scores.shape == (1, 1, 1) and float(nothing.scores[0, 0, 0]) == -1.0


def test_find_peaks_takes_the_sparse_path_when_few_cells_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A high threshold examines only the passing cells: no max-pool over the map is run."""
    logits = torch.full((1, 3, 16, 16), -6.0)
    logits[0, 2, 5, 9] = 2.0
    logits[0, 2, 5, 10] = 1.0  # a neighbour, not a peak
    monkeypatch.setattr(peaks, "POOLED_MAX_VALUES", 0)  # this small map would be max-pooled whole
    monkeypatch.setattr(peaks, "local_peaks", None)  # the dense search would fail
    best = find_peaks(logits, 10, 0.3, 3)
    assert best.scores.shape == (1, 1, 1)
    assert (int(best.channels[0, 0, 0]), int(best.ys[0, 0, 0]), int(best.xs[0, 0, 0])) == (2, 5, 9)
    none = find_peaks(logits, 10, 0.95, 3)
    assert none.scores.shape == (1, 1, 1) and float(none.scores[0, 0, 0]) == -1.0


def test_keypoint_maps_are_pooled_and_other_maps_searched_cell_by_cell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keypoint search max-pools the keypoint maps whole at the paper's size (a trained keypoint map
    passes the snapping threshold in about a sixth of its cells), however few pass; a detection or person
    map there, with few passing cells, is searched cell by cell. Each gives the reference peaks."""
    pooled = _record_results(monkeypatch, "_pooled_candidates")
    sparse = _record_results(monkeypatch, "_sparse_candidates")
    torch.manual_seed(4)
    # (channels, background logit, threshold, pooled asked, the search expected)
    for channels, mean, threshold, asked, path in (
        (17, -3.5, 0.1, True, pooled),
        (17, -7.0, 0.1, True, pooled),
        (1, -5.0, 0.3, False, sparse),
        (80, -7.0, 0.3, False, sparse),
    ):
        shape = (1, channels, 96, 128)
        logits = (torch.randn(shape) * 1.5 + mean).contiguous(memory_format=torch.channels_last)
        assert channels * 96 * 128 > peaks.POOLED_MAX_VALUES
        found = peaks.find_candidates(logits, threshold, 3, pooled=asked)
        assert len(path) == 1 and len(pooled) + len(sparse) == 1, channels
        pooled.clear()
        sparse.clear()
        assert found is not None
        got = {
            (int(c), int(y), int(x), round(float(v) * 1e6))
            for v, c, y, x in zip(found.scores, found.channels, found.ys, found.xs, strict=True)
        }
        assert [got] == _reference_peaks(logits, logits.numel(), threshold, 3, per_channel=False) and got
    kp_logits = (torch.randn(1, 17, 96, 128) * 1.5 - 7.0).contiguous(memory_format=torch.channels_last)
    boxes = torch.tensor([[[10.0, 10.0, 90.0, 80.0]]])
    regressed = torch.rand(1, 1, 17, 2) * 60 + 20
    decode.decode_keypoints(boxes, regressed, kp_logits, torch.rand(1, 2, 96, 128), DecodeOptions())
    assert len(pooled) == 1 and not sparse, "snapping at the paper's size pools the keypoint maps"


def test_equally_near_keypoint_peaks_snap_to_the_better_score() -> None:
    """Two peaks of a joint at the same distance from the regressed keypoint: the better-scoring one is
    chosen by every search (the per-joint lists hold the peaks best first, and so does the listed search)."""
    kp_logits = torch.full((1, 17, 96, 128), -10.0)
    kp_logits[0, 0, 40, 59] = 0.0  # score 0.5, 1.5 cells left of the keypoint
    kp_logits[0, 0, 40, 62] = 2.0  # score 0.88, 1.5 cells right of it
    kp_subpixel = torch.zeros(1, 2, 96, 128)
    regressed = torch.full((1, 1, 17, 2), 5.0)
    regressed[0, 0, 0] = torch.tensor([60.5, 40.0])
    boxes = torch.tensor([[[50.0, 30.0, 70.0, 50.0]]])
    for layout in (torch.contiguous_format, torch.channels_last):
        logits = kp_logits.contiguous(memory_format=layout)
        for dense_max, listed_max in ((0, 0), (0, 1 << 30), (1 << 30, 0)):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(decode, "DENSE_SNAP_MAX_VALUES", dense_max)
                patch.setattr(decode, "LISTED_SNAP_MAX_VALUES", listed_max)
                keypoints, scores = decode.decode_keypoints(
                    boxes, regressed, logits, kp_subpixel, DecodeOptions()
                )
            if dense_max:  # the cell search takes the first cell of equally near ones (documented)
                continue
            assert keypoints[0, 0, 0].tolist() == [62.0, 40.0], (dense_max, listed_max)
            assert float(scores[0, 0, 0]) == pytest.approx(0.8808, abs=1e-4)


@pytest.mark.parametrize("threshold", [0.3, 0.999, 0.99999, 0.9999999])
def test_the_sparse_search_finds_peaks_whose_sigmoid_rounds_up_to_the_threshold(
    threshold: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Isolated logits just below and above logit(threshold): near 1 float32's sigmoid rounds logits well
    short of it up to the threshold, and the cell search's prefilter must still let them through."""
    monkeypatch.setattr(peaks, "POOLED_MAX_VALUES", 0)  # the cell search
    sparse = _record_results(monkeypatch, "_sparse_candidates")
    logit = math.log(threshold / (1 - threshold))
    logits = torch.full((1, 1, 96, 128), -10.0)
    for i, value in enumerate(torch.linspace(logit - 0.05, logit + 0.01, 40)):
        logits[0, 0, 2 + 6 * (i // 20), 2 + 4 * (i % 20)] = value
    logits = logits.contiguous(memory_format=torch.channels_last)
    best = find_peaks(logits, 100, threshold, 3)
    assert sparse, "the cell search ran"
    got = {
        (int(c), int(y), int(x), round(float(v) * 1e6))
        for v, c, y, x in zip(
            best.scores[0, 0], best.channels[0, 0], best.ys[0, 0], best.xs[0, 0], strict=True
        )
        if v >= 0
    }
    assert [got] == _reference_peaks(logits, 100, threshold, 3, per_channel=False) and got


def test_the_sparse_search_never_compares_a_cell_with_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A border cell's clamped neighbours are the cell itself; its score and theirs come from different
    lanes of one sigmoid_, whose vectorised body and scalar tail may differ by an ulp on some CPUs (seen on
    one machine of this kind). Simulated here by raising the last value sigmoid_ writes by an ulp: the
    corner cell whose copy that is stays a peak."""
    logits = torch.full((1, 2, 4, 4), -6.0)
    logits[0, 1, 3, 3] = 1.0  # the last candidate, in the corner: its last clamped neighbour is itself
    logits[0, 0, 1, 1] = 2.0
    monkeypatch.setattr(peaks, "POOLED_MAX_VALUES", 0)  # the sparse search
    plain = torch.Tensor.sigmoid_

    def uneven(self: torch.Tensor) -> torch.Tensor:
        out = plain(self)
        tail = out.view(-1)[-1:]
        tail.copy_(torch.nextafter(tail, torch.full_like(tail, 2.0)))
        return out

    sparse = _record_results(monkeypatch, "_sparse_candidates")
    monkeypatch.setattr(torch.Tensor, "sigmoid_", uneven)
    best = find_peaks(logits, 10, 0.3, 3, per_channel=True)
    monkeypatch.setattr(torch.Tensor, "sigmoid_", plain)
    assert sparse, "the sparse search ran"
    found = {(int(c), int(y), int(x)) for s, c, y, x in zip(
        best.scores.flatten(), best.channels.flatten(), best.ys.flatten(), best.xs.flatten(), strict=True
    ) if s >= 0}  # fmt: skip
    assert found == {(0, 1, 1), (1, 3, 3)}


@pytest.mark.parametrize("vector_argmax", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("channels", [9, 40])
def test_channel_argmax_in_both_layouts(
    vector_argmax: bool, channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first maximum on ties in either layout, for float32 (channels_last and at least
    NUMPY_ARGMAX_MIN_CHANNELS channels: NumPy's argmax over the innermost axis, where NumPy vectorises it),
    bf16 and float64, a batch of several images, a view of a larger map and a map that requires grad."""
    monkeypatch.setattr(decode, "NUMPY_VECTOR_ARGMAX", vector_argmax)
    assert (channels >= decode.NUMPY_ARGMAX_MIN_CHANNELS) == (channels == 40)
    torch.manual_seed(2)
    logits = torch.randn(2, channels, 7, 5).round(decimals=1)  # rounded: ties, where the first must win
    expected = logits.argmax(dim=1)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        typed = logits.to(dtype)
        for layout in (torch.contiguous_format, torch.channels_last):
            assert torch.equal(channel_argmax(typed.contiguous(memory_format=layout)), expected), dtype
    wide = torch.randn(3, channels, 9, 7).round(decimals=1).contiguous(memory_format=torch.channels_last)
    window = wide[1:, :, 2:9, 1:6]  # channels innermost, rows and images strided
    assert torch.equal(channel_argmax(window), window.argmax(dim=1))
    learning = wide.clone().requires_grad_()
    assert torch.equal(channel_argmax(learning), wide.argmax(dim=1))
    tied = torch.zeros(1, channels, 2, 2)
    for layout in (torch.contiguous_format, torch.channels_last):
        assert torch.equal(channel_argmax(tied.contiguous(memory_format=layout)), torch.zeros(1, 2, 2).long())


def test_missing_output_is_reported() -> None:
    out = blank_outputs()
    del out["kp_subpixel"]
    with pytest.raises(KeyError, match="kp_subpixel"):
        decode_batch(out, [letterbox_for((64, 64), INPUT)], [(64, 64)], config(), ["pose"], DecodeOptions())


MEMORY_PROBE = """
import resource, sys
import torch
sys.path.insert(0, {test_dir!r})
from test_model_decode import blank_outputs, config
from mcn_ros.model.decode import DecodeOptions, decode_batch
from mcn_ros.model.preprocess import letterbox_for, nearest_cells

torch.manual_seed(0)
out = blank_outputs()
# Low-score maps: the person map a checkerboard (every high cell a peak: 2048 persons), keypoints random.
side = out["heatmap"].shape[2]
rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
out["heatmap"] = torch.full_like(out["heatmap"], -10.0)
out["heatmap"][:, 0] = ((rows + cols) % 2).float() - 3.0
out["kp_heatmap"] = torch.rand_like(out["kp_heatmap"]) - 3.0
out = {{k: torch.nn.functional.interpolate(v, scale_factor=2.0) for k, v in out.items()}}  # 64 x 64 cells
boxes, sizes = [letterbox_for((256, 256), (256, 256))], [(256, 256)]
cfg = config()
def run(max_detections):
    options = DecodeOptions.from_config(cfg.decode, score_threshold=0.0, pose_score_threshold=0.0,
                                        max_detections=max_detections)
    with torch.inference_mode():
        return decode_batch(out, boxes, sizes, cfg, ["pose"], options)[0]
run(100)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
poses = run(1000).poses
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(poses), (after - before) / 1024)
"""


def test_pose_decoding_memory_is_linear_in_max_detections() -> None:
    """1000 persons: keypoint candidates stay at the config's top_k (a quadratic decode needed ~340 MB)."""
    import subprocess
    import sys
    from pathlib import Path

    script = MEMORY_PROBE.format(test_dir=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    persons, growth_mb = done.stdout.split()
    assert int(persons) == 1000
    assert float(growth_mb) < 80, f"peak memory grew by {growth_mb} MB decoding 1000 persons"
