"""Which torch device a setting such as ``"auto"``, ``"cpu"`` or ``"cuda:1"`` means here."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` -> a CUDA device if available, else CPU; other values as ``torch.device``.

    With ``local_rank`` (a process of a multi-GPU job), ``"auto"`` and ``"cuda"`` mean ``cuda:<local_rank>``.
    """
    setting = str(device)
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and local_rank is not None:
        setting = f"cuda:{local_rank}"
    return torch.device(setting)


def checked_device(setting: str) -> torch.device:
    """:func:`resolve_device` of a command-line setting, refusing with a ValueError what cannot run here:
    a name other than auto, cpu, cuda or cuda:N, or a CUDA device this machine does not have."""
    prefix, _, index = setting.partition(":")
    if setting not in ("auto", "cpu") and not (prefix == "cuda" and (not index or index.isdigit())):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {setting!r}")
    device = resolve_device(setting)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"{setting}: this machine has {count} usable CUDA device(s)")
    return device
