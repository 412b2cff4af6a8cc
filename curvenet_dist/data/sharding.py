"""Which samples each rank sees in an epoch.

Every rank must run the same number of steps (DDP would hang otherwise), so the epoch's order is padded by
repeating its first samples up to a multiple of the world size; consumers drop repeated ids. A rank's share
is never left with a lone sample in its last batch, since BatchNorm cannot train on a batch of one.
"""
from __future__ import annotations

import numpy as np

from curvenet_dist.config import ConfigError


def epoch_order(num_samples: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def pass_order(num_samples: int, rows: np.ndarray | None, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The sample ids of one pass over a table: all `num_samples`, or only `rows` (sample ids of the table, e.g. a
    method's training rows for the epoch), in the epoch's seeded order."""
    if rows is None:
        return epoch_order(num_samples, shuffle=shuffle, seed=seed, epoch=epoch)
    return np.asarray(rows)[epoch_order(len(rows), shuffle=shuffle, seed=seed, epoch=epoch)]


def rank_share(order: np.ndarray, rank: int, world_size: int, batch_size: int) -> np.ndarray:
    """This rank's sample ids for the epoch, in order, padded so every rank has the same count."""
    if len(order) < world_size:
        raise ConfigError(
            f"the data has {len(order)} samples, fewer than the world size {world_size}: every rank needs at "
            f"least one sample; use fewer processes"
        )
    per_rank = -(-len(order) // world_size)
    if per_rank % batch_size == 1 and per_rank > 1:
        per_rank += 1
    padded = np.resize(order, per_rank * world_size)
    return padded[rank::world_size]


def batches_per_epoch(num_samples: int, world_size: int, batch_size: int) -> int:
    per_rank = len(rank_share(np.arange(num_samples), 0, world_size, batch_size))
    return -(-per_rank // batch_size)
