"""The training loop on CPU: checkpoints, TensorBoard, exported weights, exact resume, clear config errors.

Tiny runs: the ResNet-18 three-task MCN at 64x64 on 12 synthetic images, batch 4 (3 steps per epoch).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from traintools import fit_recording_parameters

from mcn_ros.model.weights import load_weights
from mcn_training import evaluate as evaluate_cli
from mcn_training import export as export_cli
from mcn_training import train
from mcn_training.config import TrainConfigError, load_train_config
from mcn_training.errors import TrainError
from mcn_training.sampling import train_loader
from mcn_training.synthetic import generate_dataset

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "train" / "tiny_synthetic_test.yaml"
# Fast settings for every run here: evaluate only at the end, checkpoints at epoch ends and at the stop.
FAST = ["eval.every_epochs=0", "checkpoint.every_steps=0", "runtime.log_every_steps=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12 + 4 image synthetic COCO-format dataset (64x80 images)."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, 12, seed=3, image_size=(64, 80), split="train", first_id=1)
    generate_dataset(root, 4, seed=3, image_size=(64, 80), split="val", first_id=100)
    return root


def run_train(*argv: str) -> dict[str, Any]:
    """``python -m mcn_training.train ARGV`` in this process; returns the run summary."""
    return train.main(train.parse_args(argv))


def base_args(data: Path, out: Path, *overrides: str) -> list[str]:
    return ["--config", str(CONFIG), "--data", str(data), "--out", str(out), *FAST, *overrides]


@contextmanager
def parameters_recorded() -> Iterator[None]:
    """Inside, every run summary also holds ``params_start`` and ``params_end``
    (:func:`traintools.fit_recording_parameters`)."""
    with pytest.MonkeyPatch.context() as patch:  # its own: a test's monkeypatch.undo() leaves it
        patch.setattr(train.Trainer, "fit", fit_recording_parameters())
        yield


@pytest.fixture
def params_recorded() -> Iterator[None]:
    with parameters_recorded():
        yield


@pytest.mark.slow
@pytest.mark.usefixtures("params_recorded")
def test_resume_after_sigterm_equals_uninterrupted_run(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = run_train(*base_args(data, tmp_path / "straight", "schedule.max_steps=5"))
    assert straight["global_step"] == 5 and not straight["interrupted"]

    # SIGTERM during step 2 (mid-epoch: 3 steps per epoch): the run checkpoints after that step and stops.
    real_step = train.Trainer.train_step

    def step_then_signal(self: train.Trainer, batch: Any) -> Any:
        losses = real_step(self, batch)
        if self.state.global_step == 1:  # incremented after this call: this is the 2nd step
            signal.raise_signal(signal.SIGTERM)
        return losses

    monkeypatch.setattr(train.Trainer, "train_step", step_then_signal)
    out = tmp_path / "resumed"
    first = run_train(*base_args(data, out, "schedule.max_steps=4"))
    monkeypatch.undo()
    assert first["interrupted"] and first["global_step"] == 2
    ckpt = train.load_checkpoint(out / "checkpoint.pt")  # torch.load(weights_only=True)
    assert ckpt["state"]["epoch"] == 0 and ckpt["state"]["step_in_epoch"] == 2
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["last_epoch"] == 2 and "rng" in ckpt

    # Starting again without --resume must not overwrite the run.
    with pytest.raises(train.TrainError, match="already holds a checkpoint"):
        run_train(*base_args(data, out))
    # Resume with the checkpoint's own config (no --config), then extend the finished run.
    second = run_train("--out", str(out), "--resume", "schedule.max_steps=4", *FAST)
    assert second["global_step"] == 4
    third = run_train("--out", str(out), "--resume", "schedule.max_steps=5", *FAST)
    assert third["global_step"] == 5
    assert third["state_digest"] == straight["state_digest"], "resumed run differs from the straight one"
    # Each part starts from the weights the one before saved, and each trains: the parameters move.
    initial = straight["params_start"]
    assert first["params_start"] == initial and straight["params_end"] != initial, "training learned nothing"
    assert (second["params_start"], third["params_start"]) == (first["params_end"], second["params_end"])
    assert len({initial, first["params_end"], second["params_end"], third["params_end"]}) == 4
    assert third["params_end"] == straight["params_end"], "resumed parameters differ from the straight run's"
    # The logged learning curve is the same too (the interrupted interval is not logged twice).
    steps = [entry["step"] for entry in third["losses"]]
    assert steps == sorted(set(steps)) and steps[-1] == 5
    a, b = straight["losses"][-1], third["losses"][-1]
    assert a["total"] == pytest.approx(b["total"], rel=1e-6)

    # Run directory: checkpoint, TensorBoard events, history, exported weights with provenance.
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    history = json.loads((out / "history.json").read_text())
    assert history["metric"] == "bbox_AP" and history["evaluations"][-1]["step"] == 5
    for name in ("best.safetensors", "last.safetensors"):
        _, config, provenance = load_weights(out / name)
        assert config.input_size == (64, 64) and config.tasks == {"detection", "pose", "segmentation"}
        for key in ("command", "git", "dataset", "epoch", "metrics", "created"):
            assert key in provenance, key
    _, _, last = load_weights(out / "last.safetensors")
    assert last["global_step"] == 5 and last["metrics"]["bbox_AP"] is not None
    assert "mcn_training.train" in last["command"] and last["dataset"]["train"]["images"] == 12
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


#: Steps of the learning test and the factor its total loss must fall by. Over runtime.seed 0..9 the loss
#: falls 6.6x to 11.5x (each term at least 2x); with a learning rate of 0 it does not fall at all.
LEARNING_STEPS = 20
LEARNING_FACTOR = 3.0


def test_training_steps_lower_the_loss(data: Path, tmp_path: Path) -> None:
    """The trainer learns: Trainer.train_step (model, MCNLoss, Adam, scheduler) repeated on one fixed batch
    brings the batch's total loss below a third of the first step's, and every loss term lower."""
    args = train.parse_args(base_args(data, tmp_path / "run", "schedule.lr_drops=[]"))
    cfg, model_config, checkpoint = train.prepare(args)
    trainer = train.Trainer(args, cfg, model_config, checkpoint)
    try:
        loader = train_loader(
            trainer.train_set, trainer.sampler, trainer.per_rank_batch, 0, trainer.device, cfg.runtime.seed
        )
        batch = next(iter(loader))
        trainer.model.train()
        losses = [trainer.train_step(batch) for _ in range(LEARNING_STEPS)]
    finally:
        trainer.close()
    first, last = ({k: float(v) for k, v in step.items()} for step in (losses[0], losses[-1]))
    assert last["total"] < first["total"] / LEARNING_FACTOR, f"the loss hardly fell: {first} -> {last}"
    assert all(last[k] < first[k] for k in first), f"a loss term did not fall: {first} -> {last}"


class KilledError(Exception):
    """Stands for the process being killed (no signal handler runs, nothing is saved)."""


@pytest.mark.slow
@pytest.mark.usefixtures("params_recorded")
def test_deterministic_kernels_for_the_run_only(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime.deterministic turns PyTorch's deterministic kernels on while the run trains and leaves the
    process as it found it; on the CPU the weights are those of a run without it."""
    seen: list[bool] = []
    real_step = train.Trainer.train_step

    def recording_step(self: train.Trainer, batch: Any) -> Any:
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real_step(self, batch)

    monkeypatch.setattr(train.Trainer, "train_step", recording_step)
    before = torch.are_deterministic_algorithms_enabled()
    strict = run_train(
        *base_args(data, tmp_path / "strict", "schedule.max_steps=2", "runtime.deterministic=true")
    )
    assert seen == [True, True]
    assert torch.are_deterministic_algorithms_enabled() == before
    plain = run_train(*base_args(data, tmp_path / "plain", "schedule.max_steps=2"))
    assert seen[2:] == [before, before]
    assert strict["state_digest"] == plain["state_digest"]
    assert strict["params_end"] == plain["params_end"] != plain["params_start"] == strict["params_start"]


