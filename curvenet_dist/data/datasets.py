"""From the data config to the splits a run trains and tests on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curvenet_dist.config import BiasConfig, DataConfig
from curvenet_dist.data.bias import apply_bias
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
    dataset = load_source(data)
    biased = apply_bias(dataset.splits["train"], bias, data.train_per_class)
    test = dataset.splits.get("test") or dataset.splits.get("val")
    if test is None or len(test) == 0:
        raise DataError(f"{dataset.folder}: the dataset has neither a test.csv nor a val.csv split to evaluate on")
    return Splits(dataset.class_names, biased.train, biased.carved_meta, dataset.splits.get("meta"), test)


def shot_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Many/medium/few-shot classes: the thirds of the classes ranked by training count (head to tail).
    Thirds rather than fixed counts (>100, 20-100, <20) so small datasets have all three groups."""
    order = np.argsort(-train_counts, kind="stable")
    thirds = np.array_split(order, 3)
    return {"many": np.sort(thirds[0]), "medium": np.sort(thirds[1]), "few": np.sort(thirds[2])}
