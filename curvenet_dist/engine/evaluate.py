"""Clean-test accuracy: overall, per class and many/medium/few-shot, counting every test sample once."""
from __future__ import annotations

import numpy as np
import torch

from curvenet_dist.curves.gather import all_gather_concat
from curvenet_dist.data.datasets import shot_groups


def predict(model: torch.nn.Module, loader, device: torch.device, num_samples: int, autocast) -> np.ndarray:
    """Every sample's predicted class, indexed by id (padding repeats dropped)."""
    model.eval()
    ids, predictions = [], []
    with torch.no_grad():
        for images, _, batch_ids in loader:
            with autocast():
                logits = model(images.to(device, non_blocking=True))
            predictions.append(logits.argmax(1))
            ids.append(batch_ids.to(device))
    model.train()
    all_ids = all_gather_concat(torch.cat(ids)).cpu().numpy()
    all_predictions = all_gather_concat(torch.cat(predictions)).cpu().numpy()
    unique_ids, first = np.unique(all_ids, return_index=True)
    assert len(unique_ids) == num_samples, "the evaluation loader must cover every test sample"
    out = np.empty(num_samples, np.int64)
    out[unique_ids] = all_predictions[first]
    return out


def accuracy_report(predictions: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict:
    """test_acc, per_class_acc (list), many_acc, medium_acc, few_acc: fractions."""
    num_classes = len(train_counts)
    correct = predictions == labels
    per_class = np.array([correct[labels == c].mean() if np.any(labels == c) else np.nan for c in range(num_classes)])
    report = {"test_acc": float(correct.mean()), "per_class_acc": [round(float(a), 4) for a in per_class]}
    for group, classes in shot_groups(train_counts).items():
        report[f"{group}_acc"] = float(np.nanmean(per_class[classes])) if len(classes) else float("nan")
    return report
