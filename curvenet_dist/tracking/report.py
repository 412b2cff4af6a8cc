"""The allocate stage's outputs in the run folder: weights, noise-detection scores, suspects, figures.

`python -m curvenet_dist.report RUN_DIR [--top K]` draws `suspects.png` again for a finished allocate run;
`--export-clean OUT` writes the run's training list without the flagged samples, `--relabel OUT` with each flagged
sample's label replaced by the model's prediction.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.compute as pyarrow_compute
from pyarrow import csv as pyarrow_csv
from sklearn.metrics import average_precision_score, roc_auc_score

from curvenet_dist.config import Config, ConfigError, load_config
from curvenet_dist.data.datasets import Splits, load_source
from curvenet_dist.data.sample_table import UNKNOWN, DataError, PreparedDataset, SampleTable
from curvenet_dist.tracking.mlflow_tracker import log_to_active_run
from curvenet_dist.tracking.plots import plot_confusion_matrix, plot_suspects, plot_weights_by_class
from curvenet_dist.tracking.suspects import flag_wrong_labels, flagged_scores, suspect_scores

SUSPECTS_CSV = "suspects.csv"
SUSPECTS_FIGURE = "suspects.png"
SUSPECTS_COLUMNS = {"rank": pyarrow.int64(), "sample_id": pyarrow.int64(), "path": pyarrow.string(),
                    "weight": pyarrow.float32(), "given_label": pyarrow.string(), "predicted_label": pyarrow.string(),
                    "true_label": pyarrow.string(), "score": pyarrow.float32(), "flagged": pyarrow.bool_()}
SUSPECTS_HEADER = list(SUSPECTS_COLUMNS)
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
    compare, which a class-relative weight cannot show: where noise rates differ by class, a high-noise class's
    loss level alone flags its samples."""
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


def weight_change(previous: np.ndarray, current: np.ndarray, labels: np.ndarray) -> float:
    """How far the class-relative weights moved between two epochs: the mean absolute change over the current
    spread (std). Weights still moving this much just before the freeze have not settled."""
    relative = class_relative(current.astype(np.float64), labels)
    change = np.abs(relative - class_relative(previous.astype(np.float64), labels)).mean()
    return float(change / max(relative.std(), 1e-12))


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
    score: float
    given: str
    predicted: str
    true: str
    """The true label's name where an audit (or the synthetic noise) knows it, else ''."""


def suspect_order(scores: np.ndarray) -> np.ndarray:
    """Sample ids, most likely mislabeled (highest score) first."""
    return np.argsort(-scores, kind="stable")


def write_suspects(path: Path, splits: Splits, weights: np.ndarray, predictions: np.ndarray, scores: np.ndarray,
                   flagged: np.ndarray) -> list[Suspect]:
    """Every training sample in suspect order into `path`; returns the first TOP_SUSPECTS rows."""
    train = splits.train
    order = suspect_order(scores)
    names = np.array([*splits.class_names, ""], dtype=object)  # index -1 (true label unknown) is ''
    columns = {"rank": np.arange(1, len(order) + 1), "sample_id": order,
               "path": pyarrow.array(train.paths, pyarrow.string()).take(order), "weight": weights[order],
               "given_label": names[train.labels[order]], "predicted_label": names[predictions[order]],
               "true_label": names[train.true_labels[order]], "score": scores[order], "flagged": flagged[order]}
    pyarrow_csv.write_csv(pyarrow.table(columns, schema=pyarrow.schema(SUSPECTS_COLUMNS.items())), path)
    return [Suspect(train.paths[i], float(weights[i]), float(scores[i]), splits.class_names[train.labels[i]],
                    splits.class_names[predictions[i]],
                    splits.class_names[train.true_labels[i]] if train.true_labels[i] >= 0 else "")
            for i in order[:TOP_SUSPECTS].tolist()]


