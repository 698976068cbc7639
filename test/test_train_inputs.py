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
