"""CocoMultitaskDataset and the transforms: contract shapes, letterbox agreement, has_pose, crowd, flip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from mcn_ros.model.config import ModelConfig
from mcn_ros.model.labels import FLIP_PAIRS
from mcn_ros.model.preprocess import letterbox_for, preprocess
from mcn_training.data import CocoMultitaskDataset, jpeg_cut_short
from mcn_training.errors import DataError
from mcn_training.synthetic import SYNTHETIC_CLASSES, generate_dataset
from mcn_training.targets import HEATMAP_IGNORE
from mcn_training.transforms import AugmentConfig, MultitaskTransform

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ORIG = (72, 120)
INPUT = (64, 96)


def _config(classes: object = "coco", pose: bool = True, seg: bool = True) -> ModelConfig:
    data: dict[str, object] = {
        "name": "t",
        "backbone": "resnet18",
        "input_size": list(INPUT),
        "use_dcn": False,
        "detection": {"classes": classes},
    }
    if pose:
        data["pose"] = {}
    if seg:
        data["segmentation"] = {"classes": list(SYNTHETIC_CLASSES), "output_stride": 1}
    return ModelConfig.from_dict(data)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_dataset(tmp_path_factory.mktemp("data"), 24, seed=1, image_size=ORIG, split="val")


def _dataset(data: dict[str, Path], config: ModelConfig, keypoints: Path | None = None, **kw: object):
    kp = data["keypoints"] if keypoints is None else keypoints
    return CocoMultitaskDataset(data["images"], data["instances"], kp, config, **kw)  # type: ignore[arg-type]


def test_sample_matches_the_contract_and_collates(data: dict[str, Path]) -> None:
    config = _config()
    ds = _dataset(data, config, max_objects=16)
    assert len(ds) == 24 and ds.image_ids == sorted(ds.coco.imgs)
    item = ds[0]
    h, w = INPUT[0] // 4, INPUT[1] // 4
    shapes = {
        "image": (3, *INPUT), "image_id": (), "letterbox": (4,), "orig_size": (2,), "heatmap": (80, h, w),
        "indices": (16,), "mask": (16,), "size": (16, 2), "offset": (16, 2), "kp_offsets": (16, 34),
        "kp_offsets_mask": (16, 34), "kp_heatmap": (17, h, w), "kp_indices": (16, 17),
        "kp_subpixel": (16, 17, 2), "kp_mask": (16, 17), "has_pose": (), "segmentation": INPUT,
    }  # fmt: skip
    assert {k: tuple(v.shape) for k, v in item.items()} == shapes
    assert item["image_id"].dtype == torch.int64 and item["indices"].dtype == torch.int64
    assert item["segmentation"].dtype == torch.int64 and item["orig_size"].tolist() == list(ORIG)
    lb = letterbox_for(ORIG, INPUT)
    torch.testing.assert_close(item["letterbox"], torch.from_numpy(lb.as_array()))
    batch = default_collate([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, *INPUT) and batch["has_pose"].shape == (3,)


def test_eval_image_is_the_inference_preprocessing(data: dict[str, Path]) -> None:
    config = _config()
    ds = _dataset(data, config)
    image = ds.load_image(ds.image_ids[3])
    expected, _ = preprocess([image], INPUT, config.mean, config.std, "cpu", channels_last=False)
    assert torch.equal(ds[3]["image"], expected[0])


def test_eval_targets_are_the_letterboxed_ground_truth(data: dict[str, Path]) -> None:
    config = _config(classes="person", seg=False)
    ds = _dataset(data, config)
    lb = letterbox_for(ORIG, INPUT)
    checked = 0
    for index, image_id in enumerate(ds.image_ids):
        anns = [a for a in ds.coco.imgToAnns[image_id] if a["category_id"] == 1 and not a["iscrowd"]]
        item = ds[index]
        assert item["heatmap"].shape[0] == 1 and int(item["mask"].sum()) == len(anns)  # persons only
        for m, ann in enumerate(anns):
            x, y, bw, bh = ann["bbox"]
            centre = (
                np.array([x + bw / 2, y + bh / 2]) * [lb.scale_x, lb.scale_y] + [lb.pad_x, lb.pad_y]
            ) / 4
            cell = np.floor(centre)
            assert int(item["indices"][m]) == int(cell[1] * (INPUT[1] // 4) + cell[0])
            np.testing.assert_allclose(item["offset"][m].numpy(), centre - cell, atol=1e-5)
            np.testing.assert_allclose(
                item["size"][m].numpy(), [bw * lb.scale_x / 4, bh * lb.scale_y / 4], rtol=1e-5
            )
            kps = np.asarray(ann["keypoints"]).reshape(17, 3)
            assert item["kp_mask"][m].tolist() == (kps[:, 2] > 0).astype(float).tolist()
            checked += 1
    assert checked > 10


def test_letterbox_padding_is_ignored_in_the_segmentation_target() -> None:
    """Cells off the image (the letterbox's padding, large under scale augmentation) are ignored by the
    segmentation loss, as detectron2 and torchvision pad targets; inference never maps them to a pixel.
    They were background, which taught the mean-colour border as a class."""
    from mcn_ros.model.labels import IGNORE_INDEX
    from mcn_training.transforms import sample_semantic

    semantic = np.ones((10, 20), np.uint8)  # class 1 everywhere on the image
    box = letterbox_for((10, 20), (32, 32))  # 32 x 16 of image, 8 rows of padding above and below
    target = sample_semantic(semantic, box, (32, 32), 4)
    assert target.shape == (8, 8)
    assert (target[:2] == IGNORE_INDEX).all() and (target[-2:] == IGNORE_INDEX).all()
    assert (target[2:-2] == 1).all()


def test_has_pose_from_the_keypoints_file(data: dict[str, Path], tmp_path: Path) -> None:
    """Images absent from the keypoints file (or no file at all) are not pose-labelled."""
    kp = json.loads(data["keypoints"].read_text())
    with_people = sorted({a["image_id"] for a in kp["annotations"]})
    dropped = with_people[0]
    kp["annotations"] = [a for a in kp["annotations"] if a["image_id"] != dropped]
    partial = tmp_path / "person_keypoints_partial.json"
    partial.write_text(json.dumps(kp))
    ds = _dataset(data, _config(seg=False), keypoints=partial)
    flags = {int(ds[i]["image_id"]): float(ds[i]["has_pose"]) for i in range(len(ds))}
    assert flags[dropped] == 0.0
    assert all(flags[i] == 1.0 for i in with_people[1:])
    assert all(flags[i] == 0.0 for i in flags if i not in with_people)  # no people: no keypoint labels
    item = ds[ds.image_ids.index(dropped)]
    assert item["kp_mask"].sum() == 0 and item["kp_heatmap"].sum() == 0 and item["mask"].sum() > 0
    no_file = CocoMultitaskDataset(data["images"], data["instances"], None, _config(seg=False))
    assert all(float(no_file[i]["has_pose"]) == 0.0 for i in range(4))


def test_an_image_of_another_size_than_its_annotations_is_refused(
    data: dict[str, Path], tmp_path: Path
) -> None:
    """Boxes, keypoints and masks are in the json's pixels: an image file of another size (resized, or turned
    by its EXIF orientation) would train on targets that do not line up, so it is refused with its name."""
    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    instances = json.loads(data["instances"].read_text())
    first = instances["images"][0]
    resized = images / first["file_name"]
    cv2.imwrite(str(resized), cv2.resize(cv2.imread(str(resized)), (ORIG[1] + 8, ORIG[0])))
    ds = CocoMultitaskDataset(images, data["instances"], None, _config(pose=False))
    (h, w), json_name = ORIG, data["instances"].name
    with pytest.raises(DataError, match=rf"{first['file_name']} is {w + 8}x{h} but {json_name} says {w}x{h}"):
        ds[ds.image_ids.index(first["id"])]
    assert ds[ds.image_ids.index(instances["images"][1]["id"])]["image"].shape[0] == 3  # the others load


def _photo(seed: int = 0) -> np.ndarray:
    """A 120x160 BGR image with edges and noise (a JPEG of it has enough entropy-coded data to cut)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (12, 16, 3), np.uint8), (160, 120), interpolation=cv2.INTER_CUBIC)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "params",
    [[], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]],
    ids=["baseline", "progressive", "restart-markers"],
)
def test_a_jpeg_cut_short_is_told_from_a_whole_one(params: list[int]) -> None:
    """Cut anywhere, a JPEG is cut short; whole, also with bytes after its end (some cameras append data) or
    the end marker of an embedded thumbnail in a segment before its scan (which a search for the last end
    marker would take for the image's own), it is not."""
    jpeg = cv2.imencode(".jpg", _photo(), params)[1].tobytes()
    thumbnail = cv2.imencode(".jpg", _photo(1)[:16, :16])[1].tobytes()
    comment = b"\xff\xfe" + (2 + len(thumbnail)).to_bytes(2, "big") + thumbnail
    with_thumbnail = jpeg[:2] + comment + jpeg[2:]
    for whole in (jpeg, jpeg + b"\x00trailer\xff\xd9 more", with_thumbnail):
        assert not jpeg_cut_short(whole)
        decoded = cv2.imdecode(np.frombuffer(whole, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(decoded, cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
    cuts = [(data, n) for data in (jpeg, with_thumbnail) for n in range(2, len(data), 7)]
    assert [n for data, n in cuts if not jpeg_cut_short(data[:n])] == []
    assert not jpeg_cut_short(cv2.imencode(".png", _photo())[1].tobytes())  # not a JPEG: not judged


def test_an_image_file_cut_short_is_refused_with_its_name(data: dict[str, Path], tmp_path: Path) -> None:
    """cv2.imread decodes a JPEG cut short into an image grey below the cut, with a stderr warning that
    names no file; the dataset refuses it by name. A PNG cut short is refused by the decoder itself."""
    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    ds = CocoMultitaskDataset(images, data["instances"], None, _config(pose=False, seg=False))
    first, second = (ds.coco.imgs[i]["file_name"] for i in ds.image_ids[:2])
    whole = (images / first).read_bytes()
    (images / first).write_bytes(whole[: len(whole) // 3])
    with pytest.raises(DataError, match=rf"{first} is cut short: its JPEG data ends before the end-of-image"):
        ds[0]
    (images / first).write_bytes(whole + b"\x00" * 64)  # padding after the end: a whole image
    assert torch.equal(ds[0]["image"], _dataset(data, _config(pose=False, seg=False))[0]["image"])
    png = cv2.imencode(".png", cv2.imread(str(images / second)))[1].tobytes()
    (images / second).write_bytes(png[: len(png) // 2])  # the decoder goes by content, not by name
    with pytest.raises(DataError, match=rf"{second}\): FileNotFoundError: cannot read image"):
        ds[1]


def test_an_error_no_check_foresaw_is_a_data_error_naming_the_image(data: dict[str, Path]) -> None:
    """The fields are checked when the dataset is made; what still fails while making a sample (here an
    image entry changed after the check) is a DataError naming the image, so that training keeps a
    checkpoint, and not a bare KeyError."""
    ds = _dataset(data, _config(pose=False))
    image_id = ds.image_ids[2]
    del ds.coco.imgs[image_id]["height"]
    with pytest.raises(DataError, match=rf"image id {image_id} .*KeyError: 'height'"):
        ds[2]


def test_an_arithmetic_error_no_check_foresaw_is_a_data_error_naming_the_image(data: dict[str, Path]) -> None:
    """An OverflowError while making a sample (here a mask-less person's box made infinite after the check:
    its ignore region has no pixel bounds) is a DataError naming the image too, not a crash mid-epoch."""
    ds = _dataset(data, _config(pose=False))
    person = next(a for a in ds.coco.anns.values() if a["category_id"] == 1 and not a["iscrowd"])
    person["segmentation"] = []
    person["bbox"][3] = float("inf")
    with pytest.raises(DataError, match=rf"image id {person['image_id']} .*: OverflowError: cannot convert"):
        ds[ds.image_ids.index(person["image_id"])]


def test_crowd_is_ignored_in_segmentation_and_detection(data: dict[str, Path]) -> None:
    ds = _dataset(data, _config(classes="person", pose=False))
    crowd_images = sorted({a["image_id"] for a in ds.coco.anns.values() if a["iscrowd"]})
    assert crowd_images
    image_id = crowd_images[0]
    item = ds[ds.image_ids.index(image_id)]
    assert (item["segmentation"] == 255).any()
    persons = [a for a in ds.coco.imgToAnns[image_id] if a["category_id"] == 1 and not a["iscrowd"]]
    assert int(item["mask"].sum()) == len(persons)
    # The crowd's cells are left out of the person heatmap's loss (they had been trained as background).
    assert (item["heatmap"][0] == HEATMAP_IGNORE).any()


def test_augmented_dataset_samples(data: dict[str, Path]) -> None:
    torch.manual_seed(0)
    ds = _dataset(data, _config(), augment=AugmentConfig())
    plain = _dataset(data, _config())
    for index in range(6):
        item, ref = ds[index], plain[index]
        assert {k: v.shape for k, v in item.items()} == {k: v.shape for k, v in ref.items()}
        assert torch.isfinite(item["image"]).all()
        assert not torch.equal(item["image"], ref["image"])
        assert int(item["mask"].sum()) == 0 or item["heatmap"].max() == 1.0


@pytest.mark.parametrize("random_crop", [False, True], ids=["shift", "random_crop"])
@pytest.mark.parametrize("seed", range(8))
def test_augmentation_moves_box_mask_and_keypoints_together(seed: int, random_crop: bool) -> None:
    """Random scale/shift (or CenterNet's random crop)/flip: the box bounds the mask and a keypoint stays on
    its marked pixels."""
    torch.manual_seed(seed)
    image = np.full((50, 70, 3), 80, np.uint8)
    semantic = np.zeros((50, 70), np.uint8)
    semantic[12:30, 20:41] = 1
    semantic[14:17, 24:27] = 2  # a 3x3 patch around the left eye
    image[semantic > 0] = 200
    boxes = np.array([[20.0, 12.0, 41.0, 30.0]])
    kps = np.zeros((1, 17, 3), np.float32)
    kps[0, 1] = [25.5, 15.5, 2]
    augment = AugmentConfig((0.7, 1.4), 0.25, random_crop=random_crop)
    transform = MultitaskTransform((64, 96), (0.5,) * 3, (0.25,) * 3, augment)
    out = transform(image, boxes, kps, semantic)
    assert out.semantic is not None and out.keypoints is not None
    objects = (out.semantic > 0) & (out.semantic != 255)  # 255: ignored, the padding off the image
    ys, xs = torch.nonzero(objects, as_tuple=True)
    if len(xs) == 0:
        return  # shifted out of view entirely
    x1, y1, x2, y2 = out.boxes[0].tolist()
    # The box (clipped to the input) and the mask's pixel extent agree to a pixel.
    assert abs(max(x1, 0) - xs.min().item()) <= 1 and abs(min(x2, 96) - (xs.max().item() + 1)) <= 1
    assert abs(max(y1, 0) - ys.min().item()) <= 1 and abs(min(y2, 64) - (ys.max().item() + 1)) <= 1
    eye = 2 if out.flipped else 1  # after a flip the left eye became the right eye
    kx, ky, v = out.keypoints[0, eye].tolist()
    assert v == 2 and out.keypoints[0, 3 - eye, 2] == 0
    if 0 <= kx < 96 and 0 <= ky < 64:
        assert out.semantic[int(ky), int(kx)] == 2


def test_flip_mirrors_geometry_and_swaps_left_right() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 5:15] = 255
    boxes = np.array([[5.0, 10.0, 15.0, 20.0]])
    kps = np.zeros((1, 17, 3), np.float32)
    for left, right in FLIP_PAIRS:
        kps[0, left] = [6.25, 11.0 + left, 2]  # all left joints at x = 6.25, right joints at x = 13.5
        kps[0, right] = [13.5, 11.0 + right, 1]
    kps[0, 0] = [10.0, 12.0, 2]
    semantic = np.zeros((40, 60), np.uint8)
    semantic[10:20, 5:15] = 1
    no_jitter = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    plain = MultitaskTransform(
        (64, 96), (0.5,) * 3, (0.25,) * 3, AugmentConfig((1.0, 1.0), 0.0, 0.0, **no_jitter)
    )
    flipped = MultitaskTransform(
        (64, 96), (0.5,) * 3, (0.25,) * 3, AugmentConfig((1.0, 1.0), 0.0, 1.0, **no_jitter)
    )
    a, b = plain(image, boxes, kps, semantic), flipped(image, boxes, kps, semantic)
    assert not a.flipped and b.flipped and a.letterbox == b.letterbox
    W = 96
    torch.testing.assert_close(b.image, a.image.flip(-1))
    assert torch.equal(b.semantic, a.semantic.flip(-1))
    torch.testing.assert_close(
        b.boxes[0], torch.stack([W - a.boxes[0, 2], a.boxes[0, 1], W - a.boxes[0, 0], a.boxes[0, 3]])
    )
    assert b.keypoints is not None and a.keypoints is not None
    for left, right in FLIP_PAIRS:
        # the new left joint is the mirror of the old right joint (continuous coordinates: x -> W - x)
        torch.testing.assert_close(b.keypoints[0, left, 0], W - a.keypoints[0, right, 0])
        torch.testing.assert_close(b.keypoints[0, left, 1:], a.keypoints[0, right, 1:])
        torch.testing.assert_close(b.keypoints[0, right, 0], W - a.keypoints[0, left, 0])
    torch.testing.assert_close(
        b.keypoints[0, 0], torch.stack([W - a.keypoints[0, 0, 0], *a.keypoints[0, 0, 1:]])
    )
    # The flipped box still encloses the flipped keypoints and the flipped object.
    _, xs = torch.nonzero(b.semantic == 1, as_tuple=True)
    assert b.boxes[0, 0] <= xs.min() and xs.max() + 1 <= b.boxes[0, 2]


def test_random_crop_is_centernets() -> None:
    """CenterNet's default crop: the image at its fit times 1 / f, f one of 0.6, 0.7, ..., 1.3, with the
    input's centre on an image pixel at least the border (128 px, halved until it fits: 64 for a 200-px
    side, 128 for 400) inside the image; every factor and the whole centre range turn up, and the same seed
    gives the same crop."""
    from mcn_training.transforms import CROP_WINDOW_FACTORS

    h, w, H, W = 200, 400, 128, 128
    image = np.zeros((h, w, 3), np.uint8)
    transform = MultitaskTransform((H, W), (0.5,) * 3, (0.25,) * 3, AugmentConfig(random_crop=True))
    fit = min(H / h, W / w)
    factors, centres_x, centres_y = set(), [], []
    for seed in range(400):
        torch.manual_seed(seed)
        box = transform(image, np.zeros((0, 4))).letterbox
        factor = fit / box.scale_x
        nearest = min(CROP_WINDOW_FACTORS, key=lambda f: abs(f - factor))
        assert abs(nearest - factor) < 0.02, factor  # sizes are rounded to whole pixels
        factors.add(nearest)
        # The original point under the input's centre.
        centres_x.append((W / 2 - box.pad_x) / box.scale_x)
        centres_y.append((H / 2 - box.pad_y) / box.scale_y)
    assert factors == set(CROP_WINDOW_FACTORS)
    slack = 1 / min(fit / f for f in CROP_WINDOW_FACTORS)  # an offset rounded to a pixel of the input
    assert 128 - slack <= min(centres_x) < 128 + 10 and w - 128 - 10 < max(centres_x) <= w - 128 + slack
    assert 64 - slack <= min(centres_y) < 64 + 10 and h - 64 - 10 < max(centres_y) <= h - 64 + slack
    torch.manual_seed(5)
    first = transform(image, np.zeros((0, 4))).letterbox
    torch.manual_seed(5)
    assert transform(image, np.zeros((0, 4))).letterbox == first


def test_lighting_shifts_each_image_along_the_principal_colours() -> None:
    """Lighting noise (AlexNet's PCA colour augmentation, CenterNet's 0.1): the same geometry as without it,
    the image's colours moved by one shift for the whole image along ImageNet's principal colour components,
    the padding (the mean colour) left alone."""
    from mcn_training.transforms import IMAGENET_PCA_EIGENVALUES, IMAGENET_PCA_EIGENVECTORS

    image = (np.random.default_rng(0).random((30, 90, 3)) * 255).astype(np.uint8)  # 32x96 of 64x96: padded
    quiet = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "flip_prob": 0.0}
    std = (0.25, 0.2, 0.3)
    plain = MultitaskTransform((64, 96), (0.5,) * 3, std, AugmentConfig((1.0, 1.0), 0.0, **quiet))
    lit = MultitaskTransform((64, 96), (0.5,) * 3, std, AugmentConfig((1.0, 1.0), 0.0, lighting=0.1, **quiet))
    torch.manual_seed(3)
    a = plain(image, np.zeros((0, 4)))
    torch.manual_seed(3)
    b = lit(image, np.zeros((0, 4)))
    assert a.letterbox == b.letterbox
    x0, y0 = int(b.letterbox.pad_x), int(b.letterbox.pad_y)
    new_h, new_w = round(30 * b.letterbox.scale_y), round(90 * b.letterbox.scale_x)
    assert new_h < 64  # some padding to leave alone
    inside = (slice(None), slice(y0, y0 + new_h), slice(x0, x0 + new_w))
    shift = (b.image - a.image)[inside] * torch.tensor(std).view(3, 1, 1)  # in [0, 1] colour units
    per_channel = shift.flatten(1).mean(dim=1)
    torch.testing.assert_close(shift, per_channel.view(3, 1, 1).expand_as(shift), atol=1e-5, rtol=0)
    assert per_channel.abs().max() > 1e-4  # it moved
    # Along the principal components: the shift's coordinates in the eigenvector basis, over the
    # eigenvalues, are the (small) normal draws.
    vectors = torch.tensor(IMAGENET_PCA_EIGENVECTORS)
    draws = torch.linalg.solve(vectors, per_channel) / torch.tensor(IMAGENET_PCA_EIGENVALUES)
    assert draws.abs().max() < 0.6  # 6 standard deviations of 0.1
    outside = torch.ones_like(b.image, dtype=torch.bool)
    outside[inside] = False
    assert torch.equal(b.image[outside], a.image[outside])
    torch.manual_seed(4)
    assert not torch.equal(lit(image, np.zeros((0, 4))).image, b.image)  # a new shift per image


def test_augment_config_validates() -> None:
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.5, 0.5))
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig(flip_prob=2.0)
    with pytest.raises(ValueError, match="lighting"):
        AugmentConfig(lighting=-0.1)
