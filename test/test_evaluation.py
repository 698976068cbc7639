"""mcn_ros.evaluation: official COCO AP through pycocotools, semantic targets, mIoU, reports."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mcn_ros.evaluation import (
    EvalReport,
    check_annotations,
    check_images,
    evaluate,
    load_coco,
    semantic_target,
)
from mcn_ros.model.results import Detections, Poses, Results
from mcn_training.synthetic import SYNTHETIC_CLASSES, generate_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DET = ("person", "car", "traffic light", "stop sign", "sports ball")


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_dataset(tmp_path_factory.mktemp("ev"), 12, seed=5, image_size=(72, 112), split="val")


@pytest.fixture(scope="module")
def coco(paths: dict[str, Path]) -> COCO:
    gt, _ = load_coco(paths["instances"], paths["keypoints"])
    return gt


def _gt_results(
    coco: COCO, box_shift: float = 0.0, kp_noise: float = 0.0, erode: int = 0
) -> dict[int, Results]:
    """Ground truth as predictions (optionally perturbed)."""
    rng = np.random.default_rng(0)
    out = {}
    for image_id, info in coco.imgs.items():
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes += box_shift
        classes = np.array([DET.index(coco.cats[a["category_id"]]["name"]) for a in anns], np.int64)
        scores = np.linspace(0.9, 0.5, len(anns)).astype(np.float32)
        persons = [i for i, a in enumerate(anns) if a["category_id"] == 1]
        kps = np.array([anns[i]["keypoints"] for i in persons], np.float32).reshape(-1, 17, 3)
        kps[..., :2] += rng.normal(0, kp_noise, kps[..., :2].shape).astype(np.float32) if kp_noise else 0
        seg = semantic_target(coco, image_id, SYNTHETIC_CLASSES)
        seg[seg == 255] = 0
        if erode:
            seg[:, erode:] = seg[:, :-erode].copy()  # shifted class map
        out[image_id] = Results(
            image_size=(info["height"], info["width"]),
            detections=Detections(boxes, scores, classes),
            poses=Poses(boxes[persons], scores[persons], kps),
            segmentation=seg,
        )
    return out


def test_ground_truth_scores_perfectly(coco: COCO) -> None:
    report = evaluate(coco, _gt_results(coco), DET, SYNTHETIC_CLASSES)
    assert report.bbox_AP == pytest.approx(1.0) and report.bbox_AP50 == pytest.approx(1.0)
    assert report.kp_AP == pytest.approx(1.0) and report.kp_AP50 == pytest.approx(1.0)
    assert report.mIoU == pytest.approx(1.0) and report.person_IoU == pytest.approx(1.0)
    assert report.num_images == 12
    assert set(report.per_class_IoU) == {"background", *SYNTHETIC_CLASSES}
    assert report.per_class_AP == pytest.approx(dict.fromkeys(_gt_class_names(coco), 1.0))


@pytest.mark.parametrize("stated", [None, 0])
def test_num_keypoints_is_the_count_of_labelled_keypoints(
    paths: dict[str, Path], tmp_path: Path, stated: int | None
) -> None:
    """A keypoints file without num_keypoints (COCOeval ignores a person whose count is 0) or stating other
    counts than the visibility flags (which training reads): the flags count, so the ground truth still
    scores 1.0; a stated count that is replaced is warned about."""
    data = json.loads(paths["keypoints"].read_text())
    for ann in data["annotations"]:
        del ann["num_keypoints"]
        if stated is not None:
            ann["num_keypoints"] = stated
    changed = tmp_path / "person_keypoints_val.json"
    changed.write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gt, _ = load_coco(paths["instances"], changed)
    counts = {a["id"]: sum(v > 0 for v in a["keypoints"][2::3]) for a in data["annotations"]}
    assert {i: gt.anns[i]["num_keypoints"] for i in counts} == counts and any(counts.values())
    assert evaluate(gt, _gt_results(gt), DET, SYNTHETIC_CLASSES).kp_AP == pytest.approx(1.0)
    said = [str(w.message) for w in caught if "num_keypoints" in str(w.message)]
    assert len(said) == (stated is not None), said
    if stated is not None:
        replaced = sum(n != stated for n in counts.values())
        assert f"the num_keypoints of {replaced} annotations differ" in said[0]


def test_perturbed_predictions_score_lower(coco: COCO) -> None:
    report = evaluate(coco, _gt_results(coco, box_shift=3.0, kp_noise=2.0, erode=2), DET, SYNTHETIC_CLASSES)
    assert report.bbox_AP is not None and report.bbox_AP < 0.8
    assert report.kp_AP is not None and report.kp_AP < 0.9
    assert report.mIoU is not None and 0.3 < report.mIoU < 0.97


def _without_class(results: dict[int, Results], class_id: int) -> dict[int, Results]:
    """The same results with every detection of one class removed."""
    out = {}
    for image_id, r in results.items():
        d = r.detections
        assert d is not None
        keep = d.class_ids != class_id
        out[image_id] = Results(
            image_size=r.image_size,
            detections=Detections(d.boxes[keep], d.scores[keep], d.class_ids[keep]),
            poses=r.poses,
            segmentation=r.segmentation,
        )
    return out


def _gt_class_names(coco: COCO) -> set[str]:
    return {coco.cats[a["category_id"]]["name"] for a in coco.dataset["annotations"] if not a["iscrowd"]}


def test_per_class_ap_perfect_class_and_missing_class(coco: COCO) -> None:
    present = _gt_class_names(coco)
    assert {"person", "car"} <= present
    report = evaluate(coco, _without_class(_gt_results(coco), DET.index("car")), DET, None)
    assert set(report.per_class_AP) == present  # only classes with ground truth
    assert report.per_class_AP["car"] == 0.0
    for name in present - {"car"}:
        assert report.per_class_AP[name] == pytest.approx(1.0), name
    assert report.bbox_AP == pytest.approx((len(present) - 1) / len(present))
    assert report.per_class_IoU == {}  # no segmentation asked for


def test_classes_the_dataset_lacks_are_left_out_and_named(coco: COCO) -> None:
    """A model with more classes than the dataset (an 80-class model on driving data): the dataset's own
    classes are scored as before, the others and their predictions left out, and listed."""
    results = _gt_results(coco)
    wider = (*DET, "forklift", "drone")  # not COCO categories
    for result in results.values():  # a confident forklift in every image: no category to judge it by
        d = result.detections
        assert d is not None
        result.detections = Detections(
            np.concatenate([d.boxes, [[0, 0, 20, 20]]]).astype(np.float32),
            np.concatenate([d.scores, [0.99]]).astype(np.float32),
            np.concatenate([d.class_ids, [wider.index("forklift")]]),
        )
    report = evaluate(coco, results, wider, None)
    assert report.bbox_AP == pytest.approx(1.0)
    assert report.classes_not_in_dataset == ["forklift", "drone"]
    assert evaluate(coco, _gt_results(coco), DET, None).classes_not_in_dataset == []
    with pytest.raises(KeyError, match="none of the 2 detection classes"):
        evaluate(coco, results, ("forklift", "drone"), None)


def test_per_class_ap_mean_is_the_overall_ap(coco: COCO) -> None:
    report = evaluate(coco, _gt_results(coco, box_shift=2.0), DET, None)
    assert report.bbox_AP is not None and 0.05 < report.bbox_AP < 0.95
    values = list(report.per_class_AP.values())
    assert len(values) == len(_gt_class_names(coco)) >= 3
    assert len(set(values)) > 1  # the classes really differ, the mean is not trivial
    assert np.mean(values) == pytest.approx(report.bbox_AP, abs=1e-9)


def test_no_predictions_give_zero_not_a_crash(coco: COCO) -> None:
    empty = {
        i: Results(
            image_size=(info["height"], info["width"]), detections=Detections.empty(), poses=Poses.empty()
        )
        for i, info in coco.imgs.items()
    }
    report = evaluate(coco, empty, DET, None)
    assert report.bbox_AP == 0.0 and report.kp_AP == 0.0 and report.mIoU is None
    assert report.per_class_AP == dict.fromkeys(sorted(_gt_class_names(coco), key=DET.index), 0.0)
    assert evaluate(coco, {}, DET, SYNTHETIC_CLASSES).bbox_AP is None
    with pytest.raises(KeyError, match="not in the ground truth"):
        evaluate(coco, {999999: empty[next(iter(empty))]}, DET, None)


def _tiny_coco() -> COCO:
    """One 4x6 image: a 2x2 person square, a car rectangle, and a crowd region."""
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "height": 4, "width": 6, "file_name": "x.jpg"}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4.0, "bbox": [0, 0, 2, 2],
             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},
            {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 4.0, "bbox": [2, 2, 4, 1],
             "segmentation": [[2, 2, 6, 2, 6, 3, 2, 3]]},
            {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 2.0, "bbox": [4, 0, 2, 1],
             "segmentation": {"counts": [16, 1, 3, 1, 3], "size": [4, 6]}},
        ],
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def test_semantic_target_and_hand_computed_iou() -> None:
    gt = _tiny_coco()
    target = semantic_target(gt, 1, ["person", "car"])
    expected = np.array(
        [
            [1, 1, 0, 0, 255, 255],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 2, 2, 2, 2],
            [0, 0, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(target, expected)
    assert (
        semantic_target(gt, 1, ["car"]) == np.where(expected == 2, 1, 0)
    ).all()  # person crowd -> background
    pred = expected.copy()
    pred[pred == 255] = 2  # anything on crowd pixels is not counted
    pred[0, 0] = 0  # one person pixel missed: person IoU 3/4, background IoU 14/15
    report = evaluate(gt, {1: Results(image_size=(4, 6), segmentation=pred)}, None, ["person", "car"])
    assert report.person_IoU == pytest.approx(3 / 4)
    assert report.per_class_IoU == pytest.approx({"background": 14 / 15, "person": 3 / 4, "car": 1.0})
    assert report.mIoU == pytest.approx((14 / 15 + 3 / 4 + 1.0) / 3)
    assert report.bbox_AP is None and report.kp_AP is None


def test_an_object_without_a_mask_is_ignored_not_background() -> None:
    """Box-only annotations (segmentation [] or absent) under a segmentation model: the box is unknown
    ground, 255, except where a masked object lies (the person square keeps its class)."""
    gt = _tiny_coco()
    for segmentation in ([], None):
        box_only = {"id": 4, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 6.0, "bbox": [1, 1, 3, 2]}
        if segmentation is not None:
            box_only["segmentation"] = segmentation
        gt.dataset["annotations"] = [*gt.dataset["annotations"][:3], box_only]
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
        expected = np.array(
            [
                [1, 1, 0, 0, 255, 255],
                [1, 1, 255, 255, 0, 0],
                [0, 255, 2, 2, 2, 2],
                [0, 0, 0, 0, 0, 0],
            ],
            np.uint8,
        )
        np.testing.assert_array_equal(semantic_target(gt, 1, ["person", "car"]), expected)
    above = {"id": 5, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 5.0, "bbox": [2, -8, 3, 5]}
    gt.dataset["annotations"] = [*gt.dataset["annotations"][:3], above]  # wholly above the image
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    np.testing.assert_array_equal(
        semantic_target(gt, 1, ["person", "car"]), semantic_target(_tiny_coco(), 1, ["person", "car"])
    )


def _compressed(mask: np.ndarray, size: list[int] | None = None) -> dict[str, object]:
    """A compressed COCO RLE (counts a string, as in JSON) of ``mask``, with another size if given."""
    rle = mask_utils.encode(np.asfortranarray(mask, np.uint8))
    return {"counts": rle["counts"].decode("ascii"), "size": size or list(rle["size"])}


@pytest.mark.parametrize(
    ("index", "change", "problem"),
    [
        (0, {"keypoints": [0] * 50}, "keypoints should be 51 numbers"),  # the person
        (1, {"bbox": [0, 0, 2]}, "bbox should be 4 numbers"),
        (1, {"segmentation": "polygon"}, "segmentation should be polygons or RLE, got str"),
        (1, {"segmentation": {"counts": [4]}}, "an RLE segmentation needs 'counts' and 'size'"),
        (1, {"category_id": 99}, "category_id 99 is not among the categories"),
        # The crowd region (an RLE of 4x6 pixels): pycocotools would decode it to another size, or past the
        # end of its array, with no error of its own.
        (2, {"segmentation": {"counts": [16, 1, 3, 1, 3], "size": [8, 12]}}, r"RLE size \[8, 12\] is not"),
        (2, {"segmentation": {"counts": [16, 1, 3, 1], "size": [4, 6]}}, "RLE counts cover 21 pixels"),
        (2, {"segmentation": _compressed(np.ones((8, 12)), size=[4, 6])}, "RLE counts cover 96 pixels"),
        (2, {"segmentation": {"counts": [16, -1, 9], "size": [4, 6]}}, "RLE counts should be run lengths"),
        # Python's json reads Infinity and NaN: they crashed training mid-epoch.
        (1, {"bbox": [2, 2, float("inf"), 1]}, r"bbox should be 4 numbers .*, each finite, got \[2, 2, inf"),
        (1, {"bbox": [2, float("nan"), 4, 1]}, r"bbox should be 4 numbers .*, got \[2, nan, 4, 1\]"),
        (1, {"bbox": [2, 2, True, 1]}, r"bbox should be 4 numbers .*, got \[2, 2, True, 1\]"),
        (1, {"bbox": [6, 2, -4, 1]}, r"bbox width and height should be >= 0, got \[6, 2, -4, 1\]"),
        (1, {"area": -4.0}, r"area should be a finite number >= 0, got -4\.0"),
        (1, {"area": float("nan")}, "area should be a finite number >= 0, got nan"),
        (1, {"area": "4"}, "area should be a finite number >= 0, got '4'"),
        (1, {"area": None}, "area should be a finite number >= 0, got None"),
        (1, {"iscrowd": None}, "iscrowd should be 0 or 1, got None"),
        (1, {"iscrowd": 2}, "iscrowd should be 0 or 1, got 2"),
        (1, {"iscrowd": "0"}, "iscrowd should be 0 or 1, got '0'"),
        # COCOeval ignores a string, training read "1" as 1.0 and null as NaN.
        (0, {"keypoints": ["1"] + [0] * 50}, "keypoints should be finite numbers, got '1' at index 0"),
        (0, {"keypoints": [0, 0, None] + [0] * 48}, "keypoints should be finite numbers, got None at index"),
        (0, {"keypoints": [0] * 50 + [True]}, "keypoints should be finite numbers, got True at index 50"),
        (0, {"keypoints": [0] * 50 + [3]}, "a keypoint's v .* should be 0, 1 or 2, got 3 at index 50"),
        (0, {"keypoints": None}, "keypoints should be 51 numbers .*, got NoneType"),
        # Coordinates that are no numbers are no short polygon to drop.
        (1, {"segmentation": [[2, 2, "6", 2, 6, 3, 2, 3]]}, "polygon coordinates should be finite .*'6'"),
        (1, {"segmentation": [[2, 2, 6, float("inf")]]}, "polygon coordinates should be finite .*, got inf"),
        (1, {"segmentation": [{"x": 2}]}, "a polygon should be a list of coordinates, got dict"),
    ],
)
def test_unusable_annotations_are_named(index: int, change: dict[str, object], problem: str) -> None:
    gt = _tiny_coco()
    annotation = gt.dataset["annotations"][index]
    annotation.update(change)
    where = rf"annotation {annotation['id']} \(image 1\) in x\.json"
    with pytest.raises(ValueError, match=rf"{where}: {problem}"):
        check_annotations(gt, "x.json")
    assert check_annotations(_tiny_coco(), "x.json") == 0  # the unchanged set passes


def test_annotation_ids_used_twice_or_missing_are_named(paths: dict[str, Path], tmp_path: Path) -> None:
    """pycocotools indexes the annotations by id, keeping the last of two (evaluation then scored an image
    against another image's boxes), and the keypoints are merged by id: an id used twice in either file, or
    none, is refused at load naming the file (before pycocotools' index, which raised a KeyError)."""
    instances, keypoints = (json.loads(paths[k].read_text()) for k in ("instances", "keypoints"))
    first = instances["annotations"][0]
    other = next(a for a in instances["annotations"] if a["image_id"] != first["image_id"])
    other["id"] = first["id"]
    twice = rf"annotation id {first['id']} is used twice in instances_val\.json "
    twice += rf"\(images {first['image_id']} and {other['image_id']}\)"
    for with_keypoints in (False, True):
        with pytest.raises(ValueError, match=twice):
            _load(tmp_path, instances, keypoints if with_keypoints else None)
    gt = _tiny_coco()
    gt.dataset["annotations"][2]["id"] = 1
    with pytest.raises(ValueError, match=r"^annotation id 1 is used twice in x\.json \(images 1 and 1\)$"):
        check_annotations(gt, "x.json")  # the ground truth of a bag, which no load_coco read

    instances = json.loads(paths["instances"].read_text())
    kp_first, kp_second = keypoints["annotations"][:2]
    kp_second["id"] = kp_first["id"]
    with pytest.raises(
        ValueError, match=rf"annotation id {kp_first['id']} is used twice in person_keypoints_val"
    ):
        _load(tmp_path, instances, keypoints)

    del instances["annotations"][3]["id"]
    image = instances["annotations"][3]["image_id"]
    missing = rf"the annotation at index 3 in instances_val\.json \(image {image}\) has no id"
    for kps in (None, json.loads(paths["keypoints"].read_text())):
        with pytest.raises(ValueError, match=missing):
            _load(tmp_path, instances, kps)


def _load(tmp_path: Path, instances: dict[str, object], keypoints: dict[str, object] | None) -> COCO:
    """load_coco of these datasets, written as instances_val.json and person_keypoints_val.json."""
    (tmp_path / "instances_val.json").write_text(json.dumps(instances))
    kp_path = None
    if keypoints is not None:
        kp_path = tmp_path / "person_keypoints_val.json"
        kp_path.write_text(json.dumps(keypoints))
    return load_coco(tmp_path / "instances_val.json", kp_path)[0]


def test_a_missing_area_is_filled_in_as_detectron2_does(paths: dict[str, Path], tmp_path: Path) -> None:
    """COCOeval reads every annotation's area (a KeyError at the first validation, after an epoch of
    training, where one had none): a missing area is its mask's, or its box's for an object without a mask,
    with one warning saying how many; the ground truth then scores 1.0."""
    instances = json.loads(paths["instances"].read_text())
    areas = {a["id"]: a.pop("area") for a in instances["annotations"]}
    box_only = next(a for a in instances["annotations"] if not a["iscrowd"])
    box_only["segmentation"] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gt = _load(tmp_path, instances, json.loads(paths["keypoints"].read_text()))
    expected = {**areas, box_only["id"]: box_only["bbox"][2] * box_only["bbox"][3]}
    assert expected[box_only["id"]] != areas[box_only["id"]]  # the box's area, not the mask's
    assert {i: a["area"] for i, a in gt.anns.items()} == pytest.approx(expected)
    said = [str(w.message) for w in caught if "no area" in str(w.message)]
    assert said == [
        f"instances_val.json + person_keypoints_val.json: {len(areas)} annotations have no area: their "
        "masks' areas are used (their boxes' where they have no mask), as detectron2 does"
    ]
    report = evaluate(gt, _gt_results(gt), DET, None)
    assert report.bbox_AP == pytest.approx(1.0) and report.kp_AP == pytest.approx(1.0)


def test_a_missing_iscrowd_is_not_a_crowd(paths: dict[str, Path], tmp_path: Path) -> None:
    """COCOeval reads every annotation's iscrowd (a KeyError at the first validation where one had none):
    a missing one is 0, as training reads it."""
    instances = json.loads(paths["instances"].read_text())
    crowds = {a["id"] for a in instances["annotations"] if a.pop("iscrowd")}
    gt = _load(tmp_path, instances, json.loads(paths["keypoints"].read_text()))
    assert {a["id"] for a in gt.anns.values() if a["iscrowd"]} == set()
    assert all(a["iscrowd"] == 0 for a in gt.anns.values()) and len(gt.anns) > len(crowds)
    report = evaluate(gt, _gt_results(gt), DET, None)
    assert report.bbox_AP == pytest.approx(1.0)


def test_a_compressed_rle_of_the_image_size_passes() -> None:
    gt = _tiny_coco()
    crowd = gt.dataset["annotations"][2]
    expected = gt.annToMask(crowd)
    crowd["segmentation"] = _compressed(expected)
    assert check_annotations(gt, "x.json") == 0
    np.testing.assert_array_equal(gt.annToMask(crowd), expected)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"file_name": None}, "file_name is missing"),
        ({"file_name": ""}, "file_name should be a file name, got ''"),
        ({"height": None}, "height is missing"),
        ({"width": 0}, "width should be a whole number of pixels >= 1, got 0"),
        ({"height": "4"}, "height should be a whole number of pixels >= 1, got '4'"),
    ],
)
def test_unusable_image_entries_are_named(change: dict[str, object], problem: str) -> None:
    """What training reads of an image entry (its file, and its size for the masks) is checked at load."""
    gt = _tiny_coco()
    image = gt.dataset["images"][0]
    image.update(change)
    for key in [k for k, v in change.items() if v is None]:
        del image[key]
    with pytest.raises(ValueError, match=rf"^image 1 in x\.json: {problem}$"):
        check_images(gt, "x.json")
    check_images(_tiny_coco(), "x.json")  # the unchanged image passes


