"""The command line of ``python -m mcn_training.train``: the parser, and the command that reproduces a run."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command-line interface of ``python -m mcn_training.train``."""
    parser = argparse.ArgumentParser(
        prog="python -m mcn_training.train",
        description="Train a Multitask-CenterNet (detection, human pose, segmentation) on COCO-format data.",
        add_help=add_help,
        epilog="Overrides: dotted keys of the training config with YAML values, e.g. optim.lr=1e-3 "
        "schedule.max_steps=200 data.workers=2 model_overrides.input_size=[64,64].",
    )
    parser.add_argument("--config", type=Path, help="training config (config/train/*.yaml)")
    parser.add_argument("--data", type=Path, help="dataset directory (overrides data.root)")
    parser.add_argument("--out", type=Path, help="run directory (overrides out_dir; default runs/<name>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="continue from CKPT, or without a value from <out>/checkpoint.pt; without --config the "
        "checkpoint's own config is used",
    )
    parser.add_argument(
        "--test-only",
        action="store_true",
        help="only evaluate (the --resume checkpoint, or init_weights that fit the model)",
    )
    parser.add_argument(
        "--amp",
        action="store_const",
        const="bf16",
        help="mixed precision: bf16 autocast (fp16 + GradScaler on GPUs without bf16); "
        "runtime.amp=fp16 forces fp16",
    )
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides runtime.device)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line; options and ``key=value`` overrides may come in any order."""
    return get_args_parser().parse_intermixed_args(argv)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args`` (recorded in checkpoints and weights provenance)."""
    parts = ["python", "-m", "mcn_training.train"]
    for flag in ("config", "data", "out"):
        if getattr(args, flag, None) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    if getattr(args, "resume", None) is not None:
        parts += ["--resume"] + ([] if args.resume == "auto" else [str(args.resume)])
    if getattr(args, "test_only", False):
        parts.append("--test-only")
    if getattr(args, "amp", None):
        parts.append("--amp")
    if getattr(args, "device", None):
        parts += ["--device", args.device]
    parts += list(getattr(args, "overrides", None) or [])
    return shlex.join(parts)
