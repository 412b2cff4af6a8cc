"""The allocate stage's outputs in the run folder: weights, noise-detection scores, suspects, figures.

`python -m curvenet_dist.report RUN_DIR [--top K]` draws `suspects.png` again for a finished allocate run.
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from curvenet_dist.data.datasets import Splits
from curvenet_dist.data.sample_table import DataError, SampleTable
from curvenet_dist.tracking.mlflow_tracker import log_to_active_run
from curvenet_dist.tracking.plots import plot_confusion_matrix, plot_suspects, plot_weights_by_class

SUSPECTS_CSV = "suspects.csv"
SUSPECTS_FIGURE = "suspects.png"
SUSPECTS_HEADER = ["rank", "sample_id", "path", "weight", "given_label", "predicted_label", "true_label"]
TOP_SUSPECTS = 24
"""How many suspects suspects.png shows by default."""


def noise_detection_scores(weights: np.ndarray, mislabeled: np.ndarray) -> dict[str, float]:
    """How well a low weight flags a mislabeled sample: AUROC and average precision with mislabeled as the
    positive class and 1 - weight as the score. Empty when there is only one kind of sample."""
    if mislabeled.all() or not mislabeled.any():
        return {}
    score = 1.0 - weights
    return {"noise_auroc": float(roc_auc_score(mislabeled, score)),
            "noise_ap": float(average_precision_score(mislabeled, score))}


def within_class_auroc(weights: np.ndarray, labels: np.ndarray, mislabeled: np.ndarray) -> float | None:
    """The noise AUROC of the weights inside each given-label class holding both clean and mislabeled samples,
    averaged over those classes (None if there is none). Unlike the pooled AUROC it ignores how whole classes
    compare, which a weight computed from class-centred curves cannot know: where noise rates differ by class,
    a high-noise class's loss level alone flags its samples."""
    aurocs = [roc_auc_score(mislabeled[labels == c], -weights[labels == c]) for c in np.unique(labels)
              if 0 < mislabeled[labels == c].sum() < (labels == c).sum()]
    return float(np.mean(aurocs)) if aurocs else None


def mean_loss_detector(mean_loss: np.ndarray, labels: np.ndarray, true_labels: np.ndarray) -> dict[str, float | None]:
    """The trivial noise detector's AUROC, pooled and within the classes: a sample's mean probe loss, higher =
    more likely mislabeled, against its true label."""
    mislabeled = labels != true_labels
    # The scores flag low weights; the negated loss ranks the samples exactly as the loss does.
    return {"detector_auroc": noise_detection_scores(-mean_loss, mislabeled).get("noise_auroc"),
            "detector_auroc_within_class": within_class_auroc(-mean_loss, labels, mislabeled)}


