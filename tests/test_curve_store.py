import shutil

import numpy as np
import pytest
import zarr

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


def reference_features(loss, labels, normalize_std):
    """DESIGN.md §3 written out in float64 on the whole array, one class at a time."""
    out = np.empty_like(loss, dtype=np.float64)
    for c in np.unique(labels):
        rows = labels == c
        out[rows] = loss[rows] - loss[rows].mean(axis=0)
        if normalize_std:
            out[rows] /= np.maximum(np.sqrt((out[rows] ** 2).mean(axis=0)), 1e-8)
    return out


def random_store(path, samples=3000, epochs=6, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    store = CurveStore.open_or_create(path, fingerprint="f", dataset_fingerprint="d", labels=labels,
                                      true_labels=labels, num_epochs=epochs)
    for epoch in range(epochs):
        store.write_epoch(epoch, rng.gamma(2.0, 1.0, samples).astype(np.float32) + labels, lr=0.1)
    return store


@pytest.mark.parametrize("normalize_std", [False, True])
def test_curve_features_are_float32_class_normalised_curves(tmp_path, normalize_std):
    from curvenet_dist.curves.features import class_normalized_curves

    store = random_store(tmp_path / "c.zarr")
    features = class_normalized_curves(store, 2, normalize_std)
    assert features.dtype == np.float32 and features.shape == (3000, 4)
    expected = reference_features(store.loss[:, 2:].astype(np.float64), store.labels, normalize_std)
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)


def test_curve_features_are_saved_beside_the_store_until_a_column_changes(tmp_path):
    from curvenet_dist.curves.features import class_normalized_curves, curve_features, features_path

    store = random_store(tmp_path / "c.zarr")
    features = curve_features(store, 2, False)
    saved = features_path(store, 2, False)
    assert saved.parent == tmp_path / "c.zarr.features" and [p.name for p in saved.parent.iterdir()] == [saved.name]
    np.testing.assert_array_equal(features, class_normalized_curves(store, 2, False))
    features[0, 0] = 123.0  # copy-on-write: the saved file stays as it was
    np.testing.assert_array_equal(curve_features(store, 2, False), class_normalized_curves(store, 2, False))

    store.write_epoch(5, np.zeros(3000, np.float32), lr=0.1)
    assert not saved.exists(), "features of the old column are forgotten"
    np.testing.assert_array_equal(curve_features(store, 2, False)[:, -1], class_normalized_curves(store, 2, False)[:, -1])
    store.discard_from(5)
    assert not saved.exists()
    with pytest.raises(CurveStoreError, match=r"probe epochs \[6\] are not recorded \(5 of 6 are\)"):
        curve_features(store, 2, False)


def test_lowest_loss_rows_are_the_k_lowest_mean_losses_of_each_class(tmp_path):
    from curvenet_dist.curves.features import lowest_loss_rows

    store = random_store(tmp_path / "c.zarr")
    mean_loss, labels = store.loss[:].astype(np.float64).mean(axis=1), store.labels
    expected = np.sort(np.concatenate([np.flatnonzero(labels == c)[np.argsort(mean_loss[labels == c])[:7]]
                                       for c in range(5)]))
    np.testing.assert_array_equal(lowest_loss_rows(store, 7), expected)


def test_gathered_recordings_keep_the_first_value_of_a_repeated_id_and_name_missing_ones():
    from curvenet_dist.curves.gather import first_value_by_id

    ids = np.array([3, 0, 1, 2, 3, 0])  # ids 3 and 0 repeated by padding
    values = np.array([30.0, 0.0, 10.0, 20.0, -1.0, -1.0])
    np.testing.assert_array_equal(first_value_by_id(ids, values, 4), [0.0, 10.0, 20.0, 30.0])
    with pytest.raises(RuntimeError, match=r"miss sample ids \[4\] \(of 5\)"):
        first_value_by_id(ids, values, 5)
    with pytest.raises(RuntimeError, match="ids >= 3"):
        first_value_by_id(ids, values, 3)


def test_a_probe_folder_the_features_cannot_be_saved_in_is_named(tmp_path):
    from curvenet_dist.curves.features import curve_features

    store = random_store(tmp_path / "c.zarr")
    store.features_dir.write_text("a file where the features folder goes")
    with pytest.raises(CurveStoreError, match="cannot save the curve features beside .*c.zarr"):
        curve_features(store, 2, False)


def flip_bytes(chunk_file):
    data = bytearray(chunk_file.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 4])
    chunk_file.write_bytes(bytes(data))


