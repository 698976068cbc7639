"""The processes of a training job: joining a torchrun job, each rank's device, and stopping together.

A stop (SIGTERM/SIGINT on any rank, or the time budget running out) is agreed on with one all-reduce per step,
so that every rank leaves the loop after the same step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mcn_ros.model.device import resolve_device
from mcn_training.errors import TrainError

LOG = logging.getLogger("mcn_training")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def select_device(setting: str, local_rank: int, what: str = "runtime.device") -> torch.device:
    """The device ``setting`` (the option ``what``) names for this rank; raises TrainError if it asks for
    missing CUDA or a GPU index this machine does not have."""
    device = resolve_device(setting, local_rank)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"{what}: {device} asked for but CUDA is not available")
        if (device.index or 0) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise TrainError(f"{what}: {device} asked for but this machine has {count} GPU(s)")
    return device


def init_distributed(device_setting: str) -> tuple[DistInfo, torch.device, bool]:
    """Join the torchrun job if there is one (env:// rendezvous; nccl on CUDA, gloo on CPU).

    Returns (dist info, this rank's device, whether this call created the process group).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_setting, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        created = True
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank), device, created
    return DistInfo(), device, created


def barrier(dist_info: DistInfo) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if dist_info.distributed:
        dist.barrier()


def broadcast_buffers(model: nn.Module, dist_info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics): what checkpoints and weights hold."""
    if dist_info.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


class StopRequest:
    """SIGTERM/SIGINT handler: ask the loop to checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        #: The first signal this process got (None: none, or only another rank got one).
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.signum is None:
            self.signum = signum
        LOG.warning("signal %d: stopping after this step (checkpoint first); Ctrl-C again to abort", signum)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def all_reduce_stop_flags(
    dist_info: DistInfo, total: torch.Tensor, signalled: bool, out_of_time: bool
) -> tuple[float, bool, bool]:
    """Mean total loss over ranks, and whether any rank got a signal / ran out of time (one all_reduce),
    so that every rank takes the same decisions."""
    flags = torch.tensor([float(signalled), float(out_of_time)], device=total.device)
    packed = torch.cat([total.float().reshape(1), flags])
    if dist_info.distributed:
        dist.all_reduce(packed)
        packed[0] /= dist_info.world_size
    loss, signal_flag, time_flag = packed.tolist()
    return loss, signal_flag > 0, time_flag > 0
