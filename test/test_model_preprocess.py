"""Letterbox preprocessing, its inverse and the segmentation resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcn_ros.model.color_order import grey_as_rgb
from mcn_ros.model.config import IMAGENET_MEAN, IMAGENET_STD
from mcn_ros.model.preprocess import (
    Letterbox,
    image_to_tensor,
    index_runs,
    letterbox_for,
    letterbox_tensor,
    letterboxes_to_tensor,
    pixel_cells,
    points_to_original,
    preprocess,
    rect_input_size,
    sample_grid,
    segmentation_logits_to_original,
    segmentation_to_original,
)


@pytest.mark.parametrize(
    ("orig", "inp", "expected"),
    [
        ((100, 200), (128, 128), (0.64, 0.64, 0.0, 32.0)),
        ((480, 640), (512, 512), (0.8, 0.8, 0.0, 64.0)),
        ((150, 60), (128, 128), (51 / 60, 128 / 150, 38.0, 0.0)),
        ((64, 64), (64, 96), (1.0, 1.0, 16.0, 0.0)),
        ((33, 77), (64, 64), (64 / 77, 27 / 33, 0.0, 18.0)),  # round(33 * 64/77) = 27, pad floor(37 / 2)
    ],
)
def test_letterbox_for(orig: tuple[int, int], inp: tuple[int, int], expected: tuple[float, ...]) -> None:
    box = letterbox_for(orig, inp)
    assert (box.scale_x, box.scale_y, box.pad_x, box.pad_y) == pytest.approx(expected)


def test_forward_and_inverse_mapping() -> None:
    box = letterbox_for((100, 200), (128, 128))
    points = np.array([[0.0, 0.0], [200.0, 100.0], [13.5, 77.25]])
    mapped = box.to_input(points)
    np.testing.assert_allclose(mapped[:2], [[0, 32], [128, 96]])
    np.testing.assert_allclose(box.to_original(mapped), points)
    restored = Letterbox.from_array(box.as_array())  # float32 storage, as datasets keep it
    assert restored.scale_x == pytest.approx(box.scale_x) and restored.pad_y == box.pad_y
    torch_points = torch.tensor([[[0.0, 32.0, 128.0, 96.0]]])
    lb = letterboxes_to_tensor([box], "cpu")
    torch.testing.assert_close(
        points_to_original(torch_points, lb), torch.tensor([[[0.0, 0.0, 200.0, 100.0]]])
    )


def test_preprocess_normalises_and_pads_with_zero() -> None:
    mean_colour = np.round(np.array(IMAGENET_MEAN) * 255)
    red = np.zeros((40, 80, 3), np.uint8)
    red[..., 0] = 255
    batch, boxes = preprocess([red], (64, 64), IMAGENET_MEAN, IMAGENET_STD, channels_last=True)
    assert tuple(batch.shape) == (1, 3, 64, 64) and batch.is_contiguous(memory_format=torch.channels_last)
    assert boxes[0] == Letterbox(0.8, 0.8, 0.0, 16.0)
    inside = batch[0, :, 16:48, :]
    expected = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(inside.mean(dim=(1, 2)), expected, rtol=1e-5, atol=1e-5)
    assert torch.all(batch[0, :, :16] == 0) and torch.all(batch[0, :, 48:] == 0)
    # BGR input of the same picture gives the same tensor.
    bgr, _ = preprocess([red[..., ::-1]], (64, 64), IMAGENET_MEAN, IMAGENET_STD, color_order="bgr")  # a view
    torch.testing.assert_close(bgr, batch)
    grey = np.broadcast_to(mean_colour.astype(np.uint8), (10, 10, 3)).copy()
    flat, _ = preprocess([grey], (32, 32), IMAGENET_MEAN, IMAGENET_STD, channels_last=False)
    assert flat.abs().max() < 0.01


def test_preprocess_mixed_sizes_without_resize() -> None:
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (64, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, (20, 64, 3), dtype=np.uint8),
    ]
    images[0].setflags(write=False)  # read-only views (ROS messages) are accepted
    batch, boxes = preprocess(images, (64, 64), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), channels_last=False)
    assert boxes == [Letterbox(1.0, 1.0, 16.0, 0.0), Letterbox(1.0, 1.0, 0.0, 22.0)]
    torch.testing.assert_close(batch[0, :, :, 16:48], torch.from_numpy(images[0]).permute(2, 0, 1) / 255.0)
    torch.testing.assert_close(batch[1, :, 22:42, :], torch.from_numpy(images[1]).permute(2, 0, 1) / 255.0)
    out, box = letterbox_tensor(torch.ones(3, 20, 64), (64, 64))
    assert box == boxes[1] and out.sum() == 3 * 20 * 64


def test_preprocess_rejects_bad_images() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess([np.zeros((8, 8), np.uint8)], (32, 32), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess([np.zeros((8, 8, 3), np.float32)], (32, 32), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="color_order"):
        preprocess([np.zeros((8, 8, 3), np.uint8)], (32, 32), IMAGENET_MEAN, IMAGENET_STD, color_order="rgba")


def test_segmentation_to_original_is_nearest_per_axis() -> None:
    class_map = torch.arange(16 * 16).view(16, 16)
    box = letterbox_for((30, 60), (64, 64))  # scale 64/60, 32 rows tall, pad_y 16
    seg = segmentation_to_original(class_map, box, (30, 60), 4)
    assert tuple(seg.shape) == (30, 60)
    rows = np.floor(((np.arange(30) + 0.5) * box.scale_y + box.pad_y) / 4).astype(int)
    cols = np.floor(((np.arange(60) + 0.5) * box.scale_x + box.pad_x) / 4).astype(int)
    np.testing.assert_array_equal(seg.numpy(), class_map.numpy()[rows][:, cols])
    # The shared formula gives the same cells in numpy (training targets) and torch (decoding).
    np.testing.assert_array_equal(pixel_cells(np.arange(30.0), box.scale_y, box.pad_y, 4), rows)
    torch_cols = pixel_cells(torch.arange(60, dtype=torch.float64), box.scale_x, box.pad_x, 4)
    np.testing.assert_array_equal(torch_cols.numpy(), cols)
    identity = segmentation_to_original(class_map, Letterbox(1, 1, 0, 0), (16, 16), 1)
    assert torch.equal(identity, class_map)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_sample_grid_repeats_runs_and_falls_back_to_indexing(dtype: torch.dtype) -> None:
    """The CPU's run-repeating path gives numpy indexing's answer for never-decreasing indices (with skips,
    long runs, the map's last cell, none at all), and indices that go back take the indexing path."""
    rng = np.random.default_rng(0)
    grid = torch.from_numpy(rng.integers(0, 3 if dtype == torch.bool else 200, (7, 9))).to(dtype)
    cases = [
        ([0, 0, 1, 1, 1, 4, 6, 6], [0, 2, 2, 3, 8, 8, 8]),
        ([6], list(range(9))),
        ([], [1, 2]),
        ([3, 1, 2], [0, 0, 5]),  # rows go back
        ([0, 1], [4, 4, 2]),  # columns go back
    ]
    for rows, cols in cases:
        r, c = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
        sampled = sample_grid(grid, r, c)
        assert sampled.dtype == dtype and tuple(sampled.shape) == (len(rows), len(cols))
        np.testing.assert_array_equal(sampled.numpy(), grid.numpy()[np.array(rows, dtype=int)][:, cols])
    for index in ([0, 0, 1, 1, 1, 4], [5], []):
        runs = index_runs(np.array(index, dtype=np.int64))
        assert runs is not None
        np.testing.assert_array_equal(np.repeat(*runs), index)
    assert index_runs(np.array([2, 2, 1])) is None


def _bilinear_reference(
    logits: torch.Tensor, box: Letterbox, hw: tuple[int, int], stride: int
) -> torch.Tensor:
    """Every pixel interpolated by torch's grid_sample (border cells repeated), then the argmax."""
    h, w = hw
    cells_y, cells_x = logits.shape[-2:]
    x_in = (torch.arange(w, dtype=torch.float64) + 0.5) * box.scale_x + box.pad_x
    y_in = (torch.arange(h, dtype=torch.float64) + 0.5) * box.scale_y + box.pad_y
    gx = (2 * x_in / (stride * cells_x) - 1).view(1, w).expand(h, w)
    gy = (2 * y_in / (stride * cells_y) - 1).view(h, 1).expand(h, w)
    grid = torch.stack((gx, gy), dim=-1)[None]
    sampled = torch.nn.functional.grid_sample(
        logits[None].double(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return sampled[0].argmax(0)


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize(("hw", "inp", "stride"), [((30, 60), (64, 64), 4), ((48, 40), (64, 64), 2)])
def test_bilinear_segmentation_is_the_argmax_of_interpolated_logits(
    hw: tuple[int, int], inp: tuple[int, int], stride: int, smooth: bool
) -> None:
    generator = torch.Generator().manual_seed(3)
    cells = (inp[0] // stride, inp[1] // stride)
    logits = torch.randn(6, *cells, generator=generator)
    if smooth:  # large regions of one class, as a trained model gives: most pixels skip interpolation
        logits = torch.nn.functional.avg_pool2d(logits[None], 5, stride=1, padding=2)[0] * 5
    box = letterbox_for(hw, inp)
    class_map = logits.argmax(0)
    seg = segmentation_logits_to_original(logits, class_map, box, hw, stride)
    assert tuple(seg.shape) == hw and seg.dtype == class_map.dtype
    # The same from channels-last logits (the Predictor's layout), read without a copy.
    channels_last = logits[None].contiguous(memory_format=torch.channels_last)[0]
    assert torch.equal(segmentation_logits_to_original(channels_last, class_map, box, hw, stride), seg)
    reference = _bilinear_reference(logits, box, hw, stride)
    nearest = segmentation_to_original(class_map, box, hw, stride)
    if smooth:
        # Only the classes of the four cells around a pixel compete: equal to interpolating all classes
        # up to rare pixels where another class would win in between; far closer than nearest.
        assert (seg != reference).float().mean() < 0.01
        assert 0.8 < (seg == nearest).float().mean() < 1.0  # they differ, near the class boundaries
    else:  # noise: every cell its own class, so closer to full interpolation than nearest still
        assert (seg != reference).float().mean() < (nearest != reference).float().mean()


def test_bilinear_segmentation_of_two_classes_is_exact() -> None:
    """With two classes the four cells' classes are all the classes: exactly the full interpolation."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.nn.functional.avg_pool2d(torch.randn(1, 2, 16, 24, generator=generator), 3, 1, 1)[0]
    box = letterbox_for((37, 50), (64, 96))
    seg = segmentation_logits_to_original(logits, logits.argmax(0), box, (37, 50), 4)
    assert torch.equal(seg, _bilinear_reference(logits, box, (37, 50), 4))


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(480, 640)], (384, 512)),  # VGA: 512x384, no padding
        ([(720, 1280)], (288, 512)),
        ([(500, 640)], (416, 512)),  # 400 rows rounded up to the stride
        ([(640, 480)], (512, 384)),  # portrait
        ([(480, 640), (640, 480)], (512, 512)),  # a batch holds all of its images
        ([(10, 10)], (512, 512)),  # upscaled to the configured size
        ([(3, 1000)], (32, 512)),  # never below one stride
    ],
)
def test_rect_input_size(sizes: list[tuple[int, int]], expected: tuple[int, int]) -> None:
    assert rect_input_size(sizes, (512, 512)) == expected
    for size in sizes:  # the same scale as the configured square input
        square, rect = letterbox_for(size, (512, 512)), letterbox_for(size, expected)
        assert (rect.scale_x, rect.scale_y) == (square.scale_x, square.scale_y)


@pytest.mark.parametrize("size", [(480, 640), (333, 517), (1080, 1920), (20, 30)])
def test_cpu_uint8_resize_matches_the_float_resize(size: tuple[int, int]) -> None:
    """The CPU path resizes the uint8 image (OpenCV) before converting; the float path (other devices)
    converts first (torch). They agree within one grey level, also for a BGR view with negative strides."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    image[size[0] // 3 :, : size[1] // 2] //= 4  # some structure: an edge
    view = image[..., ::-1]
    view.setflags(write=False)
    ones = (1.0, 1.0, 1.0)
    batch, boxes = preprocess([view], (128, 160), (0.0, 0.0, 0.0), ones, color_order="bgr")
    expected, box = letterbox_tensor(torch.from_numpy(image).permute(2, 0, 1).float(), (128, 160))
    assert boxes == [box]
    difference = (batch[0] * 255 - expected).abs()
    assert float(difference.max()) <= 1.0 + 1e-4
    assert float(difference.mean()) < 0.5


@pytest.mark.parametrize("size", [(48, 64), (50, 70), (333, 517), (7, 5)])
def test_a_grey_view_is_letterboxed_as_the_same_pixels_in_three_channels(size: tuple[int, int]) -> None:
    """A grey camera's frame arrives as its plane seen as three channels (a view, channel stride 0); the CPU
    letterbox resizes the plane alone, other devices move the plane alone: exactly the batch of the same
    pixels in a plain RGB array, resized or not, in either colour order, whatever the plane's memory layout
    (padded rows as a raw message's step, reversed rows or columns, column-major)."""
    rng = np.random.default_rng(11)
    plane = rng.integers(0, 256, size, dtype=np.uint8)
    plane[size[0] // 3 :, : size[1] // 2] //= 4  # an edge
    padded = np.pad(plane, ((0, 0), (0, 3)))[:, : size[1]]
    reversed_rows = np.ascontiguousarray(plane[::-1])[::-1]
    reversed_columns = np.ascontiguousarray(plane[:, ::-1])[:, ::-1]
    for grey in (plane, padded, reversed_rows, reversed_columns, np.asfortranarray(plane)):
        view = grey_as_rgb(grey)
        assert view.strides[2] == 0 and not view.flags.writeable
        copy = np.ascontiguousarray(view)
        for order in ("rgb", "bgr"):
            for input_hw in ((48, 64), (96, 128)):  # the first needs no resize for the 48x64 frame
                batch, boxes = preprocess([view], input_hw, IMAGENET_MEAN, IMAGENET_STD, color_order=order)
                expected, expected_boxes = preprocess(
                    [copy], input_hw, IMAGENET_MEAN, IMAGENET_STD, color_order=order
                )
                assert torch.equal(batch, expected) and boxes == expected_boxes
        tensor = image_to_tensor(view, "cpu")  # the other devices' path, on the CPU
        assert tensor.shape == (3, *size) and torch.equal(tensor, image_to_tensor(copy, "cpu"))


def test_cpu_preprocess_is_the_same_for_every_memory_layout_of_an_image() -> None:
    """A camera frame arrives as a contiguous array, a view with padded rows (a raw message's ``step``), a
    read-only view, or with reversed channels or columns; each is letterboxed to exactly the batch of the
    same pixels in a plain RGB array (padding 0, each image its own region), in either colour order."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)
    reference, reference_boxes = preprocess([image, other], (64, 64), IMAGENET_MEAN, IMAGENET_STD)
    padded_rows = np.pad(image, ((0, 0), (0, 6), (0, 0)))[:, :70]
    read_only = image.copy()
    read_only.setflags(write=False)
    for view in (padded_rows, read_only, np.ascontiguousarray(image[:, ::-1])[:, ::-1]):
        batch, boxes = preprocess([view, other], (64, 64), IMAGENET_MEAN, IMAGENET_STD)
        assert torch.equal(batch, reference) and boxes == reference_boxes
    bgr_rows = np.pad(image[..., ::-1], ((0, 0), (0, 6), (0, 0)))[:, :70]
    for bgr in (image[..., ::-1], np.ascontiguousarray(image[..., ::-1]), bgr_rows):
        pair = [bgr, other[..., ::-1]]
        batch, _ = preprocess(pair, (64, 64), IMAGENET_MEAN, IMAGENET_STD, color_order="bgr")
        assert torch.equal(batch, reference)
    # Each image in its own region: the wide one padded above and below, the tall one left and right.
    first, second = reference_boxes
    assert (first.pad_x, first.pad_y) == (0.0, 9.0) and (second.pad_x, second.pad_y) == (9.0, 0.0)
    assert torch.all(reference[0, :, :9] == 0) and torch.all(reference[1, :, :, :9] == 0)
    assert torch.all(reference[0, :, 9:55].abs().sum(dim=0) > 0)
