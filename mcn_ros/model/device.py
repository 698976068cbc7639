"""Which torch device a setting such as ``"auto"``, ``"cpu"`` or ``"cuda:1"`` means here.

torch is imported where a device is resolved: the node's parameter table checks names without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: The device settings besides ``cuda:N``.
DEVICE_NAMES = ("auto", "cpu", "cuda")


def is_device_name(setting: str) -> bool:
    """Whether ``setting`` is a device setting: auto, cpu, cuda or cuda:N."""
    if setting in DEVICE_NAMES:
        return True
    prefix, _, index = setting.partition(":")
    return prefix == "cuda" and index.isdigit()


def resolve_device(device: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` -> a CUDA device if available, else CPU; other values as ``torch.device``.

    With ``local_rank`` (a process of a multi-GPU job), ``"auto"`` and ``"cuda"`` mean ``cuda:<local_rank>``.
    """
    import torch

    setting = str(device)
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and local_rank is not None:
        setting = f"cuda:{local_rank}"
    return torch.device(setting)
