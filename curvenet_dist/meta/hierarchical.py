"""Dynamic Loss's per-epoch inputs from every training sample's latest loss (DESIGN.md §6): each sample's
loss-rank bucket within its given class, and the hierarchical meta sample.

Both are functions of the gathered per-sample losses, which every rank holds alike, and of seeds every rank shares:
every rank computes the same buckets and the same sample without further communication.
"""
from __future__ import annotations

import numpy as np

from curvenet_dist.config import ConfigError
from curvenet_dist.data.sample_table import SampleTable


def rank_buckets(losses: np.ndarray, labels: np.ndarray, num_buckets: int) -> np.ndarray:
    """Each sample's bucket in [0, num_buckets): its rank by loss within its given class (0 = lowest loss), scaled
    to the class's size. Ties go by sample id, so the result never depends on the order the losses came in."""
    buckets = np.empty(len(losses), np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        order = rows[np.argsort(losses[rows], kind="stable")]
        buckets[order] = np.arange(len(rows)) * num_buckets // len(rows)
    return buckets


def hierarchical_sample(losses: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                        epoch: int) -> np.ndarray:
    """Sorted training rows of the epoch's meta sample: per given class, half the smallest class's count drawn at
    random, of which the lower-loss half is kept (the reference's two ratios of 0.5). Balanced by construction."""
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() < 4:
        raise ConfigError(f"method=dynamic_loss needs at least 4 training samples in every class (to draw half "
                          f"of the smallest class and keep half of that); class {int(counts.argmin())} has "
                          f"{int(counts.min())}")
    drawn = counts.min() // 2
    rng = np.random.default_rng([seed, epoch, 9])
    rows = []
    for label in range(num_classes):
        candidates = rng.choice(np.flatnonzero(labels == label), drawn, replace=False)
        rows.append(candidates[np.argsort(losses[candidates], kind="stable")[: drawn // 2]])
    return np.sort(np.concatenate(rows))


def union(first: SampleTable, second: SampleTable) -> SampleTable:
    """One table of both tables' samples, under the first's image root; the second's paths are made absolute where
    its root differs (a path joined to an absolute one is that one)."""
    root = second.image_root.absolute()
    second_paths = second.paths if second.image_root == first.image_root else [str(root / p) for p in second.paths]
    return SampleTable(image_root=first.image_root, paths=[*first.paths, *second_paths],
                       labels=np.concatenate([first.labels, second.labels]),
                       true_labels=np.concatenate([first.true_labels, second.true_labels]),
                       num_classes=first.num_classes, origin=f"{first.origin} + {second.origin}")
