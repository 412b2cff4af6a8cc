"""Figures written into the run folder (and logged as artifacts)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_loss_curves(loss: np.ndarray, labels: np.ndarray, true_labels: np.ndarray, path: Path) -> Path | None:
    """Mean ± std loss curve of clean vs mislabeled samples of the head and the tail class (paper Fig. 1).
    Returns None when true labels are unknown or no class holds both kinds."""
    if (true_labels < 0).any():
        return None
    noisy = labels != true_labels
    counts = np.bincount(labels)
    usable = [c for c in np.argsort(-counts) if noisy[labels == c].any() and (~noisy[labels == c]).any()]
    if not usable:
        return None
    classes = {"head": usable[0], "tail": usable[-1]}
    epochs = np.arange(1, loss.shape[1] + 1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for axis, (name, c) in zip(axes, classes.items()):
        for kind, mask, color in (("clean", ~noisy, "tab:blue"), ("mislabeled", noisy, "tab:orange")):
            rows = loss[(labels == c) & mask]
            mean, std = rows.mean(0), rows.std(0)
            axis.plot(epochs, mean, color=color, label=f"{kind} (n={len(rows)})")
            axis.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
        axis.set_title(f"{name} class {c} ({counts[c]} samples)")
        axis.set_xlabel("probe epoch")
        axis.legend()
    axes[0].set_ylabel("training loss")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
