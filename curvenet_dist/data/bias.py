"""Synthetic bias, Meta-Weight-Net conventions (DESIGN.md §1): meta carve-out, long tail, label noise.

Counts are exact rather than Bernoulli draws for uniform/flip/flip2/pair/instance, so a config's imbalance factor
and noise rate are what the data really has; `proportional` is the CurveNet reference code's per-sample model.
Every step is seeded, and true labels are kept so noise detection can be scored.

`instance` noise errs as web labels do, on look-alike images: a simple model over the pixels scores every training
sample (after the long tail) without having seen it, and in each true class c the round(rate * n_c) samples it
finds most confusable take the class it confuses them with. The model: each image as 16x16 grayscale pixels in
[0, 1], whitened onto the principal components holding 99% of their variance, then a logistic regression, fit on
the clean labels in 3 stratified folds (seeded), each sample's class probabilities from the fit on the other two
folds. A sample's confusability is its highest probability of a class other than c; that class is its new label.
The fit is deterministic (one BLAS thread), so every rank and stage derives the same labels.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from curvenet_dist.config import BiasConfig
from curvenet_dist.data.sample_table import DataError, SampleTable


def carve_meta(labels: np.ndarray, num_classes: int, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a clean, balanced meta set (`per_class` of each class) and the remaining rows."""
    if per_class == 0:
        return np.zeros(0, np.int64), np.arange(len(labels))
    meta_rows = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) <= per_class:
            raise DataError(
                f"class {c} has {len(rows)} training samples: too few to carve {per_class} meta samples "
                f"(bias.meta_per_class) and keep any for training"
            )
        meta_rows.append(rng.choice(rows, per_class, replace=False))
    meta = np.sort(np.concatenate(meta_rows))
    return meta, np.setdiff1d(np.arange(len(labels)), meta)


def long_tail_counts(available: np.ndarray, imbalance_factor: float) -> np.ndarray:
    """n_c = n_max * mu^(c/(C-1)) with mu = 1/imbalance_factor; n_max is the smallest class's size so every
    class can supply its count."""
    num_classes = len(available)
    n_max = int(available.min())
    if num_classes == 1 or imbalance_factor == 1:
        return np.full(num_classes, n_max)
    exponents = np.arange(num_classes) / (num_classes - 1)
    return np.maximum(1, np.round(n_max * (1.0 / imbalance_factor) ** exponents)).astype(np.int64)


def class_balanced_subset(labels: np.ndarray, num_classes: int, per_class: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Sorted rows of `per_class` random samples of each class (all of a smaller class)."""
    rows = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(rows))


def noise_targets(num_classes: int, noise_type: str, rng: np.random.Generator) -> np.ndarray:
    """For `flip` and `flip2`: each class's fixed other classes its labels flip to, shape [C, 1 or 2]. For
    `pair`: the next class in a seeded cycle through all classes, so each class receives the errors of exactly
    one other, in an order unrelated to the long tail's (a head class's errors can swamp a small class)."""
    if noise_type == "pair":
        cycle = rng.permutation(num_classes)
        targets = np.empty((num_classes, 1), np.int64)
        targets[cycle, 0] = np.roll(cycle, -1)
        return targets
    width = 1 if noise_type == "flip" else 2
    targets = np.zeros((num_classes, width), np.int64)
    for c in range(num_classes):
        others = np.delete(np.arange(num_classes), c)
        targets[c] = rng.choice(others, width, replace=False)
    return targets


def corrupt_labels(true_labels: np.ndarray, num_classes: int, noise_type: str, rate: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Given labels: in every class exactly round(rate * n_c) samples are corrupted. `uniform` draws any class,
    the true one included (so the effective rate is rate * (C-1)/C); `flip` sends them to one other class;
    `pair` to the next class of one cycle through all classes; `flip2` sends half to each of two other classes. `proportional` (the CurveNet reference code's model) instead
    redraws each label with probability `rate`, the new class drawn in proportion to the class sizes (the true
    one included): every *given*-label class then holds about rate * (1 - n_c/N) mislabeled samples, where
    exact-count flip2 on a long tail can leave a tail given-label class mostly mislabeled."""
    labels = true_labels.copy()
    if noise_type == "none" or rate == 0:
        return labels
    if noise_type == "proportional":
        sizes = np.bincount(true_labels, minlength=num_classes)
        redrawn = np.flatnonzero(rng.random(len(labels)) < rate)
        labels[redrawn] = rng.choice(num_classes, len(redrawn), p=sizes / sizes.sum())
        return labels
    targets = noise_targets(num_classes, noise_type, rng) if noise_type != "uniform" else None
    for c in range(num_classes):
        rows = np.flatnonzero(true_labels == c)
        chosen = rng.permutation(rows)[: round(rate * len(rows))]
        if noise_type == "uniform":
            labels[chosen] = rng.integers(0, num_classes, len(chosen))
        elif noise_type in ("flip", "pair"):
            labels[chosen] = targets[c, 0]
        else:
            half = len(chosen) // 2
            labels[chosen[:half]] = targets[c, 0]
            labels[chosen[half:]] = targets[c, 1]
    return labels


INSTANCE_IMAGE_SIZE = 16
INSTANCE_FOLDS = 3


