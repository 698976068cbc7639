"""Drawing results: the class-map colouring and the debug image's segmentation blend (no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from mcn_ros.model.results import Detections, Results
from mcn_ros.visualize import color_palette, colorize, draw_results


def test_colorize_looks_each_id_up_and_clamps_ids_past_the_palette() -> None:
    palette = color_palette(5)  # ids 0..5
    class_map = np.array([[0, 1, 5], [6, 255, 3]], np.uint8)
    expected = palette[np.array([[0, 1, 5], [5, 5, 3]])]
    np.testing.assert_array_equal(colorize(class_map, palette), expected)
    np.testing.assert_array_equal(colorize(class_map.astype(np.uint16), palette), expected)
    np.testing.assert_array_equal(colorize(class_map[:, ::2], palette), expected[:, ::2])  # a strided view
    large = color_palette(400)  # past 255 classes: uint16 maps, the numpy path
    np.testing.assert_array_equal(colorize(np.array([[300, 2]], np.uint16), large), large[[[300, 2]]])
    # A palette longer than uint8 ids reach (more detection than segmentation classes): numpy 2 refused to
    # compare the ids with its length.
    np.testing.assert_array_equal(colorize(np.array([[255, 2]], np.uint8), large), large[[[255, 2]]])
    assert colorize(np.zeros((0, 4), np.uint8), large).shape == (0, 4, 3)


def test_the_blend_covers_classes_only_and_leaves_the_input_alone() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    original = image.copy()
    class_map = np.zeros((30, 40), np.uint8)
    class_map[10:20, 5:25] = 3
    palette = color_palette(4)
    results = Results(image_size=(30, 40), detections=Detections.empty(), segmentation=class_map)
    drawn = draw_results(image, results, ["a", "b", "c", "d"], palette, blend=0.45)
    np.testing.assert_array_equal(image, original)
    background = class_map == 0
    np.testing.assert_array_equal(drawn[background], image[background])
    expected = 0.55 * image[~background] + 0.45 * palette[3].astype(float)
    assert np.abs(drawn[~background] - expected).max() <= 1.0
    # The coloured map handed in gives the same picture; a flipped (BGR -> RGB) view is drawn as a copy.
    same = draw_results(image, results, ["a"] * 4, palette, segmentation_rgb=colorize(class_map, palette))
    np.testing.assert_array_equal(same, drawn)
    flipped = draw_results(image[:, :, ::-1], results, ["a"] * 4, palette)
    assert flipped.flags.c_contiguous
    np.testing.assert_array_equal(flipped[background], image[:, :, ::-1][background])


def test_boxes_and_keypoints_are_drawn_on_the_pixels_they_cover() -> None:
    """Box (20, 10, 30, 20) covers pixels 20..29 x 10..19: its outline is drawn there, not one pixel to the
    right and below; a keypoint at x 45.5 (the centre of pixel 45) is drawn centred on pixel 45."""
    from mcn_ros.model.results import Poses

    image = np.zeros((40, 60, 3), np.uint8)
    detections = Detections(
        np.array([[20, 10, 30, 20]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64)
    )
    drawn = draw_results(
        image, Results(image_size=(40, 60), detections=detections), ["person"], color_palette(1), 0.1
    )
    painted = drawn.any(axis=2)
    assert np.flatnonzero(painted[15]).tolist() == [20, 29]  # left and right edges, row 15
    assert np.flatnonzero(painted[:, 25]).tolist()[-1] == 19 and painted[10, 25]
    keypoints = np.zeros((1, 17, 3), np.float32)
    keypoints[0, 0] = (45.5, 30.5, 1.0)
    poses = Poses(np.zeros((1, 4), np.float32), np.ones(1, np.float32), keypoints)
    drawn = draw_results(image, Results(image_size=(40, 60), poses=poses), ["person"], color_palette(1), 0.5)
    columns = np.flatnonzero(drawn[30].any(axis=1))
    assert (columns.min() + columns.max()) / 2 == 45  # a disc centred on pixel 45


def test_a_bgr_image_is_drawn_as_its_rgb_copy() -> None:
    """``color_order="bgr"``: the picture is the one drawn on the RGB image (the node's and the replay video's
    BGR frames), a new C-contiguous array; the input is left alone, a row-padded view included."""
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    class_map = np.zeros((30, 40), np.uint8)
    class_map[5:15, 10:30] = 2
    detections = Detections(
        boxes=np.array([[3.0, 4.0, 20.0, 25.0]], np.float32),
        scores=np.array([0.8], np.float32),
        class_ids=np.array([1]),
    )
    results = Results(image_size=(30, 40), detections=detections, segmentation=class_map)
    palette = color_palette(3)
    expected = draw_results(rgb, results, ["a", "b", "c"], palette)
    bgr_rows = np.pad(np.ascontiguousarray(rgb[..., ::-1]), ((0, 0), (0, 2), (0, 0)))[:, :40]
    for bgr in (np.ascontiguousarray(rgb[..., ::-1]), rgb[..., ::-1], bgr_rows):
        before = bgr.copy()
        drawn = draw_results(bgr, results, ["a", "b", "c"], palette, color_order="bgr")
        np.testing.assert_array_equal(drawn, expected)
        assert drawn.flags.c_contiguous and not np.shares_memory(drawn, bgr)
        np.testing.assert_array_equal(bgr, before)
    with pytest.raises(ValueError, match="color_order"):
        draw_results(rgb, results, ["a", "b", "c"], palette, color_order="rgba")
