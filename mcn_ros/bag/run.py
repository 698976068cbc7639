"""``python -m mcn_ros.bag run``: start the node as users start it, replay the bag (lockstep, then at rate),
evaluate, report -- into one run folder, written beside its final place and renamed there at the end.

    <out>/node.log            everything the node printed
    <out>/lockstep/, <out>/rate/   replay folders (:mod:`mcn_ros.bag.replay`)
    <out>/report.json, report.md, latency.png, per_class.png, frames.png, replay.mp4
                          (:mod:`mcn_ros.bag.evaluate`, written by :mod:`mcn_ros.bag.report`)

The node is ``python -m mcn_ros.ros.node --ros-args --params-file <params> -r __node:=<name>
-r image:=<camera topic> -p weights:=<weights> -p autostart:=true [-p k:=v ...]`` in its own process; the
player (:mod:`mcn_ros.ros.player`) talks to it over DDS in the ROS domain of the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import CameraBag, content_hash, read_camera_bag, staged_output
from mcn_ros.bag.ground_truth import GroundTruth, read_ground_truth, sidecar_path
from mcn_ros.bag.pacing import process_state
from mcn_ros.bag.replay import input_info, record_phase
from mcn_ros.ros.fastdds import use_shipped_profile

if TYPE_CHECKING:
    from mcn_ros.bag.evaluate import Evaluation

REPO = Path(__file__).resolve().parents[2]
#: Lines of the node's log that mean it will never answer.
FATAL_LOG = ("configure failed:", "activate failed:")


class UnusableWeightsError(BagError):
    """The weights file cannot be used (found before the node says so)."""


def default_params_file() -> Path:
    """config/mcn.yaml of this checkout, else of the installed package (ament index)."""
    candidates = [REPO / "config" / "mcn.yaml"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "mcn_ros" / "config" / "mcn.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BagError("no config/mcn.yaml found (checkout or ament index); pass --params-file")


def camera_remap(camera: CameraBag) -> tuple[str, str, list[str]]:
    """(the node's ``image`` topic, the topic to publish on, extra node parameters) for a camera topic."""
    if not camera.compressed:
        return camera.topic, camera.topic, []
    base = camera.topic[: -len("/compressed")] if camera.topic.endswith("/compressed") else camera.topic
    return base, base + "/compressed", ["image_transport:=compressed"]


#: rclpy's own node parameters, which ``--param`` may set too.
RCLPY_PARAMETERS = ("use_sim_time", "start_type_description_service")


def parse_params(items: Sequence[str]) -> list[str]:
    """``name=value`` (or ROS's ``name:=value``) -> ``name:=value``; a name the node does not have is refused
    here (the node would only warn in its log, and the run go on without it)."""
    from mcn_ros.ros.parameters import BY_NAME, REMOVED, unknown_names

    out = []
    for item in items:
        name, sep, value = item.partition(":=") if ":=" in item else item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BagError(f"node parameter {item!r}: expected NAME=VALUE (e.g. score_threshold=0.1)")
        if unknown_names([name], [*BY_NAME, *RCLPY_PARAMETERS]):
            hint = REMOVED.get(name, "see config/mcn.yaml")
            raise BagError(f"node parameter {name!r}: the node has no such parameter ({hint})")
        out.append(f"{name}:={value.strip()}")
    return out


def node_command(
    weights: Path, node: str, image_topic: str, params_file: Path, params: Sequence[str]
) -> list[str]:
    namespace, _, name = node.rpartition("/")
    command = [sys.executable, "-m", "mcn_ros.ros.node", "--ros-args", "--params-file", str(params_file)]
    command += ["-r", f"__node:={name}", "-r", f"image:={image_topic}"]
    if namespace:
        command += ["-r", f"__ns:={namespace}"]
    command += ["-p", f"weights:={weights.resolve()}", "-p", "autostart:=true"]
    for param in params:
        command += ["-p", param]
    return command


def exit_status(code: int) -> str:
    """A process's return code in words: ``exit status 1``, ``killed by SIGKILL (signal 9)``."""
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    return f"killed by {name} (signal {-code})"


class NodeProcess:
    """The node in its own process, its output in a log file; ``problem()`` says why it will not answer.

    ``phase`` (when, in the run: ``during start-up``, ``during the rate replay``...) is named when the node
    exits.
    """

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self.phase = "during start-up"
        #: The node's exit status when it ended by itself (not stopped by :meth:`stop`), else None.
        self.exited_by_itself: int | None = None
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=os.environ.copy()
        )
        self._checked = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """The node's return code once it has exited, else None. A process just killed shows as a zombie
        while its other threads end, not yet reapable: its code is waited for then (moments)."""
        code = self.process.poll()
        if code is None and process_state(self.pid) == "Z":
            try:
                code = self.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                return None
        return code

    def _log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return []

    def last_error(self, fallback: bool = True) -> str | None:
        """The node's last error or warning line (also an exception's last line); else, with ``fallback``,
        its last line."""
        lines = [line.strip() for line in self._log_lines() if line.strip()]
        errors = [x for x in lines if "[ERROR]" in x or "[WARN]" in x or "Error" in x.split(":")[0]]
        if errors:
            return errors[-1]
        return (lines or ["(nothing)"])[-1] if fallback else None

    def problem(self, force: bool = False) -> str | None:
        """One line saying why the node will never answer: it exited, or logged a failed transition.

        Checked at most twice a second unless ``force``.
        """
        now = time.monotonic()
        if not force and now - self._checked < 0.5:
            return None
        self._checked = now
        code = self.exit_code()
        if code is not None:
            return self.exited_problem(code)
        for line in self._log_lines():
            if any(marker in line for marker in FATAL_LOG):
                return f"the node failed to start: {line.strip()}"
        return None

    def exited_problem(self, code: int) -> str:
        """One line: the node exited (when, how), with its last error, else its log's last line."""
        warning = self.last_error(fallback=False)
        said = f"its last error: {warning}" if warning else f"its log's last line: {self.last_error()}"
        return f"the node process exited {self.phase} ({exit_status(code)}); {said}"

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """Stop the node (SIGINT, then SIGKILL after ``timeout_s``); its return code. A node that had
        already exited is noted in :attr:`exited_by_itself`."""
        code = self.exit_code()
        if code is not None:
            self.exited_by_itself = code
        else:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def load_inputs(
    bag: str | Path, topic: str | None, ground_truth: str | Path | None
) -> tuple[CameraBag, GroundTruth | None, str | None]:
    """The camera frames, the ground truth (sidecar or given; None with the reason when there is none)."""
    camera = read_camera_bag(bag, topic)
    if ground_truth is None and not sidecar_path(bag).is_file():
        return camera, None, f"the bag has no {sidecar_path(bag).name}: accuracy not evaluated"
    gt = read_ground_truth(ground_truth if ground_truth is not None else bag)
    gt.check_matches(camera)
    return camera, gt, None


