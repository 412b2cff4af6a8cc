import numpy as np
import pytest

from curvenet_dist.config import ConfigError, MetaConfig
from curvenet_dist.curves.store import CurveStore, CurveStoreError
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


def test_lowest_loss_without_a_probe_store_names_allocate_probe_dir():
    # Dynamic Loss runs without a probe; its clean_meta set can still name meta.source=lowest_loss.
    with pytest.raises(ConfigError, match="meta.source='lowest_loss' ranks samples by their probe losses; set "
                                          "allocate.probe_dir"):
        select_meta_set(MetaConfig(source="lowest_loss", per_class=1), splits(), None)


def test_lowest_loss_refuses_a_store_with_unfinished_epochs(tmp_path):
    labels = np.array([0, 0, 1, 1, 2, 2])
    store = CurveStore.open_or_create(tmp_path / "c.zarr", fingerprint="f", dataset_fingerprint="d", labels=labels,
                                      true_labels=labels, num_epochs=3)
    with pytest.raises(CurveStoreError, match=r"probe epochs \[1, 2, 3\] are not recorded \(0 of 3 are\) and "
                                              r"meta.source=lowest_loss needs them"):
        select_meta_set(MetaConfig(source="lowest_loss", per_class=1), splits(), store)
    store.write_epoch(0, np.arange(6, dtype=np.float32), lr=0.1)
    with pytest.raises(CurveStoreError, match=r"probe epochs \[2, 3\] are not recorded \(1 of 3 are\)"):
        select_meta_set(MetaConfig(source="lowest_loss", per_class=1), splits(), store)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mwnet", "curvenet"])
def test_every_method_stops_with_one_line_on_an_unfinished_store(tmp_path, method):
    from tests.conftest import QUICKSTART, TINY, assert_clean_error, torchrun

    probe_dir = tmp_path / "probe"
    torchrun("probe.py", 1, ["--config", str(QUICKSTART), f"run.dir={probe_dir}", *TINY, "probe.epochs=2"])
    CurveStore.open(probe_dir / "curves.zarr").discard_from(1)  # as a probe killed during its second epoch leaves it
    result = torchrun("allocate.py", 2, ["--config", str(QUICKSTART), f"allocate.probe_dir={probe_dir}",
                                         f"run.dir={tmp_path / 'allocate'}", *TINY, f"method={method}",
                                         "meta.source=lowest_loss", "curvenet.skip_epochs=0"], check=False)
    assert_clean_error(result, "probe epochs [2] are not recorded (1 of 2 are) and meta.source=lowest_loss needs them")
