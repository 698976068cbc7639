"""DDP on CPU: two gloo processes train, stay identical, and resume exactly.

Two processes (torch.multiprocessing spawn, torchrun's environment variables, a free MASTER_PORT per run)
each call ``mcn_training.train.main``: a straight 4-step run, then a 2-step run (stopped mid-epoch) resumed
to 4 steps. Both ranks must end with identical weights, and the resumed run with the straight run's; the
parameters (not only BatchNorm's running statistics, which change without learning) must have moved.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from traintools import PARAMS, fit_recording_parameters

from mcn_training import train
from mcn_training.synthetic import generate_dataset

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "train" / "tiny_synthetic_test.yaml"
WORLD_SIZE = 2
KEYS = ("global_step", "epoch", "state_digest", "rank", "world_size", "interrupted", "last_metrics")


def free_port() -> int:
    """A TCP port nobody listens on right now (each run gets its own rendezvous port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, ports: list[int], data: str, root: str) -> None:
    """One rank: the environment torchrun would set, then three runs through train.main, each recording
    the parameter_digest of its parameters as Trainer.fit starts and ends (this process only: spawned)."""
    train.Trainer.fit = fit_recording_parameters()  # type: ignore[method-assign]
    os.environ.update(
        MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE)
    )
    os.environ["HF_HUB_OFFLINE"] = "1"
    common = [
        "--data",
        data,
        "eval.every_epochs=0",
        "checkpoint.every_steps=0",
        "runtime.threads=1",
        "runtime.log_every_steps=1",
    ]
    runs = [
        ("straight", ["--config", str(CONFIG), "--out", f"{root}/straight", "schedule.max_steps=4"]),
        ("part1", ["--config", str(CONFIG), "--out", f"{root}/resumed", "schedule.max_steps=2"]),
        ("part2", ["--out", f"{root}/resumed", "--resume", "schedule.max_steps=4"]),
    ]
    for (tag, argv), port in zip(runs, ports, strict=True):
        os.environ["MASTER_PORT"] = str(port)
        summary = train.main(train.parse_args([*argv, *common]))
        result = {key: summary[key] for key in (*KEYS, *PARAMS)}
        Path(root, f"{tag}_rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_two_gloo_ranks_stay_identical_and_resume_exactly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, 12, seed=5, image_size=(64, 64), split="train", first_id=1)
    generate_dataset(data, 4, seed=5, image_size=(64, 64), split="val", first_id=100)
    ports = [free_port() for _ in range(3)]
    mp.spawn(_worker, args=(ports, str(data), str(tmp_path)), nprocs=WORLD_SIZE, join=True)

    def result(tag: str, rank: int) -> dict:
        return json.loads((tmp_path / f"{tag}_rank{rank}.json").read_text())

    for tag in ("straight", "part1", "part2"):
        r0, r1 = result(tag, 0), result(tag, 1)
        assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
        assert r0["state_digest"] == r1["state_digest"], f"{tag}: ranks ended with different weights"
        assert r0["global_step"] == r1["global_step"]
        assert [r0[k] for k in PARAMS] == [r1[k] for k in PARAMS], f"{tag}: ranks' parameters differ"
    # 12 images / (2 ranks x 2 per rank) = 3 steps per epoch: part1 stops mid-epoch.
    assert result("part1", 0)["global_step"] == 2 and result("part1", 0)["epoch"] == pytest.approx(
        2 / 3, abs=1e-3
    )
    assert result("part2", 0)["global_step"] == 4
    assert result("part2", 0)["state_digest"] == result("straight", 0)["state_digest"]
    # The parameters learned (moved in each part), part2 went on from part1's, and ended as the straight run.
    straight, part1, part2 = (result(tag, 0) for tag in ("straight", "part1", "part2"))
    assert straight["params_start"] == part1["params_start"] != part1["params_end"] == part2["params_start"]
    assert part2["params_end"] == straight["params_end"] != part1["params_end"]
    assert straight["params_end"] != straight["params_start"]
    # Metrics are gathered from both ranks' shards and identical everywhere.
    assert result("part2", 0)["last_metrics"] == result("part2", 1)["last_metrics"]
    assert result("part2", 0)["last_metrics"]["num_images"] == 4

    ckpt = train.load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and ckpt["state"]["global_step"] == 4
    assert all(not torch.isnan(v).any() for v in ckpt["model"].values() if v.is_floating_point())
