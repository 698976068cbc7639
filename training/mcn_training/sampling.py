"""Deterministic, resumable sampling: what makes a resumed run equal an uninterrupted one.

Each sample's augmentation is seeded from (seed, epoch, index), the order of an epoch from (seed, epoch),
and a resumed epoch skips the samples already trained; the loaders are built here with fixed generators.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mcn_training.distributed import DistInfo


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch (CPU) global RNGs for a block, then put their states back."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededSamples(Dataset[dict[str, torch.Tensor]]):
    """Dataset indexed by (epoch, index): each sample's augmentation is seeded from (seed, epoch, index).

    The random draws of a sample then depend neither on the worker process that loads it nor on what was
    loaded before, which makes step-level resume exact and runs reproducible for any number of workers.
    """

    def __init__(self, dataset: Dataset[dict[str, torch.Tensor]], seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2, np.uint64)
        with seeded_rng(int(state[0]) & (2**63 - 1)):
            return self.dataset[index]


class ResumableSampler(DistributedSampler[Any]):
    """DistributedSampler (also for one process) that yields (epoch, index) and can skip a prefix.

    ``skip`` samples of this rank's order for the current epoch are left out: the batches a resumed run
    already trained. The order itself is torch's (seed + epoch), independent of the skip.
    """

    def __init__(self, dataset: Dataset[Any], dist_info: DistInfo, seed: int) -> None:
        super().__init__(
            dataset,
            num_replicas=dist_info.world_size,
            rank=dist_info.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = itertools.islice(super().__iter__(), self.skip, None)
        return ((self.epoch, int(i)) for i in indices)

    def __len__(self) -> int:
        return self.num_samples - self.skip


def train_loader(
    samples: SeededSamples,
    sampler: ResumableSampler,
    batch_size: int,
    workers: int,
    device: torch.device,
    seed: int,
) -> DataLoader[Any]:
    """The training loader: this rank's batches of ``sampler``'s order, full batches only."""
    return DataLoader(
        samples,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(
    dataset: Dataset[dict[str, torch.Tensor]],
    dist_info: DistInfo,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> DataLoader[Any]:
    """The validation loader: in order, each rank a shard of the images when distributed."""
    sampler = (
        DistributedSampler[int](dataset, dist_info.world_size, dist_info.rank, shuffle=False)
        if dist_info.distributed
        else None
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
