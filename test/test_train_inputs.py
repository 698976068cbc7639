"""Bad inputs to ``python -m mcn_training.train``: refused before any work, in one line naming what is wrong.

Runs as in test/test_train.py: the tiny config (ResNet-18, 64x64) on 12 + 4 synthetic images, on the CPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_train
import torch
from pycocotools import mask as mask_utils
from test_train import CONFIG, REPO, base_args, run_train

from mcn_ros.model.config import ModelConfig
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.weights import save_weights
from mcn_training import train
from mcn_training.config import load_train_config, model_config_dict
from mcn_training.errors import TrainError

data = test_train.data  # the fixture: a 12 + 4 image synthetic dataset (64x80 images)


def _rle_of_another_size(dataset: dict[str, Any], image: dict[str, Any]) -> str:
    ann = next(a for a in dataset["annotations"] if a["image_id"] == image["id"])
    size = [2 * image["height"], 2 * image["width"]]
    mask = np.zeros(size, np.uint8, order="F")
    mask[10:20, 10:20] = 1
    ann["segmentation"] = {"counts": mask_utils.encode(mask)["counts"].decode("ascii"), "size": size}
    where = rf"annotation {ann['id']} \(image {image['id']}\) in instances_train\.json"
    return rf"{where}.*: RLE size \[{size[0]}, {size[1]}\] is not the image's"


def _without(field: str) -> Callable[[dict[str, Any], dict[str, Any]], str]:
    def change(dataset: dict[str, Any], image: dict[str, Any]) -> str:
        del image[field]
        return rf"image {image['id']} in instances_train\.json: {field} is missing"

    return change


@pytest.mark.parametrize(
    "change", [_rle_of_another_size, _without("file_name"), _without("height")], ids=["rle", "file", "height"]
)
def test_a_bad_image_entry_or_mask_stops_the_run_before_its_first_step(
    data: Path,
    tmp_path: Path,
    change: Callable[[dict[str, Any], dict[str, Any]], str],
) -> None:
    """An RLE mask of another size than its image (pycocotools would decode it without complaint), an image
    entry without its file name or height: these crashed after the first step, without a checkpoint."""
    custom = tmp_path / "data"
    shutil.copytree(data, custom)
    instances = custom / "annotations" / "instances_train.json"
    dataset = json.loads(instances.read_text())
    message = change(dataset, dataset["images"][2])
    instances.write_text(json.dumps(dataset))
    with pytest.raises(TrainError, match=message):
        run_train(*base_args(custom, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def _infinite_box(instances: dict[str, Any], keypoints: dict[str, Any]) -> str:
    ann = instances["annotations"][1]
    ann["bbox"][2] = float("inf")  # json writes Infinity, which Python's json reads
    where = rf"annotation {ann['id']} \(image {ann['image_id']}\) in instances_train\.json"
    return rf"{where} \+ person_keypoints_train\.json: bbox should be 4 numbers .*, each finite, got \[.*inf"


def _keypoint_string(instances: dict[str, Any], keypoints: dict[str, Any]) -> str:
    ann = keypoints["annotations"][0]
    ann["keypoints"][3] = str(ann["keypoints"][3])
    where = rf"annotation {ann['id']} \(image {ann['image_id']}\) in instances_train\.json"
    return (
        rf"{where} \+ person_keypoints_train\.json: keypoints should be finite numbers, got '.*' at index 3"
    )


def _keypoint_id_twice(instances: dict[str, Any], keypoints: dict[str, Any]) -> str:
    first, second = keypoints["annotations"][:2]
    second["id"] = first["id"]
    return rf"annotation id {first['id']} is used twice in person_keypoints_train\.json"


@pytest.mark.parametrize(
    "change", [_infinite_box, _keypoint_string, _keypoint_id_twice], ids=["infinity", "string", "id-twice"]
)
def test_a_bad_number_or_annotation_id_stops_the_run_before_its_first_step(
    data: Path,
    tmp_path: Path,
    change: Callable[[dict[str, Any], dict[str, Any]], str],
) -> None:
    """An infinite box (training crashed mid-epoch on it, without a checkpoint), a keypoint written as a
    string (training read "1" as 1.0, COCOeval ignored it) and an annotation id used twice in the keypoints
    file (merged by id: one person's keypoints went to another) are refused at load, naming the file."""
    custom = tmp_path / "data"
    shutil.copytree(data, custom)
    files = [custom / "annotations" / f"{kind}_train.json" for kind in ("instances", "person_keypoints")]
    instances, keypoints = (json.loads(path.read_text()) for path in files)
    message = change(instances, keypoints)
    for path, dataset in zip(files, (instances, keypoints), strict=True):
        path.write_text(json.dumps(dataset))
    with pytest.raises(TrainError, match=message):
        run_train(*base_args(custom, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_annotations_without_an_area_train_and_are_evaluated(data: Path, tmp_path: Path) -> None:
    """Annotations without an area, which COCOeval reads (the first validation raised KeyError: 'area',
    after an epoch of training): their areas are filled in, with a warning for each split, and the run
    evaluates."""
    custom = tmp_path / "data"
    shutil.copytree(data, custom)
    for path in (custom / "annotations").glob("instances_*.json"):
        dataset = json.loads(path.read_text())
        for ann in dataset["annotations"]:
            del ann["area"]
        path.write_text(json.dumps(dataset))
    with pytest.warns(UserWarning, match="annotations have no area") as caught:
        summary = run_train(*base_args(custom, tmp_path / "run", "schedule.max_steps=1"))
    warned = sorted(str(w.message).split(":")[0] for w in caught if "have no area" in str(w.message))
    assert warned == [f"instances_{s}.json + person_keypoints_{s}.json" for s in ("train", "val")]
    assert [e["step"] for e in summary["history"]] == [1] and summary["last_metrics"]["bbox_AP"] is not None


@pytest.mark.parametrize("binary", ["weights", "checkpoint"])
def test_a_binary_file_as_config_is_one_line(
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    binary: str,
) -> None:
    """A weights file or a checkpoint passed to --config (meant for --resume): one line, exit 2."""
    path = REPO / "demo" / "mcn_demo.safetensors"
    if binary == "checkpoint":
        path = tmp_path / "checkpoint.pt"
        train.atomic_torch_save({"format": train.CHECKPOINT_FORMAT, "x": torch.arange(300)}, path)
    monkeypatch.setattr(sys, "argv", ["mcn_training.train", "--config", str(path), "--data", str(data)])
    with pytest.raises(SystemExit) as stopped:
        train.main()
    stderr = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "Traceback" not in stderr and "\n" not in stderr, stderr
    assert f"training config {path}: not a YAML text file" in stderr


def test_the_help_example_lr_is_a_float(tmp_path: Path) -> None:
    """``optim.lr=1e-3``, the command line's help example, and ``lr: 5e-4`` in a file (PyYAML reads both as
    strings, YAML 1.1)."""
    assert "optim.lr=1e-3" in (train.get_args_parser().epilog or "")
    args = train.parse_args(["--config", str(CONFIG), "optim.lr=1e-3"])
    assert load_train_config(args.config, args.overrides).optim.lr == 1e-3
    config = tmp_path / "lr.yaml"
    text = CONFIG.read_text().replace("model: ../models/", f"model: {REPO}/config/models/")
    config.write_text(text.replace("lr: 1.0e-3", "lr: 5e-4"))
    assert load_train_config(config).optim.lr == 5e-4


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file of the tiny config's model (random weights: what is loaded matters, not how good)."""
    config = ModelConfig.from_dict(model_config_dict(load_train_config(CONFIG)))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return save_weights(path, MultitaskCenterNet(config), config)


def test_test_only_refuses_weights_that_do_not_fit_the_model(
    data: Path,
    tmp_path: Path,
    weights: Path,
) -> None:
    """--test-only scores the init_weights as they are: a model they do not fill (heads of another width)
    would be scored partly at random; the weights that fit are scored."""
    out = tmp_path / "run"
    narrower = [f"init_weights={weights}", "model_overrides.head_conv=32"]
    with pytest.raises(
        TrainError, match=r"of the model's \d+ tensors are not in the file or differ in shape"
    ):
        run_train(*base_args(data, out, "--test-only", *narrower))
    assert not (out / "eval_report.json").exists()
    tested = run_train(*base_args(data, out, "--test-only", f"init_weights={weights}"))
    assert tested["metrics"]["num_images"] == 4 and (out / "eval_report.json").exists()


def test_training_from_weights_that_do_not_fit_warns(
    data: Path,
    tmp_path: Path,
    weights: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fine-tuning from weights of another model loads what fits, and says at WARNING what does not."""
    log = logging.getLogger("mcn_training")  # its own console handler, not propagated: listen on it
    log.addHandler(caplog.handler)
    try:
        summary = run_train(
            *base_args(data, tmp_path / "run", "schedule.max_steps=1", "eval.at_end=false"),
            f"init_weights={weights}",
            "model_overrides.head_conv=32",
        )
    finally:
        log.removeHandler(caplog.handler)
    assert summary["global_step"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    warned = [message for message in warnings if "init_weights" in message]
    assert len(warned) == 1 and "keep their initialisation" in warned[0], warned
    assert "of another shape: heads." in warned[0] and "[32, " in warned[0]