def class_relative(weights: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each weight divided by the mean weight of its given class. CurveNet's weight carries a per-class factor
    that rebalances the long tail (tail classes up, head classes down); a mislabeled sample is one whose weight is
    low *for its class*, so noise detection and the suspects' order use this ratio."""
    sums = np.bincount(labels, weights=weights)
    counts = np.bincount(labels)
    means = np.divide(sums, counts, out=np.ones_like(sums), where=counts > 0)
    return weights / np.maximum(means[labels], 1e-12)


def weight_spread(weights: np.ndarray, labels: np.ndarray) -> float:
    """The standard deviation of the class-relative weight (1 on average): 0 when every sample of a class weighs
    the same, as when the weighting net never moved from its initial output."""
    return float(class_relative(weights.astype(np.float64), labels).std())


def audited_noise_scores(weights: np.ndarray, train: SampleTable) -> dict[str, float]:
    """`noise_detection_scores` of the class-relative weight over the training samples whose true label is known
    (all of them under synthetic noise, the audited ones of a prepared dataset); empty where none is."""
    known = train.true_labels >= 0
    if not known.any():
        return {}
    return noise_detection_scores(class_relative(weights, train.labels)[known],
                                  train.labels[known] != train.true_labels[known])


@dataclass
class Suspect:
    """One row of suspects.csv: a training sample and why it is suspected."""

    path: str
    weight: float
    given: str
    predicted: str
    true: str
    """The true label's name where an audit (or the synthetic noise) knows it, else ''."""


def suspect_order(weights: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Sample ids, most likely mislabeled first: lowest class-relative weight, ties broken by the model
    disagreeing."""
    return np.lexsort((predictions == labels, class_relative(weights, labels)))


def csv_field(text: str) -> str:
    """`text` as one CSV field: quoted (quotes doubled) where it holds a comma, quote or line break."""
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def write_suspects(path: Path, splits: Splits, weights: np.ndarray, predictions: np.ndarray) -> list[Suspect]:
    """Every training sample in suspect order into `path`; returns the first TOP_SUSPECTS rows."""
    train = splits.train
    order = suspect_order(weights, train.labels, predictions)
    names = [*map(csv_field, splits.class_names), ""]  # index -1 (true label unknown) is ''
    paths = train.paths
    joined = "".join(paths)
    if any(mark in joined for mark in ',"\n\r'):
        paths = [csv_field(path) for path in paths]
    # One f-string per row over plain lists, written at once: row by row through numpy scalars and csv.writer took
    # 2.3 times as long for a million rows.
    rows = zip(range(1, len(order) + 1), order.tolist(), weights[order].tolist(), train.labels[order].tolist(),
               predictions[order].tolist(), train.true_labels[order].tolist())
    with open(path, "w", newline="") as f:
        f.write(",".join(SUSPECTS_HEADER) + "\n")
        f.write("".join([f"{rank},{i},{paths[i]},{weight:.6f},{names[given]},{names[predicted]},{names[true]}\n"
                         for rank, i, weight, given, predicted, true in rows]))
    return [Suspect(train.paths[i], float(weights[i]), splits.class_names[train.labels[i]],
                    splits.class_names[predictions[i]],
                    splits.class_names[train.true_labels[i]] if train.true_labels[i] >= 0 else "")
            for i in order[:TOP_SUSPECTS].tolist()]


def read_suspects(path: Path, top: int) -> list[Suspect]:
    """The first `top` rows of a suspects.csv."""
    if not path.is_file():
        raise DataError(f"{path}: missing; is {path.parent} a finished allocate run folder?")
    suspects = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != SUSPECTS_HEADER:
            raise DataError(f"{path}:1: expected the header '{','.join(SUSPECTS_HEADER)}', found {header}")
        for line_number, row in enumerate(reader, start=2):
            if len(suspects) == top:
                break
            if len(row) != len(SUSPECTS_HEADER):
                raise DataError(f"{path}:{line_number}: expected {len(SUSPECTS_HEADER)} fields, found {len(row)}")
            _, _, sample_path, weight, given, predicted, true = row
            suspects.append(Suspect(sample_path, float(weight), given, predicted, true))
    return suspects


def draw_suspects(suspects: list[Suspect], image_root: Path, path: Path) -> Path:
    """suspects.png: each suspect's image captioned with its given label, the prediction, its weight and (where
    known) its true label."""
    captions = []
    for s in suspects:
        caption = f"given {s.given}, model {s.predicted}\nweight {s.weight:.3f}"
        if s.true:
            caption += f"\ntrue {s.true}" + (" (mislabeled)" if s.true != s.given else " (correct)")
        captions.append(caption)
    return plot_suspects([image_root / s.path for s in suspects], captions, path)


def write_allocate_report(run_dir: Path, splits: Splits, weights: np.ndarray, train_predictions: np.ndarray,
                          test_predictions: np.ndarray, ranks_samples: bool) -> dict[str, float]:
    """weights.npy, suspects.csv, suspects.png (logged to the process's MLflow run) and the figures; returns the noise-detection scores, computed on
    the training samples whose true label is known (all of them under synthetic noise, the audited ones of a
    prepared dataset) with `noise_scored_samples` saying how many."""
    train = splits.train
    np.save(run_dir / "weights.npy", weights.astype(np.float32))
    top = write_suspects(run_dir / SUSPECTS_CSV, splits, weights, train_predictions)
    log_to_active_run(draw_suspects(top, train.image_root, run_dir / SUSPECTS_FIGURE))
    plot_confusion_matrix(splits.test.labels, test_predictions, splits.class_names, run_dir / "confusion_matrix.png")
    known = train.true_labels >= 0
    if not known.any():
        return {}
    mislabeled = train.labels[known] != train.true_labels[known]
    plot_weights_by_class(weights[known], train.labels[known], mislabeled, splits.class_names,
                          run_dir / "weights_by_class.png")
    if not ranks_samples:  # one weight per class at most: nothing to rank within a class
        return {}
    scores = audited_noise_scores(weights, train)
    if scores:
        scores["noise_auroc_raw"] = noise_detection_scores(weights[known], mislabeled)["noise_auroc"]
        within = within_class_auroc(weights[known], train.labels[known], mislabeled)
        if within is not None:
            scores["noise_auroc_within_class"] = within
        scores["noise_scored_samples"] = int(known.sum())
        print(f"noise detection scored on the {int(known.sum())} of {len(train)} training samples whose true label "
              f"is known ({int(mislabeled.sum())} mislabeled): AUROC {scores['noise_auroc']:.3f} of the class-relative "
              f"weight ({scores['noise_auroc_raw']:.3f} of the weight itself"
              + (f", {within:.3f} within the classes)" if within is not None else ")"), flush=True)
    return scores


def redraw(run_dir: Path, top: int) -> Path:
    """suspects.png of a finished allocate run, from its suspects.csv and the images its config names."""
    from curvenet_dist.config import load_config
    from curvenet_dist.data.datasets import load_source

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise DataError(f"{config_file}: missing; is {run_dir} an allocate run folder?")
    suspects = read_suspects(run_dir / SUSPECTS_CSV, top)
    image_root = load_source(load_config(config_file).data).splits["train"].image_root
    return draw_suspects(suspects, image_root, run_dir / SUSPECTS_FIGURE)


def main(argv: list[str]) -> int:
    from curvenet_dist.config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.report",
                                     description="Draw suspects.png of an allocate run folder again.")
    parser.add_argument("run_dir", type=Path, help="an allocate run folder (holding suspects.csv and config.yaml)")
    parser.add_argument("--top", type=int, default=TOP_SUSPECTS, help="how many suspects to show")
    arguments = parser.parse_args(argv)
    if arguments.top < 1:
        parser.error(f"--top {arguments.top}: must be at least 1")
    try:
        print(f"wrote {redraw(arguments.run_dir, arguments.top)}")
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
