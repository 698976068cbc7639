"""Self-describing model weights: a safetensors file whose metadata carries the model config.

Metadata (all strings): ``format`` = "mcn_ros.weights", ``format_version`` = "1", ``config`` (JSON of
:meth:`ModelConfig.to_dict`), ``provenance`` (JSON: created, command, and whatever the writer adds, e.g.
git, dataset, epoch, metrics). Loading never unpickles anything; foreign PyTorch checkpoints are imported
once with ``python -m mcn_ros.model.convert``. Every failure raises :class:`WeightsError` with one message.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mcn_ros.model.config import ConfigError, ModelConfig
from mcn_ros.model.device import resolve_device
from mcn_ros.model.mcn import MultitaskCenterNet

FORMAT = "mcn_ros.weights"
FORMAT_VERSION = "1"


class WeightsError(RuntimeError):
    """A weights file that cannot be used; the message says which file and why."""


def default_provenance() -> dict[str, Any]:
    """Creation time (UTC, ISO 8601) and the command line of this process."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]),
    }


def _umask() -> int:
    """This process's umask, read without changing it (Linux: /proc/self/status; elsewhere 0o022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(temporary sibling)``, flushed to disk, then renamed over it: an
    interrupted write leaves the old file. The file gets the mode a plain ``open`` gives (0666 less the
    umask): writers through temporary files, such as safetensors', leave 0600, which another user (a node
    in a container) cannot read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.chmod(0o666 & ~_umask())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one existing file (an output that would overwrite its own source)."""
    try:
        return Path(a).resolve() == Path(b).resolve() or Path(a).samefile(b)
    except OSError:
        return False


def save_weights(
    path: str | Path, model: nn.Module, config: ModelConfig, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model``'s state dict and ``config`` to ``path`` atomically (temporary file, then rename).

    ``provenance`` entries are added to (and override) :func:`default_provenance`. Returns the path.
    """
    path = Path(path)
    model_config = getattr(model, "config", None)
    if isinstance(model_config, ModelConfig) and model_config != config:
        raise ValueError("save_weights: the config given differs from the model's own config")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config.to_dict()),
        "provenance": json.dumps({**default_provenance(), **(provenance or {})}, default=str),
    }
    return write_atomically(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def _metadata(path: Path) -> dict[str, str]:
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if not path.is_file():
        raise WeightsError(f"weights path is not a file: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata()
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    return dict(metadata or {})


def read_metadata(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config and provenance stored in a weights file, without loading tensors."""
    path = Path(path)
    metadata = _metadata(path)
    found = metadata.get("format")
    if found != FORMAT:
        raise WeightsError(
            f"{path}: not an mcn_ros weights file (metadata 'format' is {found!r}, expected {FORMAT!r}); "
            "import foreign PyTorch checkpoints with `python -m mcn_ros.model.convert`"
        )
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(
            f"{path}: unsupported weights format version {version!r} (this mcn_ros reads {FORMAT_VERSION!r})"
        )
    try:
        config = ModelConfig.from_dict(json.loads(metadata.get("config", "")))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: the 'config' metadata is not valid JSON ({exc})") from exc
    except ConfigError as exc:
        raise WeightsError(f"{path}: invalid model config in metadata: {exc}") from exc
    try:
        provenance = json.loads(metadata.get("provenance", "{}"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: the 'provenance' metadata is not valid JSON ({exc})") from exc
    if not isinstance(provenance, dict):
        raise WeightsError(f"{path}: the 'provenance' metadata is not a JSON object")
    return config, provenance


def first_difference(found: Any, expected: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """First differing key (dotted path) between two nested dict/list structures, or None."""
    return next(iter(differences(found, expected, where)), None)


def differences(found: Any, expected: Any, where: str = "") -> list[tuple[str, Any, Any]]:
    """Every differing key (dotted path, with both values) between two nested dict structures, those of
    ``expected`` first, in order, then those only ``found`` has (lists compared whole)."""
    if isinstance(found, dict) and isinstance(expected, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in list(expected) + [k for k in found if k not in expected]:
            out += differences(found.get(key), expected.get(key), f"{where}.{key}" if where else str(key))
        return out
    return [] if found == expected else [(where, found, expected)]


def _tensors(keys: list[str], most: int = 5) -> str:
    """The names of ``keys``, up to ``most`` of them: "tensor 'a'" or "3 tensors 'a', 'b', 'c'"."""
    shown = ", ".join(f"'{key}'" for key in keys[:most])
    more = f" (and {len(keys) - most} more)" if len(keys) > most else ""
    return f"tensor {shown}" if len(keys) == 1 else f"{len(keys)} tensors {shown}{more}"


def _are(keys: list[str]) -> str:
    return "is" if len(keys) == 1 else "are"


def _tensor_mismatch(path: Path, config: ModelConfig, missing: list[str], unexpected: list[str]) -> str:
    """The message for a file whose tensor names are not those of the model its config describes, saying
    what is known: tensors missing and others the model lacks look like another architecture (or a config
    that is not theirs); only missing ones are named as missing (the file's other tensors are all the
    model's); only extra ones, as not part of the model the config describes."""
    model = f"the {config.backbone} model described by the file's config"
    if missing and unexpected:
        return (
            f"{path}: {_tensors(missing)} of {model} {_are(missing)} missing from the file, which has "
            f"{_tensors(unexpected)} the model does not: the tensors belong to another architecture, or the "
            "config in the file's metadata is not theirs"
        )
    if missing:
        return (
            f"{path}: {_tensors(missing)} of {model} {_are(missing)} missing from the file (its other "
            "tensors are all the model's)"
        )
    return f"{path}: {_tensors(unexpected)} of the file {_are(unexpected)} not part of {model}"


def load_weights(
    path: str | Path, device: str | torch.device = "cpu", expected_config: ModelConfig | None = None
) -> tuple[MultitaskCenterNet, ModelConfig, dict[str, Any]]:
    """Build the model described by a weights file and load its tensors (eval mode, on ``device``).

    If ``expected_config`` is given, the file's config must equal it (the error names the first differing
    key). Returns (model, config, provenance).
    """
    path = Path(path)
    config, provenance = read_metadata(path)
    if expected_config is not None and expected_config != config:
        diff = first_difference(config.to_dict(), expected_config.to_dict())
        key, found, wanted = diff if diff is not None else ("?", None, None)
        raise WeightsError(
            f"{path}: model config mismatch at '{key}': the file has {found!r}, expected {wanted!r}"
        )
    model = MultitaskCenterNet(config)
    own = model.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            missing = [k for k in own if k not in keys]
            unexpected = [k for k in keys if k not in own]
            if missing or unexpected:
                raise WeightsError(_tensor_mismatch(path, config, missing, unexpected))
            state = {}
            for key, value in own.items():
                shape = tuple(handle.get_slice(key).get_shape())
                if shape != tuple(value.shape):
                    raise WeightsError(
                        f"{path}: tensor '{key}' has shape {shape} but the model described by the file's "
                        f"config needs {tuple(value.shape)}"
                    )
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() != value.is_floating_point():
                    raise WeightsError(
                        f"{path}: tensor '{key}' holds {tensor.dtype} values but the model described by the "
                        f"file's config needs {value.dtype} ones"
                    )
                state[key] = tensor
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: cannot read tensors (truncated or corrupt?): {exc}") from exc
    model.load_state_dict(state, strict=True)
    return model.to(resolve_device(device)).eval(), config, provenance
