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


def plot_weights_by_class(weights: np.ndarray, labels: np.ndarray, mislabeled: np.ndarray, class_names: list[str],
                          path: Path) -> Path:
    """Per given class, the weight distribution of clean vs mislabeled samples (paper Fig. 5)."""
    counts = np.bincount(labels, minlength=len(class_names))
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(class_names)), 3.8))
    for kind, offset, color, mask in (("clean", -0.18, "tab:blue", ~mislabeled), ("mislabeled", 0.18, "tab:orange", mislabeled)):
        data = [weights[(labels == c) & mask] for c in range(len(class_names))]
        positions = [c + offset for c in range(len(class_names)) if len(data[c])]
        parts = axis.boxplot([d for d in data if len(d)], positions=positions, widths=0.3, patch_artist=True,
                             showfliers=False)
        for box in parts["boxes"]:
            box.set_facecolor(color)
        axis.plot([], [], color=color, linewidth=8, label=kind)
    axis.set_xticks(range(len(class_names)), [f"{name}\n({n})" for name, n in zip(class_names, counts)], fontsize=8)
    axis.set_ylabel("sample weight")
    axis.set_xlabel("given class (training samples)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_confusion_matrix(true: np.ndarray, predicted: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Row-normalised test confusion matrix (paper Fig. 6)."""
    size = len(class_names)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (true, predicted), 1)
    matrix /= np.maximum(matrix.sum(1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(max(4, 0.45 * size + 2), max(4, 0.45 * size + 1.5)))
    image = axis.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    if size <= 20:
        axis.set_xticks(range(size), class_names, rotation=90, fontsize=7)
        axis.set_yticks(range(size), class_names, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
