"""The synthetic COCO-format generator: determinism, COCO validity, keypoints, occlusion, crowds, CLI."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from mcn_ros.model.labels import COCO_CATEGORY_IDS, COCO_CLASSES, KEYPOINT_NAMES, SKELETON
from mcn_training.synthetic import generate_dataset, main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = (96, 128)


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_dataset(tmp_path_factory.mktemp("syn"), 40, seed=3, image_size=SIZE, split="val")


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", 6, seed=11, image_size=SIZE)
    b = generate_dataset(tmp_path / "b", 6, seed=11, image_size=SIZE)
    c = generate_dataset(tmp_path / "c", 6, seed=12, image_size=SIZE)
    short = generate_dataset(tmp_path / "d", 3, seed=11, image_size=SIZE)
    for key in ("instances", "keypoints"):
        assert a[key].read_bytes() == b[key].read_bytes()
        assert a[key].read_bytes() != c[key].read_bytes()
    names = sorted(p.name for p in a["images"].iterdir())
    assert len(names) == 6
    for name in names:
        assert (a["images"] / name).read_bytes() == (b["images"] / name).read_bytes()
    # The first images do not depend on how many are generated.
    for name in sorted(p.name for p in short["images"].iterdir()):
        assert (a["images"] / name).read_bytes() == (short["images"] / name).read_bytes()


def test_files_are_coco(dataset: dict[str, Path]) -> None:
    inst = _coco(dataset["instances"])
    kp = _coco(dataset["keypoints"])
    raw = json.loads(dataset["instances"].read_text())
    assert set(raw) == {"info", "licenses", "images", "annotations", "categories"}
    assert [c["id"] for c in raw["categories"]] == list(COCO_CATEGORY_IDS)
    assert [c["name"] for c in raw["categories"]] == list(COCO_CLASSES)
    (person,) = json.loads(dataset["keypoints"].read_text())["categories"]
    assert person["id"] == 1 and person["keypoints"] == list(KEYPOINT_NAMES)
    assert person["skeleton"] == [[a + 1, b + 1] for a, b in SKELETON]
    assert len(inst.imgs) == 40
    used = {inst.cats[a["category_id"]]["name"] for a in inst.anns.values()}
    assert {"person", "car", "stop sign", "sports ball", "traffic light"} <= used
    kinds = {type(a["segmentation"]).__name__ for a in inst.anns.values()}
    assert kinds == {"list", "dict"}  # polygons and RLE both occur
    for ann in inst.anns.values():
        info = inst.imgs[ann["image_id"]]
        assert (info["height"], info["width"]) == SIZE
        rle = inst.annToRLE(ann)
        assert ann["area"] == pytest.approx(float(mask_util.area(rle)))
        assert ann["bbox"] == pytest.approx([float(v) for v in mask_util.toBbox(rle)])
        assert ann["area"] > 0 and ann["iscrowd"] in (0, 1)
        if ann["category_id"] == 1:
            assert ann["id"] in kp.anns  # same person annotation, same id, in both files
    assert all(a["category_id"] == 1 for a in kp.anns.values())
    image = cv2.imread(str(dataset["images"] / inst.imgs[next(iter(inst.imgs))]["file_name"]))
    assert image.shape == (*SIZE, 3)


def test_keypoints_visibility_and_occlusion(dataset: dict[str, Path]) -> None:
    inst = _coco(dataset["instances"])
    kp = _coco(dataset["keypoints"])
    counts = {0: 0, 1: 0, 2: 0}
    for ann in kp.anns.values():
        k = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
        assert set(np.unique(k[:, 2])) <= {0.0, 1.0, 2.0}
        assert ann["num_keypoints"] == int((k[:, 2] > 0).sum())
        assert (k[k[:, 2] == 0, :2] == 0).all()  # unlabelled keypoints are (0, 0, 0) as in COCO
        if ann["iscrowd"]:
            assert ann["num_keypoints"] == 0
            continue
        mask = inst.annToMask(inst.anns[ann["id"]]).astype(bool)
        for x, y, v in k:
            if v == 0:
                counts[0] += 1
                continue
            assert 0 <= x < SIZE[1] and 0 <= y < SIZE[0]
            counts[int(v)] += 1
            # visible keypoints lie on the person's visible mask, occluded ones do not
            assert mask[int(y), int(x)] == (v == 2)
    assert counts[2] > 100 and counts[1] > 0 and counts[0] > 0


def test_crowds_are_rle_and_not_pose_labelled(dataset: dict[str, Path]) -> None:
    inst = _coco(dataset["instances"])
    crowds = [a for a in inst.anns.values() if a["iscrowd"]]
    assert crowds
    for ann in crowds:
        assert isinstance(ann["segmentation"], dict) and isinstance(ann["segmentation"]["counts"], list)
        assert sum(ann["segmentation"]["counts"]) == SIZE[0] * SIZE[1]


def test_cli_writes_both_splits_with_distinct_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "--out",
            str(tmp_path),
            "--train",
            "3",
            "--val",
            "2",
            "--seed",
            "5",
            "--height",
            "64",
            "--width",
            "80",
        ]
    )
    train = _coco(tmp_path / "annotations" / "instances_train.json")
    val = _coco(tmp_path / "annotations" / "instances_val.json")
    assert sorted(train.imgs) == [1, 2, 3] and sorted(val.imgs) == [4, 5]
    assert not set(train.anns) & set(val.anns)
    assert (tmp_path / "annotations" / "person_keypoints_val.json").exists()
    assert len(list((tmp_path / "images" / "train").iterdir())) == 3
    assert "val: 2 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "message"), [("--train=-3", "must be at least 0"), ("--height=10", "must be at least 16")]
)
def test_cli_refuses_bad_sizes_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, message: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--out", str(tmp_path), option])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_writing_again_leaves_only_the_images_listed(tmp_path: Path) -> None:
    """A second, smaller run into the same folder removes the first run's extra images (a folder read as it
    is, by quantize --images, held images the annotations did not list); other files stay."""
    generate_dataset(tmp_path, 5, seed=0, image_size=(32, 32), split="val", first_id=1)
    mine = tmp_path / "images" / "val" / "notes.txt"
    mine.write_text("not an image of the generator")
    paths = generate_dataset(tmp_path, 2, seed=0, image_size=(32, 32), split="val", first_id=1)
    listed = {image["file_name"] for image in json.loads(paths["instances"].read_text())["images"]}
    assert {p.name for p in paths["images"].glob("*.jpg")} == listed and len(listed) == 2
    assert mine.is_file()
