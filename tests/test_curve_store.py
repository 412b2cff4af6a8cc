import numpy as np
import pytest

from curvenet_dist.curves.store import CurveStore, CurveStoreError


def make_store(path, fingerprint="abc", samples=5, epochs=3):
    labels = np.arange(samples) % 2
    return CurveStore.open_or_create(path, fingerprint=fingerprint, dataset_fingerprint='d', labels=labels, true_labels=labels, num_epochs=epochs)


def test_columns_are_complete_only_when_written(tmp_path):
    store = make_store(tmp_path / "c.zarr")
    assert store.complete_epochs().tolist() == []
    store.write_epoch(0, np.arange(5, dtype=np.float32), lr=0.1)
    reopened = CurveStore.open(tmp_path / "c.zarr", mode="r")
    assert reopened.complete_epochs().tolist() == [0]
    np.testing.assert_array_equal(reopened.loss[:, 0], np.arange(5))
    assert np.isnan(reopened.loss[:, 1:]).all()


def test_partial_or_non_finite_columns_are_refused(tmp_path):
    store = make_store(tmp_path / "c.zarr")
    with pytest.raises(CurveStoreError, match="non-finite at sample ids \\[2\\]"):
        store.write_epoch(0, np.array([1, 1, np.nan, 1, 1], np.float32), lr=0.1)
    with pytest.raises(CurveStoreError, match="expected one finite loss for each of 5 samples"):
        store.write_epoch(0, np.ones(4, np.float32), lr=0.1)
    assert store.complete_epochs().tolist() == []


def test_discard_from_forgets_later_epochs(tmp_path):
    store = make_store(tmp_path / "c.zarr")
    for epoch in range(3):
        store.write_epoch(epoch, np.full(5, epoch, np.float32), lr=0.1)
    store.discard_from(1)
    assert store.complete_epochs().tolist() == [0]
    assert np.isnan(store.loss[:, 1:]).all()


def test_a_store_from_another_run_is_refused(tmp_path):
    make_store(tmp_path / "c.zarr", fingerprint="abc")
    with pytest.raises(CurveStoreError, match="recorded for another dataset or config"):
        make_store(tmp_path / "c.zarr", fingerprint="xyz")
    (tmp_path / "not-a-store").mkdir()
    with pytest.raises(CurveStoreError, match="is not a curve store"):
        CurveStore.open(tmp_path / "not-a-store")
