"""The training sampler: a seeded, epoch-dependent order with per-sample augmentation seeds, resumable."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
from torch.utils.data.distributed import DistributedSampler

__all__ = ["EpochSampler"]


class EpochSampler(DistributedSampler):
    """Shuffles ``dataset`` from ``(seed, epoch)`` and yields ``(index, augmentation seed)`` keys.

    The order and each sample's augmentation seed depend only on the seed, the epoch and the sample,
    not on the number of workers, so two runs with the same seed see the same batches, and a run
    resumed with ``skip`` (samples of ``start_epoch`` this rank already consumed) continues with the
    batches the uninterrupted run would have seen. Lightning calls :meth:`set_epoch` at every epoch
    start. It is a :class:`~torch.utils.data.distributed.DistributedSampler` (each of
    ``num_replicas`` ranks gets its share, the remainder is dropped), so Lightning keeps it under DDP.

    Args:
        dataset: what is sampled (only its length is used).
        seed: seed of the order and of the augmentation.
        num_replicas: number of processes sharing the dataset.
        rank: this process's rank.
        start_epoch: the epoch the first iteration belongs to.
        skip: samples of ``start_epoch`` to leave out at its start (they were seen before a resume).
    """

    def __init__(
        self,
        dataset: Sized,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        start_epoch: int = 0,
        skip: int = 0,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.epoch = start_epoch
        self._skip = {start_epoch: skip} if skip else {}

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.dataset))
        seeds = rng.integers(0, 2**32, size=len(order))
        mine = order[: self.total_size][self.rank :: self.num_replicas]
        skip = self._skip.pop(self.epoch, 0)
        return iter([(int(i), int(seeds[i])) for i in mine[skip:]])
