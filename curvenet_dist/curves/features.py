"""What the allocate stage reads from the curve store: CurveNet's input (DESIGN.md §3), each sample's loss curve
without its first S epochs and its logit-margin curve likewise where the store records margins, each epoch
standardised over the training set (or, as in the paper, over the samples that share its given label); and the
lowest-loss meta set.

Both work one store column at a time (a column is a few MB even at a million samples), with vectorised per-class
sums, so memory stays near the size of the result and no step loops over samples in Python.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch.distributed as dist

from curvenet_dist.curves.store import CurveStore, CurveStoreError


def require_epochs(store: CurveStore, first_epoch: int, needed_by: str) -> None:
    """Raise, naming the missing epochs, unless every probe epoch from `first_epoch` on is complete."""
    missing = sorted(set(range(first_epoch, store.num_epochs)) - set(store.complete_epochs().tolist()))
    if missing:
        raise CurveStoreError(
            f"{store.path}: probe epochs {[e + 1 for e in missing]} are not recorded ({len(store.complete_epochs())} "
            f"of {store.num_epochs} are) and {needed_by} needs them; finish the probe run first (rerun its command "
            f"to resume)"
        )


def _check_curves(store: CurveStore, skip_epochs: int) -> None:
    if store.num_epochs <= skip_epochs:
        raise CurveStoreError(
            f"{store.path} holds {store.num_epochs} probe epochs; curvenet.skip_epochs={skip_epochs} needs at least "
            f"{skip_epochs + 1}"
        )
    require_epochs(store, skip_epochs, "CurveNet")


COLUMNS_AT_ONCE = 8


def curve_input_length(num_epochs: int, skip_epochs: int) -> int:
    """The length of CurveNet's input from a probe of `num_epochs`, which records margins: the loss curve after the
    skipped epochs and the margin curve beside it."""
    return 2 * (num_epochs - skip_epochs)


def suspicion_direction(store: CurveStore, skip_epochs: int) -> np.ndarray:
    """[D] float32, in the layout of `normalized_curves`: a sample's features dotted with it give how wrong its
    label looks to the probe, minus the mean of its standardised margin curve (its AUM over the epochs CurveNet
    reads), or the mean of its standardised loss curve where the store records no margins."""
    columns = store.num_epochs - skip_epochs
    direction = np.zeros(len(store.recordings) * columns, np.float32)
    if store.margin is None:
        direction[:] = 1 / columns
    else:
        direction[columns:] = -1 / columns
    return direction


def normalized_curves(store: CurveStore, skip_epochs: int, normalization: str) -> np.ndarray:
    """[N, T - S] float32, or [N, 2 (T - S)] where the store records margins (the loss columns, then the margin
    columns): lbar_{i,t} = (l_{i,t} - mu_t) / sigma_t, and the same of the margins. `normalization` says over
    which samples mu and sigma are taken: `dataset` every training sample; `class` the samples of the same given
    label; `class_mean` the same, centring only (sigma = 1).

    Statistics are float64 sums in sample order; only the columns S..T-1 are read from the store.
    """
    _check_curves(store, skip_epochs)
    labels = store.labels
    counts = np.bincount(labels)
    present = counts > 0

    def class_mean(values: np.ndarray) -> np.ndarray:
        sums = np.bincount(labels, weights=values, minlength=len(counts))
        return np.divide(sums, counts, out=np.zeros_like(sums), where=present)

    columns = [(array.path, epoch) for array in store.recordings for epoch in range(skip_epochs, store.num_epochs)]
    features = np.empty((store.num_samples, len(columns)), np.float32)
    # Written COLUMNS_AT_ONCE columns at a time: one column of a row-major [N, D] array is one strided float per
    # row, and at a million rows those writes, not the arithmetic, set the time.
    block = np.empty((min(COLUMNS_AT_ONCE, len(columns)), store.num_samples), np.float32)
    # Two float64 columns, reused: at a million samples a fresh array per step costs more than the step.
    centred, per_sample = np.empty(store.num_samples), np.empty(store.num_samples)
    for start in range(0, len(columns), len(block)):
        written = columns[start:start + len(block)]
        for row, (array, epoch) in enumerate(written):
            centred[:] = store.read_epoch(epoch, array)
            if normalization == "dataset":
                centred -= centred.mean()
                centred /= max(np.sqrt(np.square(centred, out=per_sample).mean()), 1e-8)
            else:
                centred -= np.take(class_mean(centred), labels, out=per_sample)
                if normalization == "class":
                    scale = 1 / np.maximum(np.sqrt(class_mean(np.square(centred, out=per_sample))), 1e-8)
                    centred *= np.take(scale, labels, out=per_sample)
            block[row] = centred
        features[:, start:start + len(written)] = block[:len(written)].T
    return features


def features_path(store: CurveStore, skip_epochs: int, normalization: str) -> Path:
    """Where `curve_features` saves the features of `store`: a folder beside it that the store empties whenever a
    column changes (CurveStore.forget_features), under the hash of the stored bytes they are built from, so a
    store changed in any other way (a chunk lost or damaged, another store copied in its place) is never read
    through features of its former content."""
    key = store.content_key(range(skip_epochs, store.num_epochs))
    return store.features_dir / f"{key}-skip{skip_epochs}-{normalization}.npy"


def curve_features(store: CurveStore, skip_epochs: int, normalization: str) -> np.ndarray:
    """`normalized_curves`, built once per store and saved beside it.

    Rank 0 builds and saves them (a temporary file, then a rename, so a reader never sees half a file) unless they
    are already saved; every rank waits for it at a barrier, then maps the file copy-on-write, so the ranks of a
    node share one copy in the page cache instead of building one each. Every rank checks the store first, so a
    store that is not finished stops them all with the same message; a damaged column stops rank 0 as it builds
    (saved features were built from columns read whole, and their name is the hash of the bytes read).
    """
    _check_curves(store, skip_epochs)
    path = features_path(store, skip_epochs, normalization)
    if (not dist.is_initialized() or dist.get_rank() == 0) and not path.exists():
        features = normalized_curves(store, skip_epochs, normalization)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            with open(temporary, "wb") as file:
                np.save(file, features)
            os.replace(temporary, path)
        except OSError as error:
            raise CurveStoreError(f"cannot save the curve features beside {store.path}: {error}; the allocate "
                                  f"stage needs the probe folder writable") from None
    if dist.is_initialized():
        dist.barrier()
    return np.load(path, mmap_mode="c")


def mean_probe_loss(store: CurveStore) -> np.ndarray:
    """Each sample's mean loss over the store's complete epochs, read a column at a time (the trivial noise
    detector's score)."""
    return mean_over_complete_epochs(store, "loss")


def mean_margin(store: CurveStore) -> np.ndarray:
    """Each sample's mean logit margin over the store's complete epochs: its area under the margin (AUM, Pleiss et
    al. 2020) divided by the epoch count; the lower, the more likely the given label is wrong."""
    return mean_over_complete_epochs(store, "margin")


def probe_margins(store: CurveStore | None) -> np.ndarray | None:
    """`mean_margin`, where there is a store and it holds margins of at least one complete epoch."""
    if store is None or store.margin is None or not len(store.complete_epochs()):
        return None
    return mean_margin(store)


def mean_over_complete_epochs(store: CurveStore, array: str) -> np.ndarray:
    epochs = store.complete_epochs()
    total = np.zeros(store.num_samples)
    for epoch in epochs:
        total += store.read_epoch(epoch, array)
    return total / len(epochs)


def lowest_loss_rows(store: CurveStore, per_class: int) -> np.ndarray:
    """The `per_class` samples of each given class with the lowest mean probe loss over every probe epoch (ties
    by sample id): a meta set without clean data (paper Table 7)."""
    require_epochs(store, 0, "meta.source=lowest_loss")
    labels = store.labels
    by_loss = np.argsort(mean_probe_loss(store), kind="stable")
    by_class_then_loss = by_loss[np.argsort(labels[by_loss], kind="stable")]
    counts = np.bincount(labels)
    rank_in_class = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.sort(by_class_then_loss[rank_in_class < per_class])
