"""Import a trusted plain PyTorch state dict (e.g. a CenterNet checkpoint) as an mcn_ros weights file.

This is the only module that calls ``torch.load`` (with ``weights_only=True``: tensors and plain
containers only, no arbitrary unpickling). Usage::

    python -m mcn_ros.model.convert --config config/models/dla34_det80_512.yaml \\
        --checkpoint ctdet_coco_dla_2x.pth --output weights/dla34_det80_512.safetensors

Source keys are renamed by ordered regular-expression rules (first match wins): the rules of
``--mapping`` (a YAML file ``{rules: [[pattern, replacement], ...], ignore: [pattern, ...]}``) first,
then :data:`DEFAULT_RULES`, which cover CenterNet's heads (hm, wh, reg, hps, hm_hp, hp_offset), its DLA-34
model (base, dla_up, ida_up) and its ResNet-DCN models (conv1, bn1, layer1-4, deconv_layers; into a config
with ``use_dcn: true``: its plain-ResNet models, msra_resnet, have another up-path and do not fit). Keys
already named as ours are kept. Every source tensor must land on a model tensor of the same shape and every
model tensor must be provided (BatchNorm's ``num_batches_tracked`` excepted); otherwise the conversion stops
with a message naming the first offending key.

Colour: CenterNet was trained on BGR images normalised with BGR statistics, our preprocessing feeds RGB
normalised with the config's ``mean``/``std``. ``--source-color bgr`` (the default) therefore reverses the
input channels of the first convolution (the first 4-D weight that takes 3 input channels) and writes
CenterNet's statistics in RGB order (:data:`CENTERNET_MEAN_RGB`, :data:`CENTERNET_STD_RGB`) into the output
config, so that the converted model computes exactly what the original did. ``--source-color rgb`` keeps
the weights and the config's statistics as they are (checkpoints trained on RGB input).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mcn_ros.model.config import ConfigError, ModelConfig
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.weights import WeightsError, load_weights, same_file, save_weights
from mcn_ros.typed_config import read_yaml_mapping

#: (pattern, replacement) rules from CenterNet's parameter names to ours, tried in order.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r"^hm\.", "heads.detection.heatmap."),
    (r"^wh\.", "heads.detection.size."),
    (r"^reg\.", "heads.detection.offset."),
    (r"^hps\.", "heads.pose.kp_offsets."),
    (r"^hm_hp\.", "heads.pose.kp_heatmap."),
    (r"^hp_offset\.", "heads.pose.kp_subpixel."),
    (r"^base\.", "backbone.body."),  # CenterNet DLA-34 (same names as timm's dla34)
    (r"^dla_up\.", "neck.dla_up."),
    (r"^ida_up\.", "neck.ida_up."),
    (r"^deconv_layers\.", "neck.deconv_layers."),  # CenterNet ResNet(-DCN) up-path
    (r"^(conv1|bn1|layer[1-4])\.", r"backbone.body.\1."),  # torchvision/timm ResNet names
)
#: Source keys dropped without complaint: classifiers that a detection model does not use.
DEFAULT_IGNORE: tuple[str, ...] = (r"^base\.fc\.", r"^fc\.")
#: Colour orders of source checkpoints' input images.
SOURCE_COLORS: tuple[str, ...] = ("bgr", "rgb")
#: CenterNet's normalisation (its BGR mean 0.408, 0.447, 0.470 and std 0.289, 0.274, 0.278) in RGB order.
CENTERNET_MEAN_RGB: tuple[float, float, float] = (0.470, 0.447, 0.408)
CENTERNET_STD_RGB: tuple[float, float, float] = (0.278, 0.274, 0.289)


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message names the first offending key."""


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a plain state dict with ``torch.load(weights_only=True)`` (a ``state_dict``/``model`` entry is
    unwrapped, a ``module.`` prefix stripped)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        # Not torch's own text: it goes on for lines and suggests loading with weights_only=False.
        raise ConversionError(
            f"{path}: not a plain PyTorch state dict that loads with weights_only=True (tensors, numbers and "
            f"containers only; {type(exc).__name__}): a truncated file, or one holding pickled objects"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping):
        raise ConversionError(
            f"{path}: expected a mapping of parameter names to tensors, got {type(data).__name__}"
        )
    state: dict[str, Tensor] = {}
    for key, value in data.items():
        if not isinstance(value, Tensor):
            raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[str(key).removeprefix("module.")] = value
    return state


