"""Weights files: round trip, metadata, and one clear WeightsError per kind of bad file."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcn_ros.model.config import DetectionConfig, ModelConfig, PoseConfig, SegmentationConfig
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.weights import WeightsError, load_weights, read_metadata, save_weights

CONFIG = ModelConfig(
    name="tiny",
    backbone="resnet18",
    input_size=(64, 64),
    use_dcn=True,
    detection=DetectionConfig(("person", "car")),
    pose=PoseConfig(),
    segmentation=SegmentationConfig(("person",)),
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MultitaskCenterNet]:
    torch.manual_seed(0)
    model = MultitaskCenterNet(CONFIG)
    with torch.no_grad():  # make BN statistics non-trivial so that buffers are checked too
        model.train()(torch.randn(2, 3, 64, 64))
    model.eval()
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(path, model, CONFIG, {"epoch": 3, "dataset": "synthetic"})
    return path, model


def test_round_trip_gives_identical_outputs(saved: tuple[Path, MultitaskCenterNet]) -> None:
    path, model = saved
    loaded, config, provenance = load_weights(path)
    assert config == CONFIG and not loaded.training
    assert provenance["epoch"] == 3 and provenance["dataset"] == "synthetic" and "created" in provenance
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert read_metadata(path) == (CONFIG, provenance)
    assert not list(path.parent.glob(".*tmp")), "temporary file left behind"


def test_expected_config_mismatch_names_the_key(saved: tuple[Path, MultitaskCenterNet]) -> None:
    path, _ = saved
    other = dataclasses.replace(CONFIG, detection=DetectionConfig(("person",)))
    with pytest.raises(WeightsError, match=r"mismatch at 'detection\.classes'"):
        load_weights(path, expected_config=other)
    load_weights(path, expected_config=CONFIG)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nothing.safetensors")
    with pytest.raises(WeightsError, match="not a file"):
        load_weights(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file(saved: tuple[Path, MultitaskCenterNet], tmp_path: Path, keep: float) -> None:
    data = saved[0].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights(cut)


def test_garbage_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights(junk)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights(empty)


def _rewrite(src: Path, dst: Path, metadata: dict[str, str] | None, tensors: dict | None = None) -> Path:
    save_file(tensors if tensors is not None else load_file(str(src)), str(dst), metadata=metadata)
    return dst


def test_foreign_safetensors_file(saved: tuple[Path, MultitaskCenterNet], tmp_path: Path) -> None:
    foreign = _rewrite(saved[0], tmp_path / "foreign.safetensors", None)
    with pytest.raises(WeightsError, match=r"not an mcn_ros weights file .*mcn_ros\.model\.convert"):
        load_weights(foreign)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": "7"}, "unsupported weights format version '7'"),
        ({"config": "{not json"}, "'config' metadata is not valid JSON"),
        (
            {"config": json.dumps({"name": "x", "backbone": "alexnet"})},
            "invalid model config in metadata: backbone",
        ),
        ({"provenance": "[1, 2"}, "'provenance' metadata is not valid JSON"),
    ],
)
def test_bad_metadata(
    saved: tuple[Path, MultitaskCenterNet], tmp_path: Path, change: dict, message: str
) -> None:
    from safetensors import safe_open

    with safe_open(str(saved[0]), framework="pt") as handle:
        metadata = dict(handle.metadata())
    bad = _rewrite(saved[0], tmp_path / "bad.safetensors", {**metadata, **change})
    with pytest.raises(WeightsError, match=message):
        load_weights(bad)


def test_tensors_of_another_config(saved: tuple[Path, MultitaskCenterNet], tmp_path: Path) -> None:
    path, model = saved
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    # Config says 80 detection classes, tensors have 2: the first mismatching tensor is named.
    more_classes = dataclasses.replace(CONFIG, detection=DetectionConfig())
    wrong = _rewrite(
        path, tmp_path / "w.safetensors", {**metadata, "config": json.dumps(more_classes.to_dict())}
    )
    with pytest.raises(
        WeightsError, match=r"tensor 'heads\.detection\.heatmap\.2\.weight' has shape \(2, 64, 1, 1\)"
    ):
        load_weights(wrong)
    # Config says no pose head: the pose tensors are unexpected.
    no_pose = dataclasses.replace(CONFIG, pose=None)
    extra = _rewrite(path, tmp_path / "x.safetensors", {**metadata, "config": json.dumps(no_pose.to_dict())})
    with pytest.raises(
        WeightsError, match=r"tensors? 'heads\.pose\.[a-z_.0-9]+'.* not part of the resnet18 model"
    ):
        load_weights(extra)
    # Config of another architecture (plain convs instead of DCN): missing tensors, named.
    plain = dataclasses.replace(CONFIG, use_dcn=False)
    state = load_file(str(path))
    state.pop("heads.segmentation.segmentation.2.bias")
    other = _rewrite(
        path, tmp_path / "o.safetensors", {**metadata, "config": json.dumps(plain.to_dict())}, state
    )
    with pytest.raises(WeightsError, match="belong to another architecture"):
        load_weights(other)
    assert model is not None


def test_a_missing_tensor_is_named_as_missing(saved: tuple[Path, MultitaskCenterNet], tmp_path: Path) -> None:
    """A file lacking tensors of the model its (unchanged) config describes, and nothing else wrong: the
    message names them as missing, not as another architecture, which only both missing and foreign
    tensors suggest."""
    from safetensors import safe_open

    path, _ = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    state = load_file(str(path))
    state.pop("heads.segmentation.segmentation.2.bias")
    one = _rewrite(path, tmp_path / "one.safetensors", metadata, state)
    with pytest.raises(WeightsError) as raised:
        load_weights(one)
    message = str(raised.value)
    assert "tensor 'heads.segmentation.segmentation.2.bias' of the resnet18 model" in message, message
    assert "is missing from the file" in message and "another architecture" not in message, message
    assert "0 more" not in message, message
    for key in [k for k in state if k.startswith("heads.pose.")][:7]:
        state.pop(key)
    seven = _rewrite(path, tmp_path / "seven.safetensors", metadata, state)
    with pytest.raises(
        WeightsError, match=r"8 tensors 'heads\.[a-z_.0-9]+', .*\(and 3 more\) of the resnet18 "
    ):
        load_weights(seven)


def test_save_is_atomic_and_overwrites(saved: tuple[Path, MultitaskCenterNet], tmp_path: Path) -> None:
    _, model = saved
    target = tmp_path / "sub" / "model.safetensors"
    save_weights(target, model, CONFIG)
    first = target.read_bytes()
    save_weights(target, model, CONFIG, {"note": "second"})
    assert target.read_bytes() != first and read_metadata(target)[1]["note"] == "second"
    assert [p.name for p in target.parent.iterdir()] == ["model.safetensors"]
    with pytest.raises(ValueError, match="differs"):
        save_weights(target, model, dataclasses.replace(CONFIG, name="other"))


def test_saved_weights_are_readable_by_other_users(
    saved: tuple[Path, MultitaskCenterNet], tmp_path: Path
) -> None:
    """The mode a plain open() gives (0644 under umask 022), not the 0600 of safetensors' temporary file:
    a node running as another user (a container) must be able to read the weights."""
    _, model = saved
    previous = os.umask(0o022)
    try:
        target = save_weights(tmp_path / "shared.safetensors", model, CONFIG)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_tensors_of_another_kind_of_number(saved: tuple[Path, MultitaskCenterNet], tmp_path: Path) -> None:
    """A float parameter stored as integers is refused, naming the tensor (it was cast silently); float16
    weights of float32 parameters still load (as float32)."""
    from safetensors import safe_open

    path, _ = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.is_floating_point())
    ints = _rewrite(path, tmp_path / "i.safetensors", metadata, {**state, name: state[name].long()})
    with pytest.raises(WeightsError, match=rf"tensor '{re.escape(name)}' holds torch.int64 values"):
        load_weights(ints)
    halves = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    model, _, _ = load_weights(_rewrite(path, tmp_path / "h.safetensors", metadata, halves))
    assert next(model.parameters()).dtype == torch.float32
