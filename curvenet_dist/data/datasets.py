"""From the data config to the splits a run trains and tests on."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curvenet_dist.config import BiasConfig, DataConfig
from curvenet_dist.data.bias import apply_bias, class_balanced_subset, noise_rate_by_class
from curvenet_dist.data.embedded import digits_dataset, fashion_mnist_dataset
from curvenet_dist.data.sample_table import DataError, PreparedDataset, SampleTable


@dataclass
class Splits:
    class_names: list[str]
    train: SampleTable
    """The (biased) training set; its row numbers are the sample ids of the curve store."""
    carved_meta: SampleTable
    """Clean, balanced meta samples carved out before corruption (may be empty)."""
    provided_meta: SampleTable | None
    """The dataset's own clean meta split (Clothing1M clean_train, Food-101N verified), if it has one."""
    test: SampleTable
    """Clean test set for reporting (the dataset's test split, else its val split)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_source(config: DataConfig) -> PreparedDataset:
    if config.source == "digits":
        return digits_dataset(Path(config.path) if config.path else None, config.test_fraction)
    if config.source == "fashion_mnist":
        return fashion_mnist_dataset(Path(config.path) if config.path else None)
    return PreparedDataset.read(Path(config.path))


def build_splits(data: DataConfig, bias: BiasConfig) -> Splits:
    """The run's splits; the first process of a job prints which bias was applied and the split sizes."""
    dataset = load_source(data)
    biased = apply_bias(dataset.splits["train"], bias, data.train_per_class)
    test = dataset.splits.get("test") or dataset.splits.get("val")
    if test is None or len(test) == 0:
        raise DataError(f"{dataset.folder}: the dataset has neither a test.csv nor a val.csv split to evaluate on")
    if data.test_per_class:
        rows = class_balanced_subset(test.labels, test.num_classes, data.test_per_class, np.random.default_rng(0))
        test = test.select(rows)
    splits = Splits(dataset.class_names, biased.train, biased.carved_meta, dataset.splits.get("meta"), test)
    # torchrun numbers the processes of a job in RANK; every one of them builds the same splits.
    if os.environ.get("RANK", "0") == "0":
        print(describe_splits(data, bias, len(dataset.splits["train"]), splits), flush=True)
    return splits


def describe_splits(data: DataConfig, bias: BiasConfig, source_train: int, splits: Splits) -> str:
    """One line: the data, the synthetic bias applied (or none) and the size of every split the run uses."""
    source = f"{data.source} {data.path}" if data.source == "prepared" else data.source
    subset = f", balanced subset of {data.train_per_class}/class" if data.train_per_class else ""
    train = f"train {len(splits.train)}"
    if len(splits.train) != source_train:
        train += f" (of {source_train})"
    parts = [train]
    if len(splits.carved_meta):
        parts.append(f"carved meta {len(splits.carved_meta)}")
    if splits.provided_meta is not None:
        parts.append(f"meta split {len(splits.provided_meta)}")
    parts.append(f"test {len(splits.test)}")
    known = int((splits.train.true_labels >= 0).sum())
    if known:
        parts.append(f"true label known for {known} training samples")
    if bias.noise_type != "none" and bias.noise_rate > 0:
        rates = " ".join(f"{rate:.2f}" for rate in noise_rate_by_class(splits.train))
        parts.append(f"noise rate by given class {rates}")
    return (f"data: {source} ({splits.num_classes} classes){subset}; synthetic bias: {bias.describe()}; "
            f"{', '.join(parts)}")


def shot_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Many/medium/few-shot classes: the thirds of the classes ranked by training count (head to tail).
    Thirds rather than fixed counts (>100, 20-100, <20) so small datasets have all three groups."""
    order = np.argsort(-train_counts, kind="stable")
    thirds = np.array_split(order, 3)
    return {"many": np.sort(thirds[0]), "medium": np.sort(thirds[1]), "few": np.sort(thirds[2])}
