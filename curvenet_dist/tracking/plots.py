"""Figures written into the run folder (and logged as artifacts)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def pyplot():
    """matplotlib.pyplot with the file-only backend, imported on first use: it costs seconds of every start-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(loss: np.ndarray, labels: np.ndarray, true_labels: np.ndarray, path: Path) -> Path | None:
    """Mean ± std loss curve of clean vs mislabeled samples of the head and the tail class (paper Fig. 1), over
    the samples whose true label is known. Returns None when no class holds both kinds."""
    known = true_labels >= 0
    loss, labels, true_labels = loss[known], labels[known], true_labels[known]
    plt = pyplot()
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
    plt = pyplot()
    counts = np.bincount(labels, minlength=len(class_names))
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(class_names)), 3.8))
    for kind, offset, color, mask in (("clean", -0.18, "tab:blue", ~mislabeled), ("mislabeled", 0.18, "tab:orange", mislabeled)):
        data = [weights[(labels == c) & mask] for c in range(len(class_names))]
        positions = [c + offset for c in range(len(class_names)) if len(data[c])]
        if not positions:  # e.g. an audit that found no mislabeled sample
            continue
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
    plt = pyplot()
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


def plot_suspects(images: list[Path], captions: list[str], path: Path, columns: int = 6) -> Path:
    """The suspects' images in a grid, most suspect first, each under its caption."""
    plt = pyplot()
    rows = max(1, math.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for rank, (axis, image_path, caption) in enumerate(zip(axes.flat, images, captions), start=1):
        try:
            with Image.open(image_path) as image:
                axis.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
        except (OSError, UnidentifiedImageError):
            axis.text(0.5, 0.5, "image\nunreadable", ha="center", va="center", transform=axis.transAxes)
        axis.set_title(f"#{rank}: {caption}", fontsize=7.5, loc="left")
    figure.suptitle("Suspected label errors, most likely first", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
