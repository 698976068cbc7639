"""Command line: ``python -m mcn_ros.bag {make,replay,evaluate,run} ...`` (``--help`` on each).

Exit status: 0 done; 1 a figure regressed against ``--baseline``; 2 an error, printed as one line that
names the problem (a bag, a topic, a ground truth, a node, a weights file).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mcn_ros.bag import BagError
from mcn_ros.cli_types import integer_at_least

PROG = "python -m mcn_ros.bag"


def _number(text: str, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        least = "of at least" if zero else "above"
        raise argparse.ArgumentTypeError(f"{text} must be a finite number {least} 0")
    return value


def _positive(text: str) -> float:
    """An argparse type: a finite number above 0 (a rate, a factor, seconds)."""
    return _number(text, zero=False)


def _tolerance(text: str) -> float:
    """An argparse type: a finite number of at least 0."""
    return _number(text, zero=True)


def _add_baseline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baseline", type=Path, help="a previous report.json: exit 1 naming the figures that regressed"
    )
    parser.add_argument(
        "--ap-tolerance",
        type=_tolerance,
        default=0.01,
        help="allowed accuracy drop, as a fraction (default 0.01 = 1 point)",
    )
    parser.add_argument(
        "--latency-tolerance",
        type=_tolerance,
        default=0.2,
        help="allowed rise of the p95 latency, as a fraction of the baseline's (default 0.2 = 20%%)",
    )


class _OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every other error of this command line: the usage
    block argparse prints first is left out, ``--help`` points to it (subcommands' parsers are of this class
    too)."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def get_args_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog=PROG, description="Rosbag replay evaluation of the mcn_ros node.")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make", help="COCO-format images -> a camera bag with its ground truth")
    source = make.add_argument_group("images (a COCO root + split, or explicit files)")
    source.add_argument("--coco", type=Path, help="COCO-layout root (images/<split>/, annotations/)")
    source.add_argument("--split", default="val", help="split name with --coco (default val)")
    source.add_argument("--images", type=Path, help="image folder")
    source.add_argument("--annotations", type=Path, help="COCO instances JSON")
    source.add_argument(
        "--keypoints",
        type=Path,
        help="COCO person keypoints JSON (optional; with --coco, in place of its own)",
    )
    make.add_argument("--out", type=Path, required=True, help="bag folder to write (must not exist)")
    make.add_argument("--topic", help="camera topic (default /camera/image_raw[/compressed])")
    make.add_argument("--frame-id", default="camera", help="header.frame_id (default camera)")
    make.add_argument("--rate", type=_positive, default=10.0, help="frames per second (default 10)")
    make.add_argument("--compressed", action="store_true", help="sensor_msgs/CompressedImage (JPEG)")
    make.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    make.add_argument("--max-images", type=integer_at_least(1), help="first N images (by id) only")
    make.add_argument(
        "--start",
        type=_tolerance,
        default=1_700_000_000.0,
        help="first header stamp, s (fixed default 1700000000); the last frame's must be before 2^31 s "
        "(a header's sec is an int32)",
    )
    make.add_argument("--overwrite", action="store_true", help="replace --out if it exists (at the end)")

    replay = commands.add_parser("replay", help="play a bag into a running node, record its outputs")
    replay.add_argument("--bag", type=Path, required=True, help="input bag folder")
    replay.add_argument("--out", type=Path, required=True, help="replay folder to write")
    replay.add_argument("--pace", choices=("lockstep", "rate"), default="lockstep")
    replay.add_argument(
        "--rate-factor", type=_positive, default=1.0, help="rate mode: times the recorded rate"
    )
    replay.add_argument("--topic", help="camera topic in the bag (default: its only image topic)")
    replay.add_argument("--publish-topic", help="topic to publish on (default: the bag's topic)")
    replay.add_argument("--node", default="/mcn_node", help="the node's full name (default /mcn_node)")
    _add_outputs(replay)
    replay.add_argument(
        "--ground-truth", type=Path, help="ground truth (default: the bag's ground_truth.json)"
    )
    replay.add_argument("--node-pid", type=int, help="the node's process id: its CPU and memory get recorded")
    _add_common_timing(replay)
    replay.add_argument("--overwrite", action="store_true")

    evaluate = commands.add_parser(
        "evaluate", help="score replays: accuracy, latency, drops; write the report"
    )
    evaluate.add_argument(
        "path", nargs="?", type=Path, help="a run folder (lockstep/, rate/) or a replay folder"
    )
    evaluate.add_argument("--outputs", type=Path, help="an output bag recorded otherwise (ros2 bag record)")
    evaluate.add_argument("--ground-truth", type=Path, help="bag folder with ground_truth.json, or the file")
    evaluate.add_argument(
        "--weights", type=Path, help="weights (class names, direct run; default: the node's)"
    )
    evaluate.add_argument(
        "--outputs-under",
        metavar="NAMESPACE",
        help="only the outputs under this namespace: one camera of a several-camera node (/mcn_node/front) "
        "or one of several nodes in a recording",
    )
    evaluate.add_argument(
        "--no-direct",
        action="store_true",
        help="skip the model-runtime-alone figures and the video (an earlier report's are replaced)",
    )
    evaluate.add_argument("--report-dir", type=Path, help="where report.json/.md go (default: the folder)")
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a report whose figures or video this evaluation cannot make again (refused otherwise)",
    )
    _add_baseline(evaluate)

    run = commands.add_parser("run", help="start the node, replay (lockstep, rate), evaluate, report")
    run.add_argument("--bag", type=Path, required=True, help="input bag folder")
    run.add_argument("--weights", type=Path, required=True, help="weights file (.safetensors)")
    run.add_argument("--out", type=Path, required=True, help="run folder to write")
    run.add_argument("--pace", choices=("lockstep", "rate", "both"), default="both")
    run.add_argument("--rate-factor", type=_positive, default=1.0, help="rate mode: times the recorded rate")
    run.add_argument("--topic", help="camera topic in the bag (default: its only image topic)")
    run.add_argument("--ground-truth", type=Path, help="ground truth (default: the bag's ground_truth.json)")
    run.add_argument("--node", default="/mcn_node", help="name given to the node (default /mcn_node)")
    _add_outputs(run)
    run.add_argument("--params-file", type=Path, help="node parameters file (default config/mcn.yaml)")
    run.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a node parameter (repeatable)"
    )
    run.add_argument("--no-direct", action="store_true", help="skip the model-runtime-alone figures")
    _add_common_timing(run)
    _add_baseline(run)
    run.add_argument("--overwrite", action="store_true", help="replace --out if it exists (at the end)")
    return parser


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outputs",
        type=lambda text: [o.strip() for o in text.split(",") if o.strip()],
        default=["detections", "poses", "segmentation"],
        help="outputs to request (and so the tasks the node computes), comma-separated; default all three",
    )


def _add_common_timing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=_positive, default=10.0, help="seconds a frame may wait for its outputs"
    )
    parser.add_argument(
        "--startup-timeout",
        type=_positive,
        default=90.0,
        help="seconds to wait for the node to come up and answer",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except BagError as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; nothing was replaced", file=sys.stderr)
        return 130


def cmd_make(args: argparse.Namespace) -> int:
    from mcn_ros.bag.make_bag import CocoFiles, find_coco_split, make_bag

    if args.coco is not None:
        if args.images is not None or args.annotations is not None:
            raise BagError("give --coco ROOT [--split S] or --images DIR --annotations FILE, not both")
        files = find_coco_split(args.coco, args.split)
        if args.keypoints is not None:  # in place of the split's person_keypoints_<split>.json
            files = dataclasses.replace(files, keypoints=args.keypoints)
    elif args.images is not None and args.annotations is not None:
        files = CocoFiles(args.images, args.annotations, args.keypoints)
    else:
        raise BagError("give --coco ROOT [--split S], or --images DIR --annotations FILE")
    summary = make_bag(
        args.out, files, topic=args.topic, frame_id=args.frame_id, rate_hz=args.rate,
        compressed=args.compressed, storage=args.storage, start_s=args.start, max_images=args.max_images,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(
        f"wrote {summary['bag']}: {summary['frames']} frames of {summary['msgtype']} on {summary['topic']} "
        f"at {summary['rate_hz']:g} Hz ({summary['storage']}), ground_truth.json inside; "
        f"sha256 {summary['sha256'][:16]}"
    )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from mcn_ros.bag.bagio import content_hash, staged_output
    from mcn_ros.bag.replay import input_info, record_phase
    from mcn_ros.bag.run import load_inputs
    from mcn_ros.ros.fastdds import use_shipped_profile
    from mcn_ros.ros.player import Player

    use_shipped_profile()  # the player's frames over shared memory (the running node has its own setting)
    camera, gt, no_gt = load_inputs(args.bag, args.topic, args.ground_truth)
    if no_gt:
        print(f"note: {no_gt}")
    publish_topic = args.publish_topic or camera.topic
    source = input_info(camera, content_hash(camera.path), gt)
    with (
        staged_output(args.out, args.overwrite, keep_failed=True) as staged,
        Player(args.node, publish_topic, camera.msgtype, args.outputs, args.startup_timeout) as player,
    ):
        connection = player.connect(camera.frames[0], {f.stamp_ns for f in camera.frames})
        info = record_phase(
            player, camera, gt, args.pace, staged, connection=connection, source=source,
            rate_factor=args.rate_factor, timeout_s=args.timeout, node_pid=args.node_pid,
        )  # fmt: skip
    print(f"replayed {info['frames']} frames ({args.pace}) in {info['duration_s']} s -> {args.out}")
    return 0


def _finish_report(
    folder: Path, evaluation: Any, args: argparse.Namespace
) -> tuple[dict[str, Path], list[str]]:
    """Compare with ``--baseline`` (into the summary), then write the report files into ``folder``."""
    from mcn_ros.bag.evaluate import read_baseline, write
    from mcn_ros.bag.report import compare_to_baseline, not_compared

    regressions: list[str] = []
    if args.baseline is not None:
        baseline = read_baseline(args.baseline)
        regressions = compare_to_baseline(
            evaluation.summary, baseline, args.ap_tolerance, args.latency_tolerance
        )
        evaluation.summary["notes"].extend(not_compared(evaluation.summary, baseline))
        evaluation.summary["baseline"] = {
            "path": str(args.baseline),
            "ap_tolerance": args.ap_tolerance,
            "latency_tolerance": args.latency_tolerance,
            "regressions": regressions,
        }
    return write(folder, evaluation), regressions


def _print_summary(summary: dict[str, Any], files: dict[str, Path], regressions: list[str]) -> int:
    from mcn_ros.bag.evaluate import console_summary

    print(console_summary(summary))
    print()
    for name, path in files.items():
        print(f"{name:>10}: {path}")
    for note in summary.get("notes", []):
        print(f"note: {note}")
    if regressions:
        print("regressed against the baseline: " + "; ".join(regressions), file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mcn_ros.bag.evaluate import evaluate_run, would_lose

    if args.path is None and args.outputs is None:
        raise BagError("give a run / replay folder, or --outputs BAG --ground-truth GT")
    folder = args.report_dir or args.path
    if folder is None:
        raise BagError("--outputs needs --report-dir (where report.json goes)")
    evaluation = evaluate_run(
        args.path,
        outputs=args.outputs,
        ground_truth=args.ground_truth,
        weights=args.weights,
        direct=not args.no_direct,
        outputs_under=args.outputs_under,
    )
    lost = would_lose(folder, evaluation, direct=not args.no_direct)
    if lost and not args.overwrite:  # e.g. a run evaluated again where its bag and weights are not
        why = "; ".join(evaluation.summary.get("notes", [])) or "nothing here to make them from"
        raise BagError(
            f"{folder} holds a report with {', '.join(lost)}, which this evaluation cannot make again "
            f"({why}); nothing written: give what it needs, another --report-dir, or --overwrite"
        )
    files, regressions = _finish_report(folder, evaluation, args)
    return _print_summary(evaluation.summary, files, regressions)


def cmd_run(args: argparse.Namespace) -> int:
    from mcn_ros.bag.run import run

    paces = ("lockstep", "rate") if args.pace == "both" else (args.pace,)
    regressions: list[str] = []
    files: dict[str, Path] = {}

    def finish(staged: Path, evaluation: Any) -> None:
        written, found = _finish_report(staged, evaluation, args)
        files.update({name: args.out / path.relative_to(staged) for name, path in written.items()})
        regressions.extend(found)

    evaluation = run(
        args.bag, args.weights, args.out, topic=args.topic, ground_truth=args.ground_truth, paces=paces,
        rate_factor=args.rate_factor, node=args.node, outputs=args.outputs, params_file=args.params_file,
        params=args.param, timeout_s=args.timeout, startup_timeout_s=args.startup_timeout,
        direct=not args.no_direct, overwrite=args.overwrite, finish=finish,
    )  # fmt: skip
    return _print_summary(evaluation.summary, files, regressions)


COMMANDS = {"make": cmd_make, "replay": cmd_replay, "evaluate": cmd_evaluate, "run": cmd_run}

if __name__ == "__main__":
    sys.exit(main())
