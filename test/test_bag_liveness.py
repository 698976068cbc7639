"""A node that exits during a replay fails the run: exit status 2, one line naming the exit (its signal),
what the run wrote kept in ``<out>.failed-<pid>`` with the frames sent until then. A killed node used to
be scored as dropped frames (rate) or the run went on to evaluate (a node gone after its last frame)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from bagtools import camera_bag, main, synthetic_coco
from nodetools import make_weights

from mcn_ros.bag.pacing import process_state

NODE_PARAMS = ["--param", "device=cpu"]
FRAMES = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("liveness")
    coco = synthetic_coco(root / "coco", images=FRAMES, size=(64, 80))
    return {
        "bag": camera_bag(coco, root / "bag", rate_hz=10.0),
        "weights": make_weights(root / "weights.safetensors"),
    }


def _kill(pid: int) -> None:
    """SIGKILL, and wait until the process has exited (a zombie until `run` reaps it)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_state(pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.01)


def _kill_node_in(monkeypatch: pytest.MonkeyPatch, pace: str, after_s: float | None) -> list[int]:
    """During the ``pace`` replay, SIGKILL the node ``after_s`` seconds into it (None: once the player has
    its last frame's outputs). The node's pid is returned in the list."""
    from mcn_ros.ros.player import Player

    real_play = Player.play
    killed: list[int] = []

    def play(self: Player, frames: Any, image_ids: Any, paced: str, out_bag: Path, **options: Any) -> Any:
        pid = options["node_pid"]
        if paced != pace:
            return real_play(self, frames, image_ids, paced, out_bag, **options)
        killed.append(pid)
        if after_s is not None:
            threading.Timer(after_s, _kill, (pid,)).start()
            return real_play(self, frames, image_ids, paced, out_bag, **options)
        result = real_play(self, frames, image_ids, paced, out_bag, **options)
        _kill(pid)
        return result

    monkeypatch.setattr(Player, "play", play)
    return killed


def _failed_run(tmp_path: Path, code: int, err: str) -> tuple[str, Path]:
    """The one error line and the kept folder of a run that failed."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    assert not (tmp_path / "run").exists()
    (kept,) = (p for p in tmp_path.iterdir() if p.name.startswith("run.failed-"))
    assert lines[0].endswith(f"what it wrote before failing is in {kept}")
    assert (kept / "node.log").is_file()
    return lines[0], kept


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.usefixtures("ros")
def test_a_node_killed_during_the_rate_replay(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rate replay at 1 frame/s, the node killed 1.2 s in: an error naming the exit, not frames dropped; the
    replay stops there, and its frames.jsonl lists the frames sent (never one sent "at 0 s")."""
    killed = _kill_node_in(monkeypatch, "rate", after_s=1.2)
    started = time.monotonic()
    code, out, err = main(
        "run", "--bag", str(inputs["bag"]), "--weights", str(inputs["weights"]), "--out",
        str(tmp_path / "run"), "--pace", "rate", "--rate-factor", "0.1", "--timeout", "3", "--no-direct",
        *NODE_PARAMS,
    )  # fmt: skip
    assert killed and "[run] evaluating" not in out
    error, kept = _failed_run(tmp_path, code, err)
    assert "the node process exited during the rate replay (killed by SIGKILL (signal 9))" in error
    rows = _rows(kept / "rate" / "frames.jsonl")
    assert 1 <= len(rows) < FRAMES, rows  # frames 2 and 3 were due after the kill: never sent
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert all(r["send_s"] >= 0.05 for r in rows)
    assert time.monotonic() - started < 60


@pytest.mark.usefixtures("ros")
def test_a_node_gone_after_its_last_lockstep_frame(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every frame answered, then the node dies before the run stops it: still a failed run (it used to be
    evaluated, the kill unnoticed), the complete replay kept."""
    killed = _kill_node_in(monkeypatch, "lockstep", after_s=None)
    code, out, err = main(
        "run", "--bag", str(inputs["bag"]), "--weights", str(inputs["weights"]), "--out",
        str(tmp_path / "run"), "--pace", "lockstep", "--no-direct", *NODE_PARAMS,
    )  # fmt: skip
    assert killed and "[run] evaluating" not in out
    error, kept = _failed_run(tmp_path, code, err)
    assert "the node process exited during the lockstep replay (killed by SIGKILL (signal 9))" in error
    rows = _rows(kept / "lockstep" / "frames.jsonl")
    assert len(rows) == FRAMES and all(all(r["arrival_s"].values()) for r in rows)


def test_the_process_monitor_notices_an_exit_and_keeps_saying_so() -> None:
    """ProcessMonitor: a process that exits (a zombie first, then reaped) is `exited`, and its summary keeps
    the error beside the samples taken before (it was dropped once there were two samples)."""
    from mcn_ros.bag.pacing import ProcessMonitor

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        monitor = ProcessMonitor(child.pid, period_s=0.02).start()
        deadline = time.monotonic() + 10
        while len(monitor.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not monitor.exited
        _kill(child.pid)  # a zombie: this process has not waited for it
        while not monitor.exited and time.monotonic() < deadline:
            time.sleep(0.02)
        assert monitor.exited
        summary = monitor.stop()
        assert "exited" in summary["error"] and len(summary["samples"]) >= 3
    finally:
        child.kill()
        child.wait()
    gone = ProcessMonitor(child.pid).start()  # reaped: no /proc entry
    assert gone.exited and "exited" in gone.stop()["error"]


@pytest.mark.usefixtures("ros")
def test_replay_into_a_node_started_apart(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`replay --node-pid` into a node the user started: its process's CPU and memory are recorded, and a
    node that exits during the rate replay fails the replay with one line (the replay did not start it)."""
    from nodetools import start_node, stop_node

    process = start_node(
        "-p", f"weights:={inputs['weights']}", "-p", "autostart:=true", "-r", "image:=/camera/image_raw",
        name="apart_node",
    )  # fmt: skip
    try:
        code, _, err = main(
            "replay", "--bag", str(inputs["bag"]), "--out", str(tmp_path / "lockstep"), "--node",
            "/apart_node", "--node-pid", str(process.pid), "--pace", "lockstep",
        )  # fmt: skip
        assert code == 0, err
        info = json.loads((tmp_path / "lockstep" / "replay.json").read_text())
        recorded = info["node_process"]
        assert recorded["pid"] == process.pid and recorded["cpu_s"] > 0 and "error" not in recorded, recorded
        killed = _kill_node_in(monkeypatch, "rate", after_s=1.2)
        code, _, err = main(
            "replay", "--bag", str(inputs["bag"]), "--out", str(tmp_path / "rate"), "--node", "/apart_node",
            "--node-pid", str(process.pid), "--pace", "rate", "--rate-factor", "0.1", "--timeout", "3",
        )  # fmt: skip
        assert killed == [process.pid] and code == 2, err
        lines = err.strip().splitlines()
        assert (
            len(lines) == 1 and f"the node process (pid {process.pid}) exited during the rate replay" in err
        )
    finally:
        stop_node(process)