def test_what_is_not_read_is_not_refused_and_short_polygons_are_dropped() -> None:
    gt = _tiny_coco()
    car = gt.dataset["annotations"][1]
    car["keypoints"] = [0] * 42  # keypoints of another category (14 of them): never read
    person = gt.dataset["annotations"][0]
    person["keypoints"] = [0] * 42
    assert check_annotations(gt, "x.json", keypoints=False) == 0  # a model without pose reads none
    square = [0, 0, 2, 0, 2, 2, 0, 2]
    person["keypoints"] = [0] * 51
    person["segmentation"] = [[0, 0, 2, 0], square, [1, 1]]  # pycocotools reads a 4-list as a box, fails on 2
    assert check_annotations(gt, "x.json") == 2
    assert person["segmentation"] == [square]


def test_report_dict_and_table(tmp_path: Path) -> None:
    report = EvalReport(bbox_AP=0.5, kp_AP=None, mIoU=0.25, per_class_IoU={"background": 0.5}, num_images=3)
    d = report.to_dict()
    assert d["bbox_AP"] == 0.5 and d["kp_AP"] is None and d["per_class_IoU"] == {"background": 0.5}
    assert d["per_class_AP"] == {}
    table = report.table()
    assert "| bbox AP | 50.0 |" in table and "| mIoU | 25.0 |" in table and "keypoint AP" not in table
    assert "| background | 50.0 |" in table and "| class | box AP |" not in table
    report.per_class_AP = {"car": 0.125}
    table = report.table()
    rows = ("| background | 50.0 |", "| class | box AP |", "| car | 12.5 |")
    positions = [table.index(row) for row in rows]
    assert positions == sorted(positions)
