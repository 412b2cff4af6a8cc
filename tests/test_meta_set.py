import numpy as np
import pytest

from curvenet_dist.config import ConfigError, MetaConfig
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.data.datasets import Splits
from curvenet_dist.data.sample_table import DataError, SampleTable
from curvenet_dist.meta.meta_set import select_meta_set


def table(labels, true_labels=None):
    labels = np.asarray(labels)
    return SampleTable(None, [f"{i}.png" for i in range(len(labels))], labels,
                       labels if true_labels is None else np.asarray(true_labels), 3)


def splits(provided_meta=None, carved=None):
    return Splits(["a", "b", "c"], table([0, 0, 1, 1, 2, 2]), carved or table([]), provided_meta, table([0, 1, 2]))


def store_with_losses(tmp_path, losses):
    labels = np.array([0, 0, 1, 1, 2, 2])
    store = CurveStore.open_or_create(tmp_path / "c.zarr", fingerprint="f", dataset_fingerprint="d", labels=labels,
                                      true_labels=labels, num_epochs=1)
    store.write_epoch(0, np.asarray(losses, np.float32), lr=0.1)
    return store


def test_a_provided_meta_split_missing_a_class_is_named(tmp_path):
    store = store_with_losses(tmp_path, [1, 2, 3, 4, 5, 6])
    with pytest.raises(DataError, match="has no samples of class\\(es\\) c"):
        select_meta_set(MetaConfig(source="split"), splits(provided_meta=table([0, 1, 1])), store)


def test_lowest_loss_meta_set_takes_the_k_lowest_per_given_class(tmp_path):
    store = store_with_losses(tmp_path, [5, 1, 0.5, 9, 7, 3])
    meta = select_meta_set(MetaConfig(source="lowest_loss", per_class=1), splits(), store)
    assert meta.paths == ["1.png", "2.png", "5.png"]


def test_carved_source_needs_a_carve_out(tmp_path):
    store = store_with_losses(tmp_path, [1, 2, 3, 4, 5, 6])
    with pytest.raises(ConfigError, match="carved no meta set"):
        select_meta_set(MetaConfig(source="carved"), splits(), store)
