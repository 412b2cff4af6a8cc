"""CurveNet's input (DESIGN.md §3, paper eqs. 7-8): each sample's loss curve without its first S epochs,
centred on the mean curve of the samples that share its given label."""
from __future__ import annotations

import numpy as np

from curvenet_dist.curves.store import CurveStore, CurveStoreError


def class_normalized_curves(store: CurveStore, skip_epochs: int, normalize_std: bool) -> np.ndarray:
    """[N, T - S] float32: lbar_{i,t} = l_{i,t} - mu_{y_i,t}, optionally divided by the class's std at t.

    Only the columns S..T-1 are read from the store.
    """
    if store.num_epochs <= skip_epochs:
        raise CurveStoreError(
            f"{store.path} holds {store.num_epochs} probe epochs; curvenet.skip_epochs={skip_epochs} needs at least "
            f"{skip_epochs + 1}"
        )
    missing = sorted(set(range(skip_epochs, store.num_epochs)) - set(store.complete_epochs().tolist()))
    if missing:
        raise CurveStoreError(
            f"{store.path}: probe epochs {[e + 1 for e in missing]} are not recorded; finish the probe run first "
            f"(rerun its command to resume)"
        )
    curves = np.asarray(store.loss[:, skip_epochs:], dtype=np.float64)
    labels = store.labels
    counts = np.bincount(labels, minlength=int(labels.max()) + 1).astype(np.float64)
    present = counts > 0
    sums = np.zeros((len(counts), curves.shape[1]))
    np.add.at(sums, labels, curves)
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=present[:, None])
    centred = curves - means[labels]
    if normalize_std:
        squares = np.zeros_like(sums)
        np.add.at(squares, labels, centred**2)
        std = np.sqrt(np.divide(squares, counts[:, None], out=np.zeros_like(sums), where=present[:, None]))
        centred = centred / np.maximum(std[labels], 1e-8)
    return centred.astype(np.float32)


def lowest_loss_rows(store: CurveStore, per_class: int) -> np.ndarray:
    """The `per_class` samples of each given class with the lowest mean probe loss: a meta set without clean
    data (paper Table 7)."""
    mean_loss = np.nanmean(store.loss[:], axis=1)
    labels = store.labels
    rows = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rows.append(members[np.argsort(mean_loss[members], kind="stable")[:per_class]])
    return np.sort(np.concatenate(rows))
