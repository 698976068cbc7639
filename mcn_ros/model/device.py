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