def read_suspects_table(path: Path) -> pyarrow.Table:
    """Every row of a suspects.csv, its columns typed."""
    if not path.is_file():
        raise DataError(f"{path}: missing; is {path.parent} a finished allocate run folder?")
    try:
        table = pyarrow_csv.read_csv(path, convert_options=pyarrow_csv.ConvertOptions(
            column_types=SUSPECTS_COLUMNS, strings_can_be_null=False, null_values=[]))
    except (pyarrow.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: cannot be read as a suspects list: {error}") from None
    if table.column_names != SUSPECTS_HEADER:
        raise DataError(f"{path}:1: expected the header '{','.join(SUSPECTS_HEADER)}', found "
                        f"'{','.join(table.column_names)}'")
    return table


def read_suspects(path: Path, top: int) -> list[Suspect]:
    """The first `top` rows of a suspects.csv."""
    rows = read_suspects_table(path).slice(0, top).to_pylist()
    return [Suspect(row["path"], row["weight"], row["score"], row["given_label"], row["predicted_label"],
                    row["true_label"]) for row in rows]


def draw_suspects(suspects: list[Suspect], image_root: Path, path: Path) -> Path:
    """suspects.png: each suspect's image captioned with its given label, the prediction, its score and weight and
    (where known) its true label."""
    captions = []
    for s in suspects:
        caption = f"given {s.given}, model {s.predicted}\nscore {s.score:.3f}, weight {s.weight:.3f}"
        if s.true:
            caption += f"\ntrue {s.true}" + (" (mislabeled)" if s.true != s.given else " (correct)")
        captions.append(caption)
    return plot_suspects([image_root / s.path for s in suspects], captions, path)


def wrong_labels_report(flagged: np.ndarray, train: SampleTable) -> dict[str, float]:
    """How many samples are flagged, and where true labels are known, how well they match the mislabeled ones."""
    known = train.true_labels >= 0
    report = {"flagged": int(flagged.sum())}
    if known.any():
        report.update(flagged_scores(flagged[known], train.labels[known] != train.true_labels[known]))
    return report


def wrong_labels_line(flagged: int, num_samples: int) -> str:
    """The line an allocate run ends with: what the user acts on next."""
    return (f"{flagged} labels look wrong ({100 * flagged / num_samples:.1f}% of the training set; per class in "
            f"{SUSPECTS_CSV}); the top {min(TOP_SUSPECTS, num_samples)} in {SUSPECTS_FIGURE}")


def write_allocate_report(run_dir: Path, splits: Splits, weights: np.ndarray, train_predictions: np.ndarray,
                          train_losses: np.ndarray, probe_margins: np.ndarray | None, test_predictions: np.ndarray,
                          ranks_samples: bool) -> dict[str, float]:
    """weights.npy, suspects.csv (ordered by `suspect_scores`), suspects.png (logged to the process's MLflow run)
    and the figures; returns the flagged count with, where true labels are known, the flagged set's precision,
    recall and F1 and the weights' noise-detection scores (on the training samples whose true label is known: all
    of them under synthetic noise, the audited ones of a prepared dataset; `noise_scored_samples` says how many)."""
    train = splits.train
    np.save(run_dir / "weights.npy", weights.astype(np.float32))
    flagged = flag_wrong_labels(train_losses, train.labels, train_predictions != train.labels, probe_margins)
    top = write_suspects(run_dir / SUSPECTS_CSV, splits, weights, train_predictions,
                         suspect_scores(train_losses, probe_margins), flagged)
    log_to_active_run(draw_suspects(top, train.image_root, run_dir / SUSPECTS_FIGURE))
    plot_confusion_matrix(splits.test.labels, test_predictions, splits.class_names, run_dir / "confusion_matrix.png")
    report = wrong_labels_report(flagged, train)
    known = train.true_labels >= 0
    if not known.any():
        return report
    mislabeled = train.labels[known] != train.true_labels[known]
    plot_weights_by_class(weights[known], train.labels[known], mislabeled, splits.class_names,
                          run_dir / "weights_by_class.png")
    if not ranks_samples:  # one weight per class at most: nothing to rank within a class
        return report
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
    return {**report, **scores}


def run_config(run_dir: Path) -> Config:
    """An allocate run folder's config.yaml."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise DataError(f"{config_file}: missing; is {run_dir} an allocate run folder?")
    return load_config(config_file)


def redraw(run_dir: Path, top: int) -> Path:
    """suspects.png of a finished allocate run, from its suspects.csv and the images its config names."""
    config = run_config(run_dir)
    suspects = read_suspects(run_dir / SUSPECTS_CSV, top)
    image_root = load_source(config.data).splits["train"].image_root
    return draw_suspects(suspects, image_root, run_dir / SUSPECTS_FIGURE)


def class_indices(table: pyarrow.Table, column: str, dataset: PreparedDataset, path: Path) -> np.ndarray:
    """The class numbers of a label column of a suspects.csv; '' (a true label nobody knows) is UNKNOWN."""
    names = [*dataset.class_names, ""] if column == "true_label" else dataset.class_names
    indices = pyarrow_compute.index_in(table.column(column), value_set=pyarrow.array(names, pyarrow.string()))
    for row in np.flatnonzero(indices.is_null().to_numpy(zero_copy_only=False))[:1]:
        raise DataError(f"{path}:{table.column('rank')[row].as_py() + 1}: {column} "
                        f"{table.column(column)[row].as_py()!r} is not one of the classes of {dataset.folder}")
    indices = indices.to_numpy().astype(np.int64)
    return np.where(indices == dataset.num_classes, UNKNOWN, indices)


@dataclass
class RunTrainingList:
    """An allocate run's training samples in sample-id order, with its model's predictions and its flags."""

    table: SampleTable
    predicted: np.ndarray
    flagged: np.ndarray


def run_training_list(run_dir: Path) -> RunTrainingList:
    """The training list an allocate run used, read back from its suspects.csv (every training sample)."""
    config = run_config(run_dir)
    path = run_dir / SUSPECTS_CSV
    table = read_suspects_table(path).sort_by("sample_id")
    dataset = load_source(config.data)
    if not np.array_equal(table.column("sample_id").to_numpy(), np.arange(len(table))):
        raise DataError(f"{path}: the sample ids are not 0..{len(table) - 1}, each once: not an allocate run's "
                        f"list of every training sample")
    given, predicted, true = (class_indices(table, column, dataset, path)
                              for column in ("given_label", "predicted_label", "true_label"))
    train = SampleTable(dataset.splits["train"].image_root, table.column("path").to_pylist(), given, true,
                        dataset.num_classes, origin=str(path))
    return RunTrainingList(train, predicted, table.column("flagged").to_numpy(zero_copy_only=False))


def write_training_list(table: SampleTable, out: Path) -> None:
    """`table` as a prepared dataset's train.csv (path,label,true_label); an existing file is left alone."""
    if out.exists():
        raise DataError(f"{out}: exists; name a new file")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.write_csv(out)


def export_clean(run_dir: Path, out: Path) -> str:
    """The run's training list without its flagged samples, written to `out`; says what it wrote."""
    run = run_training_list(run_dir)
    kept = np.flatnonzero(~run.flagged)
    write_training_list(run.table.select(kept), out)
    return (f"wrote {out}: {len(kept)} of {len(run.table)} training samples, the {int(run.flagged.sum())} flagged "
            f"left out; paths relative to {run.table.image_root}")


def export_relabeled(run_dir: Path, out: Path) -> str:
    """The run's training list with each flagged sample's label replaced by the model's prediction, written to
    `out`; says what it wrote."""
    run = run_training_list(run_dir)
    labels = np.where(run.flagged, run.predicted, run.table.labels)
    write_training_list(run.table.select(run.table.ids, labels=labels), out)
    return (f"wrote {out}: {len(run.table)} training samples, the {int(run.flagged.sum())} flagged relabeled to the "
            f"model's prediction; paths relative to {run.table.image_root}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curvenet_dist.report",
        description="Draw suspects.png of an allocate run folder again, or write its training list without (or "
                    "relabeled at) the samples it flagged, as a prepared dataset's train.csv.")
    parser.add_argument("run_dir", type=Path, help="an allocate run folder (holding suspects.csv and config.yaml)")
    parser.add_argument("--top", type=int, default=TOP_SUSPECTS, help="how many suspects to show")
    exports = parser.add_mutually_exclusive_group()
    exports.add_argument("--export-clean", type=Path, metavar="OUT",
                         help="write the training list without the flagged samples to OUT")
    exports.add_argument("--relabel", type=Path, metavar="OUT",
                         help="write the training list with each flagged sample's label set to the model's "
                              "prediction to OUT")
    arguments = parser.parse_args(argv)
    if arguments.top < 1:
        parser.error(f"--top {arguments.top}: must be at least 1")
    try:
        if arguments.export_clean:
            print(export_clean(arguments.run_dir, arguments.export_clean))
        elif arguments.relabel:
            print(export_relabeled(arguments.run_dir, arguments.relabel))
        else:
            print(f"wrote {redraw(arguments.run_dir, arguments.top)}")
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
