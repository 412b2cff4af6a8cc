"""The allocate stage's outputs in the run folder: weights, noise-detection scores, suspects, figures."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from curvenet_dist.data.datasets import Splits
from curvenet_dist.tracking.plots import plot_confusion_matrix, plot_weights_by_class


def noise_detection_scores(weights: np.ndarray, mislabeled: np.ndarray) -> dict[str, float]:
    """How well a low weight flags a mislabeled sample: AUROC and average precision with mislabeled as the
    positive class and 1 - weight as the score. Empty when there is only one kind of sample."""
    if mislabeled.all() or not mislabeled.any():
        return {}
    score = 1.0 - weights
    return {"noise_auroc": float(roc_auc_score(mislabeled, score)),
            "noise_ap": float(average_precision_score(mislabeled, score))}


def write_suspects(path: Path, splits: Splits, weights: np.ndarray, predictions: np.ndarray) -> None:
    """Every training sample, most likely mislabeled first (lowest weight; ties by the model disagreeing)."""
    train = splits.train
    disagrees = predictions != train.labels
    order = np.lexsort((~disagrees, weights))
    names = splits.class_names
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "sample_id", "path", "weight", "given_label", "predicted_label", "true_label"])
        for rank, i in enumerate(order, start=1):
            true = names[train.true_labels[i]] if train.true_labels[i] >= 0 else ""
            writer.writerow([rank, int(i), train.paths[i], f"{weights[i]:.6f}", names[train.labels[i]],
                             names[predictions[i]], true])


def write_allocate_report(run_dir: Path, splits: Splits, weights: np.ndarray, train_predictions: np.ndarray,
                          test_predictions: np.ndarray, method: str) -> dict[str, float]:
    train = splits.train
    np.save(run_dir / "weights.npy", weights.astype(np.float32))
    write_suspects(run_dir / "suspects.csv", splits, weights, train_predictions)
    plot_confusion_matrix(splits.test.labels, test_predictions, splits.class_names, run_dir / "confusion_matrix.png")
    scores: dict[str, float] = {}
    if train.has_true_labels:
        mislabeled = train.labels != train.true_labels
        plot_weights_by_class(weights, train.labels, mislabeled, splits.class_names, run_dir / "weights_by_class.png")
        if method != "ce":
            scores = noise_detection_scores(weights, mislabeled)
    return scores