def image_pixels(table: SampleTable) -> np.ndarray:
    """[N, 16*16] every image of `table` as grayscale pixels in [0, 1], decoded in threads (Pillow's decoders
    release the GIL)."""
    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                small = image.convert("L").resize((INSTANCE_IMAGE_SIZE, INSTANCE_IMAGE_SIZE), Image.Resampling.BILINEAR)
        except (OSError, Image.DecompressionBombError) as error:
            raise DataError(f"{path}: cannot be read to score bias.noise_type=instance: {error}") from None
        return np.asarray(small, np.float32).ravel() / 255

    with ThreadPoolExecutor() as pool:
        return np.stack(list(pool.map(read, (table.image_root / path for path in table.paths))))


def out_of_fold_probabilities(pixels: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """[N, C] each sample's class probabilities from a pixel model fit on the other folds (module docstring)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from threadpoolctl import threadpool_limits

    model = make_pipeline(PCA(0.99, whiten=True), LogisticRegression())
    folds = StratifiedKFold(INSTANCE_FOLDS, shuffle=True, random_state=seed)
    # One thread: the same floats whatever the thread count of the stage, so probe and allocate agree on the labels.
    with threadpool_limits(1):
        return cross_val_predict(model, pixels, labels, cv=folds, method="predict_proba")


def confusable_labels(true_labels: np.ndarray, probabilities: np.ndarray, rate: float) -> np.ndarray:
    """In every class c exactly round(rate * n_c) samples relabeled: those with the highest probability of a class
    other than c, each to that class."""
    others = probabilities.copy()
    others[np.arange(len(true_labels)), true_labels] = -1
    confused_with, confusion = others.argmax(1), others.max(1)
    labels = true_labels.copy()
    for c in range(probabilities.shape[1]):
        rows = np.flatnonzero(true_labels == c)
        chosen = rows[np.argsort(-confusion[rows], kind="stable")[: round(rate * len(rows))]]
        labels[chosen] = confused_with[chosen]
    return labels


def instance_noise(table: SampleTable, true_labels: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """`table`'s labels with instance-dependent noise (module docstring)."""
    counts = np.bincount(true_labels, minlength=table.num_classes)
    if counts.min() < INSTANCE_FOLDS:
        raise DataError(f"{table.origin}: class {int(np.argmin(counts))} has {counts.min()} training samples; "
                        f"bias.noise_type=instance needs {INSTANCE_FOLDS} of every class to score each sample "
                        f"with a model that did not see it")
    probabilities = out_of_fold_probabilities(image_pixels(table), true_labels, int(rng.integers(2**31)))
    return confusable_labels(true_labels, probabilities, rate)


@dataclass
class BiasedSplit:
    train: SampleTable
    """The biased training set: long-tailed, given labels corrupted, true labels kept."""
    carved_meta: SampleTable
    """Clean, balanced samples carved out before corruption (empty when bias.meta_per_class is 0)."""


def noise_rate_by_class(table: SampleTable) -> np.ndarray:
    """[C] the fraction of each given-label class whose true label differs (NaN for an empty class or where no
    true labels are known)."""
    known = table.true_labels >= 0
    wrong = np.bincount(table.labels[known], weights=table.labels[known] != table.true_labels[known],
                        minlength=table.num_classes)
    counts = np.bincount(table.labels[known], minlength=table.num_classes)
    return np.divide(wrong, counts, out=np.full(table.num_classes, np.nan), where=counts > 0)


def apply_bias(table: SampleTable, config: BiasConfig, train_per_class: int = 0) -> BiasedSplit:
    """Optionally a class-balanced subset (`train_per_class` > 0), then carve the meta set, then the long tail,
    then label noise on the training part only."""
    rng = np.random.default_rng(config.seed)
    if train_per_class:
        table = table.select(class_balanced_subset(table.labels, table.num_classes, train_per_class, rng))
    # Carving and the tail select by the clean labels: the source split is assumed clean where true labels exist.
    clean = np.where(table.true_labels >= 0, table.true_labels, table.labels)
    meta_rows, rest = carve_meta(clean, table.num_classes, config.meta_per_class, rng)
    available = np.bincount(clean[rest], minlength=table.num_classes)
    if config.imbalance_factor > 1:
        if (available == 0).any():
            raise DataError(f"{table.origin}: class {int(np.argmin(available))} has no training samples; "
                            f"bias.imbalance_factor={config.imbalance_factor} needs samples of every class")
        counts = long_tail_counts(available, config.imbalance_factor)
        rest = np.sort(np.concatenate([
            rng.choice(rest[clean[rest] == c], counts[c], replace=False) for c in range(table.num_classes)
        ]))
    train = table.select(rest)
    if config.noise_type != "none" and config.noise_rate > 0:
        # Synthetic noise on top of the source's labels: those labels become the truth to score against.
        if config.noise_type == "instance":
            train.labels = instance_noise(train, clean[rest], config.noise_rate, rng)
        else:
            train.labels = corrupt_labels(clean[rest], table.num_classes, config.noise_type, config.noise_rate, rng)
        train.true_labels = clean[rest]
    return BiasedSplit(train=train, carved_meta=table.select(meta_rows))
