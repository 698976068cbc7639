"""Export a training checkpoint to a weights file for the node (safetensors + config + provenance).

    python -m mcn_training.export runs/x/checkpoint.pt --out model.safetensors

Training already writes ``best.safetensors`` and ``last.safetensors``; this turns any checkpoint (an epoch
copy, a run that was killed) into the same format. The checkpoint is read with
``torch.load(weights_only=True)`` and must be one of ours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mcn_ros.model.config import ConfigError, ModelConfig
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.weights import WeightsError, same_file, save_weights
from mcn_training.checkpoints import load_checkpoint
from mcn_training.errors import TrainError


def checkpoint_provenance(ckpt: dict[str, Any], source: Path) -> dict[str, Any]:
    """Provenance of the weights in a checkpoint: command, git commit, dataset, epoch, step, metrics."""
    state = ckpt.get("state", {})
    steps_per_epoch = max(int(ckpt.get("steps_per_epoch", 1) or 1), 1)
    epoch = int(state.get("epoch", 0)) + int(state.get("step_in_epoch", 0)) / steps_per_epoch
    same_step = state.get("last_eval_step") == state.get("global_step")
    return {
        "command": ckpt.get("command"),
        "git": ckpt.get("git"),
        "dataset": ckpt.get("dataset"),
        "train_config": ckpt.get("config", {}).get("name"),
        "epoch": round(epoch, 4),
        "global_step": state.get("global_step"),
        "world_size": ckpt.get("world_size"),
        "metrics": state.get("last_metrics") if same_step else None,
        "best": {"value": state.get("best_metric"), "step": state.get("best_step")},
        "exported_from": str(source),
    }


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the model of ``checkpoint`` to ``out`` (.safetensors); returns the path. Raises TrainError."""
    source = Path(checkpoint)
    if same_file(out, source):
        raise TrainError(f"{out} is the checkpoint itself: name another file for the weights")
    ckpt = load_checkpoint(source)
    try:
        model_config = ModelConfig.from_dict(ckpt["model_config"])
    except ConfigError as exc:
        raise TrainError(f"checkpoint {source}: its model config is invalid: {exc}") from exc
    model = MultitaskCenterNet(model_config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise TrainError(
            f"checkpoint {source}: weights do not fit the model: {str(exc).splitlines()[0]}"
        ) from exc
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, model, model_config, checkpoint_provenance(ckpt, source))
    return out


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command-line interface of ``python -m mcn_training.export``."""
    parser = argparse.ArgumentParser(
        prog="python -m mcn_training.export",
        description="Export a training checkpoint to node weights.",
        add_help=add_help,
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint file (runs/<name>/checkpoint.pt)")
    parser.add_argument("--out", type=Path, help="weights file to write (default: beside it, .safetensors)")
    return parser


def main(args: argparse.Namespace | None = None) -> Path:
    """Entry point; from the command line (``args`` None) errors print one line and exit with status 2."""
    from_cli = args is None
    parsed = get_args_parser().parse_args() if args is None else args
    out = parsed.out or parsed.checkpoint.with_suffix(".safetensors")
    try:
        path = export_checkpoint(parsed.checkpoint, out)
    except (TrainError, WeightsError) as exc:
        if not from_cli:
            raise
        print(f"mcn_training.export: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