def map_keys(
    state: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    rules: Sequence[tuple[str, str]] = DEFAULT_RULES,
    ignore: Sequence[str] = DEFAULT_IGNORE,
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename ``state`` onto the keys of ``targets`` (the model's state dict); returns (mapped, ignored keys).

    Raises :class:`ConversionError` for a key no rule maps onto the model, two keys mapped to one, a shape
    mismatch, or a model tensor left without a value.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    skip = [re.compile(p) for p in ignore]
    mapped: dict[str, Tensor] = {}
    source_of: dict[str, str] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if any(p.search(key) for p in skip):
            ignored.append(key)
            continue
        target = key
        if key not in targets:
            for pattern, replacement in compiled:
                if pattern.search(key):
                    target = pattern.sub(replacement, key, count=1)
                    break
        if target not in targets:
            hint = f" (renamed to {target!r})" if target != key else " (no rule matches it)"
            raise ConversionError(
                f"checkpoint tensor {key!r}{hint} has no counterpart in the model; add a rule or an ignore "
                "pattern with --mapping"
            )
        if target in mapped:
            raise ConversionError(
                f"checkpoint tensors {source_of[target]!r} and {key!r} both map to {target!r}"
            )
        if tuple(value.shape) != tuple(targets[target].shape):
            raise ConversionError(
                f"checkpoint tensor {key!r} has shape {tuple(value.shape)} but model tensor {target!r} needs "
                f"{tuple(targets[target].shape)} (do the config's classes and heads match the checkpoint?)"
            )
        mapped[target] = value.to(targets[target].dtype)
        source_of[target] = key
    missing = [k for k in targets if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConversionError(
            f"model tensor {missing[0]!r} (and {len(missing) - 1} more) is not provided by the checkpoint"
        )
    return mapped, ignored


def first_rgb_conv(state: Mapping[str, Tensor]) -> str:
    """Key of the first convolution weight taking 3 input channels (the one that sees the image)."""
    for key, value in state.items():
        if value.ndim == 4 and value.shape[1] == 3:
            return key
    raise ConversionError("no convolution weight with 3 input channels: cannot find the input layer")


def _read_mapping(path: str | Path | None) -> tuple[list[tuple[str, str]], list[str]]:
    if path is None:
        return [], []
    data = read_yaml_mapping(path, "key mapping", ConversionError, allow_empty=True)  # empty: no extra rules
    rules, ignore = data.get("rules") or [], data.get("ignore") or []
    if not isinstance(rules, list) or not all(isinstance(r, list) and len(r) == 2 for r in rules):
        raise ConversionError(f"{path}: 'rules' must be a list of [pattern, replacement] pairs")
    if not isinstance(ignore, list):  # a single string would be read as one pattern per character
        raise ConversionError(f"{path}: 'ignore' must be a list of patterns, got {ignore!r}")
    patterns = [str(p) for p, _ in rules] + [str(p) for p in ignore]
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConversionError(f"{path}: {pattern!r} is not a regular expression: {exc}") from exc
    return [(str(p), str(r)) for p, r in rules], [str(p) for p in ignore]


def convert(
    checkpoint: str | Path,
    config: ModelConfig,
    output: str | Path,
    mapping: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
    source_color: str = "bgr",
) -> dict[str, Any]:
    """Convert ``checkpoint`` for ``config`` into the weights file ``output``; returns a summary.

    ``source_color`` "bgr" (CenterNet's convention, see the module doc) adapts the input layer and the
    config's mean/std to our RGB preprocessing; "rgb" converts the weights as they are.
    """
    if source_color not in SOURCE_COLORS:
        raise ConversionError(f"source_color must be 'bgr' or 'rgb', got {source_color!r}")
    if same_file(output, checkpoint):
        raise ConversionError(f"--output {output} is the checkpoint itself: name another file")
    state = load_state_dict(checkpoint)
    extra_rules, extra_ignore = _read_mapping(mapping)
    if source_color == "bgr":
        config = dataclasses.replace(config, mean=CENTERNET_MEAN_RGB, std=CENTERNET_STD_RGB)
    model = MultitaskCenterNet(config)
    targets = model.state_dict()
    mapped, ignored = map_keys(
        state, targets, [*extra_rules, *DEFAULT_RULES], [*extra_ignore, *DEFAULT_IGNORE]
    )
    if source_color == "bgr":
        # (W x_bgr) = (W.flip(1) x_rgb): the RGB input, normalised with the reversed statistics, is x_bgr
        # with its channels reversed.
        first = first_rgb_conv(mapped)
        mapped[first] = mapped[first].flip(1)
    model.load_state_dict({**targets, **mapped}, strict=True)
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    info = {
        "converted_from": Path(checkpoint).name,
        "source_sha256": digest,
        "source_color": source_color,
        "mapping": None if mapping is None else str(mapping),
        **(provenance or {}),
    }
    save_weights(output, model, config, info)
    load_weights(output)  # read it back once: the file is usable
    return {"output": str(output), "tensors": len(mapped), "ignored": ignored, "source_sha256": digest}


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m mcn_ros.model.convert",
        description="Import a trusted plain PyTorch state dict (e.g. CenterNet) as mcn_ros weights.",
    )
    parser.add_argument("--config", required=True, help="model config YAML (config/models/*.yaml)")
    parser.add_argument(
        "--checkpoint", required=True, help="source .pth/.pt state dict (loaded weights_only)"
    )
    parser.add_argument("--output", required=True, help="destination .safetensors file")
    parser.add_argument(
        "--mapping", help="YAML with extra 'rules' ([pattern, replacement]) and 'ignore' patterns"
    )
    parser.add_argument(
        "--source-color",
        choices=SOURCE_COLORS,
        default="bgr",
        help="colour order the checkpoint was trained on: bgr (default; CenterNet's, with its mean/std) or "
        "rgb (weights and the config's mean/std kept as they are)",
    )
    parser.add_argument("--dataset", help="provenance note: what the checkpoint was trained on")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 conversion error)."""
    args = get_args_parser().parse_args(argv)
    try:
        config = ModelConfig.from_yaml(args.config)
        summary = convert(
            args.checkpoint,
            config,
            args.output,
            args.mapping,
            {"dataset": args.dataset} if args.dataset else None,
            source_color=args.source_color,
        )
    except (ConversionError, ConfigError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['output']}: {summary['tensors']} tensors, "
        f"{len(summary['ignored'])} ignored ({', '.join(summary['ignored'][:5]) or 'none'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
