"""Export a weights file's forward to an ONNX file, for ONNX Runtime elsewhere or a TensorRT engine.

    python -m mcn_ros.model.export --weights model.safetensors --output model.onnx [--tasks detection pose]

The graph is the ``onnxruntime`` backend's forward (:func:`mcn_ros.model.backends.export_onnx`; the
backend's own sessions write the same outputs channels-last): input ``images`` [B, 3, H, W] float32,
normalised with the config's mean/std, RGB, H and W multiples of 32 (dynamic B, H, W); one NCHW output per raw
head output, named as :mod:`mcn_ros.model.heads` documents (heatmaps as logits).
Decoding is not in the graph: :func:`mcn_ros.model.decode.decode_batch` applies to the outputs. Each
BatchNorm that follows a conv is folded into it first (the same maths). The file's metadata
(``metadata_props``) keeps the model config as YAML (``mcn_config``: classes, input size, mean/std, decode
settings), the tasks and the output names, so the file alone says how to feed and read it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from mcn_ros.model.backends import OnnxExportError, export_onnx, fold_batch_norms
from mcn_ros.model.config import TASKS, ConfigError, ModelConfig
from mcn_ros.model.mcn import resolve_tasks
from mcn_ros.model.weights import WeightsError, load_weights, same_file, write_atomically


class ExportError(RuntimeError):
    """The export cannot be made (a missing optional package, an unwritable destination)."""


def describe(graph: Any, config: ModelConfig, tasks: Collection[str], names: Sequence[str]) -> None:
    """Add to ``graph``'s ``metadata_props`` what a reader needs to feed and read it (see the module)."""
    for key, value in {
        "mcn_config": config.to_yaml(),
        "mcn_tasks": ",".join(t for t in TASKS if t in tasks),
        "mcn_outputs": ",".join(names),
        "mcn_input": "images: float32 [B, 3, H, W], RGB, (x / 255 - mean) / std, H and W multiples of 32",
    }.items():
        graph.metadata_props.add(key=key, value=value)


def export(weights: str | Path, output: str | Path, tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the ONNX file of ``weights``' forward for ``tasks`` (None = all configured); a summary."""
    try:
        import onnx
    except ImportError as error:
        raise ExportError(
            "the onnx package is needed (pip install onnx; pinned in requirements/bench.txt)"
        ) from error
    if same_file(output, weights):
        raise ExportError(f"--output {output} is the weights file itself: name another file")
    model, config, _ = load_weights(weights, device="cpu")
    try:
        asked = resolve_tasks(config, tasks)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    height, width = config.input_size
    data, names = export_onnx(fold_batch_norms(model), asked, height, width)
    graph = onnx.load_from_string(data)
    describe(graph, config, asked, names)
    output = Path(output)
    try:
        write_atomically(output, lambda tmp: onnx.save(graph, str(tmp)))
    except OSError as error:
        raise ExportError(f"cannot write {output}: {error}") from error
    return {
        "output": str(output),
        "tasks": sorted(asked),
        "outputs": list(names),
        "bytes": output.stat().st_size,
    }


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mcn_ros.model.export``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--weights", required=True, help="the .safetensors weights file")
    parser.add_argument("--output", required=True, help="destination .onnx file")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=TASKS,
        default=None,
        help="heads in the graph (default: all the weights have)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad weights, tasks or destination)."""
    args = get_args_parser().parse_args(argv)
    try:
        summary = export(args.weights, args.output, args.tasks)
    except (ExportError, ConfigError, WeightsError, OnnxExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['output']} ({summary['bytes'] / 1e6:.1f} MB): tasks {', '.join(summary['tasks'])}; "
        f"outputs {', '.join(summary['outputs'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