def test_flipped_bytes_in_a_chunk_stop_every_reader_with_one_line(tmp_path):
    from curvenet_dist.curves.features import class_normalized_curves, lowest_loss_rows

    store = random_store(tmp_path / "c.zarr")
    flip_bytes(tmp_path / "c.zarr" / "loss" / "c" / "0" / "3")
    expected = (r"c.zarr: probe epochs \[4\] are damaged \(epoch 4: chunk loss/c/0/3 fails its checksum\); rerun the "
                r"probe command, which records them again$")
    for read in (lambda: lowest_loss_rows(store, 7), lambda: class_normalized_curves(store, 2, True)):
        with pytest.raises(CurveStoreError, match=expected) as error:
            read()
        assert "\n" not in str(error.value)


def test_a_missing_chunk_is_named_instead_of_read_as_nan(tmp_path):
    from curvenet_dist.curves.features import curve_features, mean_probe_loss

    store = random_store(tmp_path / "c.zarr")
    (tmp_path / "c.zarr" / "loss" / "c" / "0" / "1").unlink()
    (tmp_path / "c.zarr" / "loss" / "c" / "0" / "4").unlink()
    expected = (r"probe epochs \[2, 5\] are damaged \(epoch 2: chunk loss/c/0/1 is missing; epoch 5: chunk loss/c/0/4 "
                r"is missing\); rerun the probe command")
    with pytest.raises(CurveStoreError, match=expected):
        mean_probe_loss(store)
    with pytest.raises(CurveStoreError, match=expected):
        curve_features(store, 2, False)
    assert store.complete_epochs().tolist() == list(range(6)), "reading marks nothing; the probe records them again"


def test_saved_features_are_never_reused_for_other_content(tmp_path):
    from curvenet_dist.curves.features import class_normalized_curves, curve_features

    store = random_store(tmp_path / "c.zarr", seed=0)
    curve_features(store, 2, True)
    # Another recording of the same run copied over the store: same fingerprint, other losses.
    random_store(tmp_path / "other.zarr", seed=1)
    shutil.rmtree(tmp_path / "c.zarr")
    shutil.copytree(tmp_path / "other.zarr", tmp_path / "c.zarr")
    copied = CurveStore.open(tmp_path / "c.zarr", mode="r")
    np.testing.assert_array_equal(curve_features(copied, 2, True), class_normalized_curves(copied, 2, True))
    # A chunk lost after the features were saved: the saved features are not read in its place.
    (tmp_path / "c.zarr" / "loss" / "c" / "0" / "5").unlink()
    with pytest.raises(CurveStoreError, match=r"epoch 6: chunk loss/c/0/5 is missing"):
        curve_features(copied, 2, True)


def test_a_store_written_without_checksums_still_opens_and_is_checked(tmp_path):
    """The layout of the stores written before each chunk carried a checksum: Zarr's default codecs."""
    from curvenet_dist.curves.features import class_normalized_curves, lowest_loss_rows

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 500)
    loss = rng.gamma(2.0, 1.0, (500, 4)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=3)
    group.create_array("loss", data=loss, chunks=(500, 1), fill_value=np.nan)
    group.create_array("label", data=labels, chunks=(500,))
    group.create_array("true_label", data=labels, chunks=(500,))
    group.create_array("lr", data=np.full(4, 0.1, np.float32), fill_value=np.nan)
    group.create_array("epoch_complete", data=np.ones(4, np.uint8), fill_value=0)
    group.attrs.update({"fingerprint": "f", "dataset_fingerprint": "d", "num_samples": 500, "num_epochs": 4})

    store = CurveStore.open(tmp_path / "old.zarr", mode="r")
    np.testing.assert_allclose(class_normalized_curves(store, 1, False),
                               reference_features(loss[:, 1:].astype(np.float64), labels, False), atol=1e-5)
    (tmp_path / "old.zarr" / "loss" / "c" / "0" / "2").unlink()
    with pytest.raises(CurveStoreError, match=r"probe epochs \[3\] are damaged \(epoch 3: chunk loss/c/0/2 is missing"):
        lowest_loss_rows(store, 5)


def test_a_damaged_label_or_epoch_list_is_named_in_one_line(tmp_path):
    store = random_store(tmp_path / "c.zarr")
    for array in ("epoch_complete", "label"):
        flip_bytes(tmp_path / "c.zarr" / array / "c" / "0")
    with pytest.raises(CurveStoreError, match=r"c.zarr: array epoch_complete is damaged \(a chunk fails its checksum\); "
                                              r"move the store away and rerun the probe command"):
        store.complete_epochs()
    with pytest.raises(CurveStoreError, match=r"array label is damaged"):
        store.labels
