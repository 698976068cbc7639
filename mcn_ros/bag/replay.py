"""A replay folder: what one playback of a camera bag through the node leaves behind.

    <folder>/outputs/        rosbag2 (mcap): the node's outputs as received, with the input header stamps,
                             plus its latched ~/label_info, ~/segmentation/label_info and ~/pose_info
    <folder>/frames.jsonl    one line per frame (:mod:`mcn_ros.bag.pacing`); a failed replay's: one per frame
                             sent until it failed (a frame never sent has no line)
    <folder>/replay.json     pace, input bag (path, sha256, topic), node (name, output topics, parameters),
                             node process CPU / memory, durations, the command

This module writes and reads that layout; it drives the player it is given but does not import rclpy.
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import CameraBag, write_text_atomic
from mcn_ros.bag.ground_truth import GroundTruth
from mcn_ros.bag.pacing import FrameRecord, read_records, write_records

OUTPUT_BAG = "outputs"
FRAMES = "frames.jsonl"
REPLAY_JSON = "replay.json"
PHASES = ("lockstep", "rate")


def command_line() -> str:
    """The command that runs now, as a user would type it again."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        module = ".".join(Path(argv[0]).resolve().parent.parts[-2:])
        argv = ["python", "-m", module, *argv[1:]]
    return shlex.join(argv)


def input_info(camera: CameraBag, sha256: str, ground_truth: GroundTruth | None) -> dict[str, Any]:
    return {
        "bag": str(camera.path.resolve()),
        "sha256": sha256,
        "topic": camera.topic,
        "msgtype": camera.msgtype,
        "frame_id": camera.frame_id,
        "frames": len(camera.frames),
        "rate_hz": camera.rate_hz,
        "storage": camera.storage,
        "ground_truth": str(ground_truth.path) if ground_truth is not None and ground_truth.path else None,
    }


def record_phase(
    player: Any,
    camera: CameraBag,
    ground_truth: GroundTruth | None,
    pace: str,
    folder: Path,
    *,
    connection: dict[str, Any],
    source: dict[str, Any],
    rate_factor: float = 1.0,
    timeout_s: float = 10.0,
    node_pid: int | None = None,
) -> dict[str, Any]:
    """Play the bag once through ``player`` (a connected :class:`~mcn_ros.ros.player.Player`) into
    ``folder`` (created here; it must not exist)."""
    folder.mkdir(parents=True, exist_ok=False)
    image_ids = [
        ground_truth.image_of_stamp.get(f.stamp_ns) if ground_truth is not None else None
        for f in camera.frames
    ]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        result = player.play(
            camera.frames,
            image_ids,
            pace,
            folder / OUTPUT_BAG,
            rate_factor=rate_factor,
            timeout_s=timeout_s,
            node_pid=node_pid,
        )
    except BaseException:
        if player.records:  # the frames sent until then, beside the outputs received (a failed run keeps)
            write_records(folder / FRAMES, player.records)
        raise
    write_records(folder / FRAMES, result.records)
    info = {
        "format": "mcn_ros.replay",
        "version": 1,
        "started": started,
        "command": command_line(),
        "input": source,
        "node": connection,
        "output_bag": OUTPUT_BAG,
        "frames_file": FRAMES,
        **result.summary,
    }
    write_text_atomic(folder / REPLAY_JSON, json.dumps(info, indent=1))
    answered = sum(r.answered() for r in result.records)
    if pace == "rate" and answered == 0:
        raise BagError(
            f"rate replay: node {connection.get('node')} answered none of {len(result.records)} frames"
        )
    return info


def find_replays(path: str | Path) -> dict[str, Path]:
    """The replay folders in ``path``: ``path`` itself, or its ``lockstep/`` and ``rate/`` subfolders."""
    path = Path(path)
    if (path / REPLAY_JSON).is_file():
        return {str(read_replay_info(path)["pace"]): path}
    found = {phase: path / phase for phase in PHASES if (path / phase / REPLAY_JSON).is_file()}
    if not found:
        raise BagError(f"{path} holds no replay ({REPLAY_JSON} in it or in lockstep/, rate/)")
    return found


def read_replay_info(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / REPLAY_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BagError(f"cannot read {folder / REPLAY_JSON}: {error}") from error
    if not isinstance(data, dict) or data.get("format") != "mcn_ros.replay":
        raise BagError(f"{folder / REPLAY_JSON} is not a replay description")
    return data


def read_phase_records(folder: Path) -> list[FrameRecord]:
    try:
        return read_records(folder / FRAMES)
    except (OSError, ValueError, KeyError) as error:
        raise BagError(f"cannot read {folder / FRAMES}: {error}") from error