def test_resume_keeps_the_evaluation_of_a_checkpoint_step(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checkpoint and evaluation both due at every step: the checkpoint must hold the step's evaluation.
    every_step = ["checkpoint.every_steps=1", "eval.every_steps=1", "eval.metric=mIoU", "eval.at_end=false"]
    real_step = train.Trainer.train_step

    def killed_in_step_2(self: train.Trainer, batch: Any) -> Any:
        if self.state.global_step == 1:
            raise KilledError
        return real_step(self, batch)

    monkeypatch.setattr(train.Trainer, "train_step", killed_in_step_2)
    out = tmp_path / "run"
    with pytest.raises(KilledError):
        run_train(*base_args(data, out, "schedule.max_steps=3", *every_step))
    monkeypatch.undo()
    state = train.load_checkpoint(out / "checkpoint.pt")["state"]
    assert state["global_step"] == 1 and [e["step"] for e in state["history"]] == [1]
    first = state["history"][0]["metrics"]["mIoU"]
    assert state["best_metric"] == first and state["best_step"] == 1

    # The resumed run knows the evaluation: a later one replaces best.safetensors only if it is better.
    resumed = run_train("--out", str(out), "--resume", "schedule.max_steps=2")
    assert resumed["global_step"] == 2 and resumed["history"] == state["history"]
    assert resumed["best"]["value"] == first and resumed["best"]["step"] == 1
    assert json.loads((out / "history.json").read_text())["evaluations"] == state["history"]
    _, _, provenance = load_weights(out / "best.safetensors")
    assert provenance["global_step"] == 1 and provenance["metrics"]["mIoU"] == first


@pytest.mark.slow
def test_init_weights_loads_matching_tensors_and_names_other_classes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """init_weights copies every tensor whose name and shape match; where the file's classes are others of
    the same count (a shape cannot tell), a warning says that head starts from other classes."""
    import dataclasses
    import logging

    from mcn_ros.model.config import DetectionConfig, ModelConfig
    from mcn_ros.model.mcn import MultitaskCenterNet
    from mcn_ros.model.weights import save_weights
    from mcn_training.builders import init_from_weights

    config = ModelConfig(
        name="m", backbone="resnet18", input_size=(64, 64), detection=DetectionConfig(("person", "car"))
    )
    torch.manual_seed(0)
    source = MultitaskCenterNet(config)
    path = save_weights(tmp_path / "source.safetensors", source, config)
    for classes, warned in ((("person", "car"), False), (("cat", "dog"), True)):
        torch.manual_seed(1)
        model = MultitaskCenterNet(dataclasses.replace(config, detection=DetectionConfig(classes)))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mcn_training"):
            init_from_weights(model, str(path))
        for name, value in source.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
        assert ("detection classes differ" in caplog.text) == warned, caplog.text


def test_export_evaluate_and_test_only(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_train(*base_args(data, out, "schedule.max_steps=1", "eval.at_end=false"))
    exported = export_cli.main(export_cli.get_args_parser().parse_args([str(out / "checkpoint.pt")]))
    model, _, provenance = load_weights(exported)
    assert provenance["global_step"] == 1 and provenance["exported_from"].endswith("checkpoint.pt")
    ckpt = train.load_checkpoint(out / "checkpoint.pt")
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())

    report_path = tmp_path / "report.json"
    args = evaluate_cli.get_args_parser().parse_args(
        ["--weights", str(exported), "--data", str(data), "--split", "val", "--out", str(report_path)]
    )
    args.workers = 0
    result = evaluate_cli.main(args)
    saved = json.loads(report_path.read_text())
    assert saved["images"] == 4 and set(saved["metrics"]) >= {"bbox_AP", "bbox_AP50", "kp_AP", "mIoU"}
    assert report_path.with_suffix(".md").read_text().count("bbox AP") == 2
    assert result["metrics"]["mIoU"] == saved["metrics"]["mIoU"]

    tested = run_train("--out", str(out), "--resume", "--test-only")
    assert tested["metrics"]["mIoU"] == pytest.approx(saved["metrics"]["mIoU"])
    assert json.loads((out / "eval_report.json").read_text())["num_images"] == 4


def test_atomic_checkpoint_write_survives_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    train.atomic_torch_save({"format": train.CHECKPOINT_FORMAT, "x": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails half-way through the write
        train.atomic_torch_save({"x": torch.zeros(1000), "bad": lambda: None}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    path.write_bytes(before[: len(before) // 2])  # a torn file (not ours: we never write one) is reported
    with pytest.raises(train.TrainError, match="cannot be read"):
        train.load_checkpoint(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], r"optim\.lrr: unknown field \(allowed: name, lr"),
        (["optim.lr=fast"], r"optim\.lr: expected a finite number, got 'fast'"),
        (["schedule.lr_drops=[120, 90]"], r"schedule\.lr_drops: must be sorted"),
        (["eval.metric=kp_AP", "model_overrides.pose=null"], r"eval\.metric: kp_AP needs the pose task"),
        (["model_overrides.input_size=[60, 60]"], r"model .*: input_size\[0\]: must be a multiple of 32"),
        (["loss.seg=-1"], r"loss\.seg: loss weight must be a finite number >= 0, got -1"),
        (["data.workers=true"], r"data\.workers: expected an integer, got True"),
        (["schedule.lr_drop_unit=fraction"], r"schedule\.lr_drops: fractions must be <= 1, got \(1\.5,\)"),
        (["data.augment.flip=1"], r"data\.augment\.flip: unknown field"),
        (["runtime.seed=-1"], r"runtime\.seed: .*0"),
        (["runtime.seed=4294967296"], r"runtime\.seed: .*4294967296"),
        (["model=nowhere.yaml"], r"model: cannot read model config nowhere\.yaml"),
        (["data.train_split=training"], r"data: no image folder for split 'training'"),
    ],
)
def test_bad_config_fails_before_any_work(
    data: Path, tmp_path: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(TrainConfigError, match=message):
        run_train(*base_args(data, tmp_path / "out", *overrides))
    assert not (tmp_path / "out").exists()


def test_bad_data_dir_and_config_file(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match=r"dataset directory .*missing does not exist"):
        run_train("--config", str(CONFIG), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(TrainConfigError, match=r"bad\.yaml: invalid YAML"):
        load_train_config(bad)
    bad.write_text("model: ../models/x.yaml\n")
    with pytest.raises(TrainConfigError, match=r"bad\.yaml: name: missing"):
        load_train_config(bad)


def test_a_job_restarted_by_its_scheduler_resumes_with_one_command(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same command line twice: the first start has nothing to resume (it starts, with a warning), is
    stopped by SIGTERM and exits 143 from the command line (exit 0 made a preempted run look finished to a
    scheduler); the second resumes and finishes."""
    out = tmp_path / "job"
    command = ["mcn_training.train", *base_args(data, out, "schedule.max_steps=3"), "--resume"]
    real_step = train.Trainer.train_step

    def step_then_signal(self: train.Trainer, batch: Any) -> Any:
        losses = real_step(self, batch)
        if self.state.global_step == 0:
            signal.raise_signal(signal.SIGTERM)
        return losses

    monkeypatch.setattr(train.Trainer, "train_step", step_then_signal)
    monkeypatch.setattr(sys, "argv", command)
    with caplog.at_level(logging.WARNING, logger="mcn_training"), pytest.raises(SystemExit) as stopped:
        train.main()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert any("no checkpoint at" in record.getMessage() for record in caplog.records)
    monkeypatch.setattr(train.Trainer, "train_step", real_step)
    summary = train.main()  # the very same command: resumes from the checkpoint of step 1
    assert summary["global_step"] == 3 and not summary["interrupted"]
    # Without --config there is nothing to start from: a missing checkpoint is still an error.
    with pytest.raises(train.TrainError, match="does not exist"):
        run_train("--out", str(tmp_path / "nothing"), "--resume")


def test_command_line_error_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("batch_size: 4", "batch_size: four"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mcn_training.train", "--config", str(bad), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and "optim.batch_size: expected an integer, got 'four'" in proc.stderr


def test_backbone_weights_of_the_wrong_kind_are_one_line(data: Path, tmp_path: Path) -> None:
    """A whole model's weights where the backbone's timm checkpoint belongs: one line, exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "mcn_training.train", "--config", str(CONFIG), "--data", str(data),
         "--out", str(tmp_path / "run"), f"backbone_weights={REPO / 'demo' / 'mcn_demo.safetensors'}"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "backbone tensor(s) missing" in proc.stderr.strip().splitlines()[-1]


def test_config_round_trip_and_overrides() -> None:
    config = load_train_config(CONFIG, ["optim.lr=0.01", "data.augment=null", "schedule.lr_drops=[1, 2]"])
    assert config.optim.lr == 0.01 and config.data.augment is None and config.schedule.lr_drops == (1.0, 2.0)
    again = type(config).from_dict(config.to_dict())
    assert again == config
    paper = load_train_config(REPO / "config" / "train" / "dla34_det1_seg1_pose_512_140e_coco.yaml")
    assert (paper.optim.name, paper.optim.lr, paper.optim.batch_size) == ("adam", 5e-4, 128)
    assert paper.schedule.epochs == 140 and paper.schedule.lr_drops == (90.0, 120.0)
    assert (paper.loss.size, paper.loss.seg) == (0.1, 5.0)


def test_model_classes_the_dataset_lacks_train_and_evaluate(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dataset whose categories are only the classes it uses (a custom one), under the 80-class config:
    training says which classes get no targets, and the evaluation scores the rest instead of stopping."""
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(data, custom)
    for instances in custom.glob("annotations/instances_*.json"):
        dataset = json.loads(instances.read_text())
        used = {a["category_id"] for a in dataset["annotations"]}
        dataset["categories"] = [c for c in dataset["categories"] if c["id"] in used]
        instances.write_text(json.dumps(dataset))
    log = logging.getLogger("mcn_training")  # its own console handler, not propagated: listen on it
    log.addHandler(caplog.handler)
    try:
        summary = run_train(*base_args(custom, tmp_path / "run", "schedule.max_steps=1"))
    finally:
        log.removeHandler(caplog.handler)
    assert summary["global_step"] == 1 and summary["last_metrics"]["bbox_AP"] is not None
    assert any("have no category in instances_val" in r.getMessage() for r in caplog.records)


def test_weights_are_evaluated_once_where_step_and_epoch_evaluations_meet(data: Path, tmp_path: Path) -> None:
    """eval.every_steps a multiple of the epoch (3 steps): step 3's evaluation serves the epoch's end."""
    summary = run_train(
        *base_args(data, tmp_path / "run", "schedule.max_steps=4"),
        "eval.every_steps=3",
        "eval.every_epochs=1",
    )
    steps = [entry["step"] for entry in summary["history"]]
    assert steps == sorted(set(steps)) and 3 in steps and 4 in steps, summary["history"]


def test_a_bad_annotation_stops_the_run_before_its_first_step(data: Path, tmp_path: Path) -> None:
    import shutil

    custom = tmp_path / "data"
    shutil.copytree(data, custom)
    keypoints = custom / "annotations" / "person_keypoints_train.json"
    dataset = json.loads(keypoints.read_text())
    bad = dataset["annotations"][0]
    bad["keypoints"] = bad["keypoints"][:50]
    keypoints.write_text(json.dumps(dataset))
    where = "instances_train.json \\+ person_keypoints_train.json"
    message = rf"annotation {bad['id']} \(image {bad['image_id']}\) in {where}: keypoints should be 51"
    with pytest.raises(TrainError, match=message):
        run_train(*base_args(custom, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_stops_the_run_with_a_checkpoint_and_one_line(
    data: Path, tmp_path: Path, workers: int
) -> None:
    """An empty image file met mid-run (in a DataLoader worker or not): one line naming the image, exit 2,
    and the steps done so far in a checkpoint that --resume continues from once the file is fixed."""
    import shutil

    custom = tmp_path / "data"
    shutil.copytree(data, custom)
    images = sorted((custom / "images" / "train").iterdir())
    good = images[5].read_bytes()
    images[5].write_bytes(b"")
    out = tmp_path / "run"
    argv = [*base_args(custom, out, "schedule.max_steps=9", f"data.workers={workers}")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mcn_training.train", *argv], capture_output=True, text=True, env=env,
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "image id" in errors[0] and images[5].name in errors[0] and "cannot read image" in errors[0]
    saved = train.load_checkpoint(out / "checkpoint.pt")
    assert 0 <= saved["state"]["global_step"] < 9
    images[5].write_bytes(good)
    resumed = run_train("--out", str(out), "--resume")
    assert resumed["global_step"] == 9


def test_no_model_class_among_the_categories_stops_the_run_at_its_start(data: Path, tmp_path: Path) -> None:
    """Class names that differ in spelling ("Person" for "person"): nothing would be learnt or scored."""
    import shutil

    custom = tmp_path / "data"
    shutil.copytree(data, custom)
    for instances in custom.glob("annotations/instances_*.json"):
        dataset = json.loads(instances.read_text())
        for category in dataset["categories"]:
            category["name"] = category["name"].title()
        instances.write_text(json.dumps(dataset))
    with pytest.raises(
        TrainError, match=r"none of the model's 80 detection classes .* check the class names"
    ):
        run_train(*base_args(custom, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_one_line_keeps_the_original_error_of_a_dataloader_worker() -> None:
    from mcn_training.errors import DataError, one_line

    worker = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "data.py", line 130, in __getitem__\n    raise DataError(...)\n'
        "mcn_training.errors.DataError: instances.json, image id 7 (x.jpg): ValueError: bad: size 3\n"
    )
    assert one_line(worker) == "instances.json, image id 7 (x.jpg): ValueError: bad: size 3"
    assert one_line(TrainError("two\nlines")) == "two lines"


def test_evaluate_cli_refuses_bad_input_in_one_line(data: Path, tmp_path: Path) -> None:
    """A device that is not one, a workers count below 0, an .md --out (its JSON would be overwritten by
    the table), an unreadable image: one line each, exit 2, no traceback."""
    import shutil

    out = tmp_path / "run"
    run_train(*base_args(data, out, "schedule.max_steps=1", "eval.at_end=false"))
    weights = export_cli.main(export_cli.get_args_parser().parse_args([str(out / "checkpoint.pt")]))
    custom = tmp_path / "data"
    shutil.copytree(data, custom)
    broken = sorted((custom / "images" / "val").iterdir())[1]
    broken.write_bytes(b"")
    base = [sys.executable, "-m", "mcn_training.evaluate", "--weights", str(weights), "--split", "val"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cases = [
        (["--data", str(data), "--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["--data", str(data), "--workers", "-1"], "argument --workers: -1 must be at least 0"),
        (["--data", str(data), "--batch-size", "0"], "argument --batch-size: 0 must be at least 1"),
        (["--data", str(data), "--out", str(tmp_path / "r.md")], "name the JSON report"),
        (["--data", str(custom), "--workers", "1"], f"{broken.name}): FileNotFoundError: cannot read image"),
    ]
    for arguments, expected in cases:
        done = subprocess.run(
            [*base, *arguments], capture_output=True, text=True, env=env, timeout=300, check=False
        )
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(errors) == 1 and expected in errors[0], done.stderr
    assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), torch.bfloat16), ((7, 5), torch.float16)])
def test_amp_bf16_falls_back_to_fp16_where_the_gpu_has_no_native_bf16(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: torch.dtype
) -> None:
    """The GPU's compute capability decides (a T4, 7.5, emulates bf16: torch's is_bf16_supported() counts
    that as support); only the capability query is given here, no GPU being lent."""
    from mcn_training.builders import resolve_amp

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_amp("bf16", torch.device("cuda", 0)) == expected
    assert resolve_amp("fp16", torch.device("cuda", 0)) == torch.float16
    assert resolve_amp("off", torch.device("cuda", 0)) is None


def test_a_failing_final_evaluation_keeps_the_last_step_and_resume_only_evaluates(
    data: Path, tmp_path: Path
) -> None:
    """max_steps ends the run mid-epoch with no checkpoint due: an unreadable validation image in the final
    evaluation still leaves the last step's checkpoint and last weights; the resumed run (the image
    repaired) trains nothing and makes that evaluation."""
    import shutil

    custom = tmp_path / "data"
    shutil.copytree(data, custom)
    broken = sorted((custom / "images" / "val").iterdir())[1]
    good = broken.read_bytes()
    broken.write_bytes(b"")
    out = tmp_path / "run"
    with pytest.raises(TrainError, match=rf"{broken.name}.*cannot read image"):
        run_train(*base_args(custom, out, "schedule.max_steps=2"))
    state = train.load_checkpoint(out / "checkpoint.pt")["state"]
    assert state["global_step"] == 2 and state["history"] == []
    assert load_weights(out / "last.safetensors")[2]["global_step"] == 2

    broken.write_bytes(good)
    resumed = run_train("--out", str(out), "--resume")
    assert resumed["global_step"] == 2 and [e["step"] for e in resumed["losses"]] == [1, 2]
    assert [e["step"] for e in resumed["history"]] == [2] and resumed["last_metrics"]["bbox_AP"] is not None
    assert train.load_checkpoint(out / "checkpoint.pt")["state"]["last_eval_step"] == 2


def test_a_failing_epoch_end_evaluation_saves_the_epochs_last_step_and_resume_evaluates_it(
    data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    epoch_end_reference: dict[str, Any],
) -> None:
    """An evaluation that fails on what no load check foresaw (the load checks now refuse every ground truth
    that made COCOeval raise here, so the scoring itself raises in this test) at an epoch's end, before that
    epoch's checkpoint: the epoch's last step is saved without the evaluation, one error line says so, the
    error is raised; once the cause is gone, --resume makes that evaluation first and trains on as an
    uninterrupted run does."""
    from mcn_training import training_run

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("COCOeval failed")

    out = tmp_path / "run"
    log = logging.getLogger("mcn_training")  # its own console handler, not propagated: listen on it
    log.addHandler(caplog.handler)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(training_run, "evaluate_model", failing)
            with pytest.raises(RuntimeError, match="COCOeval failed"):
                run_train(*base_args(data, out, *EPOCH_END_EVALUATION))
    finally:
        log.removeHandler(caplog.handler)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["evaluation of global step 3 failed: checkpoint saved; fix the cause, then --resume"]
    state = train.load_checkpoint(out / "checkpoint.pt")["state"]
    assert (state["global_step"], state["epoch"], state["step_in_epoch"], state["history"]) == (3, 1, 0, [])

    resumed = run_train("--out", str(out), "--resume")
    assert resumed["global_step"] == 4 and [e["step"] for e in resumed["history"]] == [3]
    straight = epoch_end_reference
    assert [e["metrics"] for e in resumed["history"]] == [e["metrics"] for e in straight["history"]]
    assert resumed["state_digest"] == straight["state_digest"]


@pytest.mark.parametrize("during", ["evaluate", "export"])
def test_a_signal_at_the_final_evaluation_stops_after_the_checkpoint(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    """SIGTERM while the final evaluation runs, or while the checkpoint and last weights before it are
    written: the evaluation is abandoned or not begun, the command exits 143, the last step is in the
    checkpoint and the last weights; --resume only evaluates."""

    def killed(signum: int, frame: Any) -> None:  # the default action: the process dies, nothing saved
        raise KilledError

    real = getattr(train.Trainer, during)

    def signal_then_call(self: train.Trainer, *args: Any) -> Any:
        signal.raise_signal(signal.SIGTERM)
        return real(self, *args)

    out = tmp_path / "run"
    monkeypatch.setattr(train.Trainer, during, signal_then_call)
    monkeypatch.setattr(sys, "argv", ["mcn_training.train", *base_args(data, out, "schedule.max_steps=2")])
    previous = signal.signal(signal.SIGTERM, killed)
    try:
        with pytest.raises(SystemExit) as stopped:
            train.main()
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert stopped.value.code == 128 + signal.SIGTERM
    state = train.load_checkpoint(out / "checkpoint.pt")["state"]
    assert state["global_step"] == 2 and state["history"] == []
    assert load_weights(out / "last.safetensors")[2]["global_step"] == 2

    resumed = run_train("--out", str(out), "--resume")
    assert resumed["global_step"] == 2 and not resumed["interrupted"]
    assert [e["step"] for e in resumed["losses"]] == [1, 2] and [e["step"] for e in resumed["history"]] == [2]


EPOCH_END_EVALUATION = ["schedule.max_steps=4", "eval.every_epochs=1", "eval.at_end=false"]


@pytest.fixture(scope="module")
def epoch_end_reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted 4-step run evaluated at its first epoch's end (step 3) only."""
    with parameters_recorded():
        summary = run_train(*base_args(data, tmp_path_factory.mktemp("straight"), *EPOCH_END_EVALUATION))
    assert [e["step"] for e in summary["history"]] == [3]
    return summary


@pytest.mark.slow
@pytest.mark.usefixtures("params_recorded")
@pytest.mark.parametrize("signalled", ["this process", "another rank"])
def test_a_signal_on_an_epochs_last_step_checkpoints_before_its_evaluation(
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    epoch_end_reference: dict[str, Any],
    signalled: str,
) -> None:
    """SIGTERM during step 3 (the epoch's last), here or (as under torchrun) on another rank only, whose
    evaluation cannot be abandoned: no epoch-end evaluation before the checkpoint (on COCO it can outlast
    a scheduler's grace period); the resumed run makes it first, so the run evaluates what an uninterrupted
    one does, with the same result."""
    from mcn_training import trainer

    real_step, real_evaluate = train.Trainer.train_step, train.Trainer.evaluate
    real_flags = trainer.all_reduce_stop_flags
    evaluated: list[int] = []

    def step_then_signal(self: train.Trainer, batch: Any) -> Any:
        losses = real_step(self, batch)
        if self.state.global_step == 2:  # incremented after this call: the 3rd step
            signal.raise_signal(signal.SIGTERM)
        return losses

    reductions: list[int] = []

    def flags_with_another_rank_signalled_in_step_3(*args: Any) -> tuple[float, bool, bool]:
        reductions.append(len(reductions) + 1)  # one per step
        loss, here, out_of_time = real_flags(*args)
        return loss, here or reductions[-1] == 3, out_of_time

    def recording_evaluate(self: train.Trainer) -> Any:
        evaluated.append(self.state.global_step)
        return real_evaluate(self)

    if signalled == "this process":
        monkeypatch.setattr(train.Trainer, "train_step", step_then_signal)
    else:
        monkeypatch.setattr(trainer, "all_reduce_stop_flags", flags_with_another_rank_signalled_in_step_3)
    monkeypatch.setattr(train.Trainer, "evaluate", recording_evaluate)
    out = tmp_path / "run"
    first = run_train(*base_args(data, out, *EPOCH_END_EVALUATION))
    assert first["interrupted"] and first["global_step"] == 3 and evaluated == []
    assert first["stop_signal"] == signal.SIGTERM
    state = train.load_checkpoint(out / "checkpoint.pt")["state"]
    assert (state["epoch"], state["step_in_epoch"], state["history"]) == (1, 0, [])

    monkeypatch.setattr(train.Trainer, "train_step", real_step)
    monkeypatch.setattr(trainer, "all_reduce_stop_flags", real_flags)
    resumed = run_train("--out", str(out), "--resume")
    assert evaluated == [3] and resumed["global_step"] == 4
    straight = epoch_end_reference
    assert [(e["step"], e["metrics"]) for e in resumed["history"]] == [
        (e["step"], e["metrics"]) for e in straight["history"]
    ]
    assert resumed["state_digest"] == straight["state_digest"]
    assert first["params_start"] == straight["params_start"] != first["params_end"]
    assert resumed["params_start"] == first["params_end"] != resumed["params_end"]
    assert resumed["params_end"] == straight["params_end"]


def test_a_step_evaluation_a_signal_skipped_is_made_by_the_resumed_run(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during step 2 with eval.every_steps=2: the run stops without that evaluation, the resumed run
    makes it before step 3 (as an uninterrupted run would have)."""
    settings = ["schedule.max_steps=3", "eval.every_steps=2", "eval.at_end=false"]
    real_step = train.Trainer.train_step

    def step_then_signal(self: train.Trainer, batch: Any) -> Any:
        losses = real_step(self, batch)
        if self.state.global_step == 1:  # incremented after this call: the 2nd step
            signal.raise_signal(signal.SIGTERM)
        return losses

    monkeypatch.setattr(train.Trainer, "train_step", step_then_signal)
    out = tmp_path / "run"
    first = run_train(*base_args(data, out, *settings))
    monkeypatch.undo()
    assert first["interrupted"] and first["global_step"] == 2 and first["history"] == []
    resumed = run_train("--out", str(out), "--resume")
    assert resumed["global_step"] == 3 and [e["step"] for e in resumed["history"]] == [2]


def test_optimizer_overrides_on_resume_take_effect_with_a_warning(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--resume optim.lr=... optim.weight_decay=...: the optimizer uses them from the next step (and the
    checkpoint records what was used), one warning names them; optim.name=sgd starts a new optimizer."""
    out = tmp_path / "run"
    run_train(*base_args(data, out, "schedule.max_steps=2", "eval.at_end=false"))
    log = logging.getLogger("mcn_training")  # its own console handler, not propagated: listen on it
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="mcn_training"):
            resumed = run_train(
                "--out",
                str(out),
                "--resume",
                "schedule.max_steps=4",
                "optim.lr=1e-5",
                "optim.weight_decay=0.5",
            )
        warnings = [r.getMessage() for r in caplog.records if "other than the checkpoint's" in r.getMessage()]
        assert len(warnings) == 1 and "optim.lr 0.001 -> 1e-05, optim.weight_decay 0.0 -> 0.5" in warnings[0]
        # tiny_synthetic_test drops the rate x0.1 at step round(1.5 x 3) = 4.
        lrs = {e["step"]: e["lr"] for e in resumed["losses"]}
        assert lrs[3] == pytest.approx(1e-5) and lrs[4] == pytest.approx(1e-6)
        ckpt = train.load_checkpoint(out / "checkpoint.pt")
        group = ckpt["optimizer"]["param_groups"][0]
        assert (group["initial_lr"], group["weight_decay"]) == (1e-5, 0.5)
        assert ckpt["scheduler"]["base_lrs"] == [1e-5]

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mcn_training"):
            sgd = run_train("--out", str(out), "--resume", "schedule.max_steps=5", "optim.name=sgd")
    finally:
        log.removeHandler(caplog.handler)
    assert sgd["global_step"] == 5
    assert any("optim.name 'adam' -> 'sgd' (a new optimizer" in r.getMessage() for r in caplog.records)
    group = train.load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.9 and "betas" not in group


def test_schedule_loss_and_augmentation_changes_on_resume_are_named(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--resume with a longer schedule whose drops are fractions of it moves the learning rate at the
    restored step (1e-4 back up to 1e-3): the warning says so; loss weights and augmentation changed on
    resume are named too. Resuming with nothing changed but a later max_steps (drops in epochs) warns not."""
    out, fractions = tmp_path / "run", ("schedule.lr_drop_unit=fraction", "schedule.lr_drops=[0.5]")
    run_train(*base_args(data, out, "schedule.max_steps=4", "eval.at_end=false", *fractions))
    plain = tmp_path / "plain"
    run_train(*base_args(data, plain, "schedule.max_steps=2", "eval.at_end=false"))
    log = logging.getLogger("mcn_training")
    log.addHandler(caplog.handler)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "other than the checkpoint's" in r.getMessage()]

    try:
        with caplog.at_level(logging.WARNING, logger="mcn_training"):
            run_train("--out", str(plain), "--resume", "schedule.max_steps=3")
            assert warnings() == []
            resumed = run_train(
                "--out", str(out), "--resume", "schedule.max_steps=12", "loss.seg=0.5", "data.augment=null"
            )  # fmt: skip
    finally:
        log.removeHandler(caplog.handler)
    (warning,) = warnings()
    assert "learning rate at this step 0.0001 -> 0.001" in warning, warning
    assert "loss.seg 5.0 -> 0.5" in warning and "data.augment {" in warning and "} -> None" in warning, (
        warning
    )
    assert resumed["global_step"] == 12


def test_settings_a_checkpoint_predates_are_no_change() -> None:
    """A checkpoint's config written before a field existed read as "None -> default", a change."""
    from mcn_training.training_run import changed_training_settings

    saved = {"loss": {"seg": 5.0}, "data": {"augment": {"flip_prob": 0.5}}, "runtime": {"seed": 1}}
    current = {"loss": {"seg": 5.0, "new_term": 1.0}, "data": {"augment": {"flip_prob": 0.5, "new": 2}},
               "runtime": {"seed": 1}}  # fmt: skip
    assert changed_training_settings(saved, current) == {}
    current["runtime"]["seed"] = 2
    current["data"]["augment"] = None
    assert changed_training_settings(saved, current) == {
        "data.augment": ({"flip_prob": 0.5}, None), "runtime.seed": (1, 2)
    }  # fmt: skip


def test_tensorboard_keeps_the_checkpoint_steps_points_after_resume(data: Path, tmp_path: Path) -> None:
    """A resumed run hides what a killed run logged after its checkpoint, not the checkpoint step's own
    losses and evaluation (never logged again)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_train(*base_args(data, out, "schedule.max_steps=2"))
    run_train("--out", str(out), "--resume", "schedule.max_steps=4")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/bbox_AP")] == [2, 4]


def test_an_explicit_runtime_amp_wins_over_the_amp_flag(data: Path, tmp_path: Path) -> None:
    """--amp means bf16; runtime.amp=fp16 given as well is what the run uses, as --help says."""
    for extra, expected in ((["--amp"], "bf16"), (["--amp", "runtime.amp=fp16"], "fp16")):
        cfg, _, _ = train.prepare(train.parse_args([*base_args(data, tmp_path / "run"), *extra]))
        assert cfg.runtime.amp == expected, extra


def test_lr_drops_past_the_end_of_training_are_warned_about(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A drop at or after the last epoch never applies: allowed (short trial runs), with a warning."""
    config = load_train_config(CONFIG, ["schedule.epochs=70"])  # the tiny config's drop at 1.5 applies
    assert config.schedule.drops_past_end() == ()
    assert load_train_config(CONFIG, ["schedule.lr_drops=[90, 120]"]).schedule.drops_past_end() == (120.0,)
    fraction = ["schedule.lr_drop_unit=fraction", "schedule.lr_drops=[0.5, 1]"]
    assert load_train_config(CONFIG, fraction).schedule.drops_past_end() == (1.0,)
    log = logging.getLogger("mcn_training")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="mcn_training"):
            run_train(*base_args(data, tmp_path / "run", "schedule.max_steps=1", "eval.at_end=false"),
                      "schedule.epochs=1", "schedule.lr_drops=[0.5, 1, 2]")  # fmt: skip
    finally:
        log.removeHandler(caplog.handler)
    warned = [r.getMessage() for r in caplog.records if "lr_drops" in r.getMessage()]
    assert len(warned) == 1 and "1, 2 at or past the end of training (schedule.epochs 1)" in warned[0]


def test_loss_lines_are_logged_beside_the_progress_bar(
    data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """With the progress bar on (every shipped COCO config), each log_every_steps still logs a line with
    every loss term, for a job's log file: the bar alone showed the total and was wiped at epoch end."""
    run_train(
        *base_args(
            data, tmp_path / "run", "schedule.max_steps=2", "eval.at_end=false", "runtime.progress=true"
        )
    )
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "step 2 (epoch" in line]
    assert len(lines) == 1, err
    assert all(term in lines[0] for term in ("total", "center", "size", "seg")), lines[0]