def run(
    bag: str | Path,
    weights: str | Path,
    out: str | Path,
    *,
    topic: str | None = None,
    ground_truth: str | Path | None = None,
    paces: Sequence[str] = ("lockstep", "rate"),
    rate_factor: float = 1.0,
    node: str = "/mcn_node",
    outputs: Sequence[str] = ("detections", "poses", "segmentation"),
    params_file: str | Path | None = None,
    params: Sequence[str] = (),
    timeout_s: float = 10.0,
    startup_timeout_s: float = 90.0,
    direct: bool = True,
    overwrite: bool = False,
    finish: Callable[[Path, Evaluation], None] | None = None,
    log: Callable[[str], None] = print,
) -> Evaluation:
    """Node + replays + evaluation into ``out``; returns the evaluation (timing only without ground truth).

    ``finish(staged_folder, evaluation)`` runs last inside the staged folder (it writes the report files).
    """
    weights = Path(weights)
    if not weights.is_file():
        raise BagError(f"weights file {weights} does not exist")
    node = node if node.startswith("/") else "/" + node
    camera, gt, no_gt = load_inputs(bag, topic, ground_truth)
    image_topic, publish_topic, extra = camera_remap(camera)
    params_path = Path(params_file) if params_file is not None else default_params_file()
    command = node_command(weights, node, image_topic, params_path, [*extra, *parse_params(params)])
    added = use_shipped_profile()  # before the player's participant; the node inherits it
    with staged_output(out, overwrite, keep_failed=True) as staged:
        staged.mkdir()
        for name, path in added.items():
            log(f"[run] Fast DDS profile for camera-sized frames: {name}={path}")
        log(f"[run] starting the node: {' '.join(command[1:])}")
        process = NodeProcess(command, staged / "node.log")
        try:
            # What takes seconds here (torch, rclpy, hashing the bag) runs while the node starts.
            from mcn_ros.bag.evaluate import evaluate_run
            from mcn_ros.model.weights import WeightsError, read_metadata
            from mcn_ros.ros.player import Player  # the only rclpy import of the run

            try:
                read_metadata(weights)
            except WeightsError as error:
                raise UnusableWeightsError(f"weights: {error}") from error
            source = input_info(camera, content_hash(camera.path), gt)
            with Player(
                node,
                publish_topic,
                camera.msgtype,
                outputs,
                startup_timeout_s=startup_timeout_s,
                abort_check=process.problem,
            ) as player:
                stamps = {f.stamp_ns for f in camera.frames}
                connection = player.connect(camera.frames[0], stamps)
                connection["command"] = command
                log(
                    f"[run] node ready in {connection['connect_s']} s; "
                    f"outputs {', '.join(player.topics.values())}"
                )
                for pace in paces:
                    log(
                        f"[run] {pace} replay of {len(camera.frames)} frames"
                        + (f" at x{rate_factor:g}" if pace == "rate" else "")
                    )
                    process.phase = f"during the {pace} replay"
                    record_phase(
                        player, camera, gt, pace, staged / pace, connection=connection, source=source,
                        rate_factor=rate_factor, timeout_s=timeout_s, node_pid=process.pid,
                    )  # fmt: skip
                    # A node that died after its last check (answering the last frames, or not) fails the
                    # run: its replay is not a measurement of a working node.
                    if problem := process.problem(force=True):
                        raise BagError(problem)
                process.phase = "after the replays"
        except UnusableWeightsError:
            raise
        except BagError as error:
            problem = process.problem(force=True)
            if problem is None and (warning := process.last_error(fallback=False)):
                problem = f"{error} (the node's log: {warning})"
            raise BagError(problem or str(error)) from error
        finally:
            code = process.stop()
        if process.exited_by_itself is not None:  # after the last check, before stop(): not a working node
            raise BagError(process.exited_problem(process.exited_by_itself))
        if code:
            log(f"[run] note: the node, stopped (SIGINT) after the replays, ended with {exit_status(code)}")
        if no_gt:
            log(f"[run] {no_gt}")
        log("[run] evaluating")
        evaluation = evaluate_run(staged, ground_truth=ground_truth, weights=weights, direct=direct)
        if finish is not None:
            finish(staged, evaluation)
    return evaluation
