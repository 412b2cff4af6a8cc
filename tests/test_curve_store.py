import os
import shutil
import signal

import numpy as np
import pytest
import zarr

from curvenet_dist.config import CURVE_NORMALIZATIONS
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


def reference_features(loss, labels, normalization):
    """DESIGN.md §3 written out in float64 on the whole array, one group of samples at a time."""
    groups = labels if normalization.startswith("class") else np.zeros_like(labels)
    out = np.empty_like(loss, dtype=np.float64)
    for c in np.unique(groups):
        rows = groups == c
        out[rows] = loss[rows] - loss[rows].mean(axis=0)
        if normalization != "class_mean":
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


@pytest.mark.parametrize("normalization", CURVE_NORMALIZATIONS)
def test_curve_features_are_float32_normalised_curves(tmp_path, normalization):
    from curvenet_dist.curves.features import normalized_curves

    store = random_store(tmp_path / "c.zarr")
    features = normalized_curves(store, 2, normalization)
    assert features.dtype == np.float32 and features.shape == (3000, 4)
    expected = reference_features(store.loss[:, 2:].astype(np.float64), store.labels, normalization)
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)


def test_curve_features_are_saved_beside_the_store_until_a_column_changes(tmp_path):
    from curvenet_dist.curves.features import normalized_curves, curve_features, features_path

    store = random_store(tmp_path / "c.zarr")
    features = curve_features(store, 2, "class_mean")
    saved = features_path(store, 2, "class_mean")
    assert saved.parent == tmp_path / "c.zarr.features" and [p.name for p in saved.parent.iterdir()] == [saved.name]
    np.testing.assert_array_equal(features, normalized_curves(store, 2, "class_mean"))
    features[0, 0] = 123.0  # copy-on-write: the saved file stays as it was
    np.testing.assert_array_equal(curve_features(store, 2, "class_mean"), normalized_curves(store, 2, "class_mean"))

    store.write_epoch(5, np.zeros(3000, np.float32), lr=0.1)
    assert not saved.exists(), "features of the old column are forgotten"
    np.testing.assert_array_equal(curve_features(store, 2, "class_mean")[:, -1], normalized_curves(store, 2, "class_mean")[:, -1])
    store.discard_from(5)
    assert not saved.exists()
    with pytest.raises(CurveStoreError, match=r"probe epochs \[6\] are not recorded \(5 of 6 are\)"):
        curve_features(store, 2, "class_mean")


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
        curve_features(store, 2, "class_mean")


def flip_bytes(chunk_file):
    data = bytearray(chunk_file.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 4])
    chunk_file.write_bytes(bytes(data))


def test_flipped_bytes_in_a_chunk_stop_every_reader_with_one_line(tmp_path):
    from curvenet_dist.curves.features import normalized_curves, lowest_loss_rows

    store = random_store(tmp_path / "c.zarr")
    flip_bytes(tmp_path / "c.zarr" / "loss" / "c" / "0" / "3")
    expected = (r"c.zarr: probe epochs \[4\] are damaged \(epoch 4: chunk loss/c/0/3 fails its checksum\); rerun the "
                r"probe command, which records them again$")
    for read in (lambda: lowest_loss_rows(store, 7), lambda: normalized_curves(store, 2, "dataset")):
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
        curve_features(store, 2, "class_mean")
    assert store.complete_epochs().tolist() == list(range(6)), "reading marks nothing; the probe records them again"


def test_saved_features_are_never_reused_for_other_content(tmp_path):
    from curvenet_dist.curves.features import normalized_curves, curve_features

    store = random_store(tmp_path / "c.zarr", seed=0)
    curve_features(store, 2, "dataset")
    # Another recording of the same run copied over the store: same fingerprint, other losses.
    random_store(tmp_path / "other.zarr", seed=1)
    shutil.rmtree(tmp_path / "c.zarr")
    shutil.copytree(tmp_path / "other.zarr", tmp_path / "c.zarr")
    copied = CurveStore.open(tmp_path / "c.zarr", mode="r")
    np.testing.assert_array_equal(curve_features(copied, 2, "dataset"), normalized_curves(copied, 2, "dataset"))
    # A chunk lost after the features were saved: the saved features are not read in its place.
    (tmp_path / "c.zarr" / "loss" / "c" / "0" / "5").unlink()
    with pytest.raises(CurveStoreError, match=r"epoch 6: chunk loss/c/0/5 is missing"):
        curve_features(copied, 2, "dataset")


def test_a_store_written_without_checksums_still_opens_and_is_checked(tmp_path):
    """The layout of the stores written before each chunk carried a checksum: Zarr's default codecs."""
    from curvenet_dist.curves.features import normalized_curves, lowest_loss_rows

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
    np.testing.assert_allclose(normalized_curves(store, 1, "class_mean"),
                               reference_features(loss[:, 1:].astype(np.float64), labels, "class_mean"), atol=1e-5)
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


def margin_store(path, samples=3000, epochs=6, classes=5, seed=0):
    """A store as the probe writes it: a loss and a logit margin per sample and epoch."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    store = CurveStore.open_or_create(path, fingerprint="f", dataset_fingerprint="d", labels=labels,
                                      true_labels=labels, num_epochs=epochs, with_margins=True)
    for epoch in range(epochs):
        store.write_epoch(epoch, rng.gamma(2.0, 1.0, samples).astype(np.float32), lr=0.1,
                          margins=rng.normal(0.0, 2.0, samples).astype(np.float32))
    return store


@pytest.mark.parametrize("normalization", CURVE_NORMALIZATIONS)
def test_curvenet_reads_the_margin_curve_beside_the_loss_curve(tmp_path, normalization):
    from curvenet_dist.curves.features import normalized_curves

    store = margin_store(tmp_path / "c.zarr")
    features = normalized_curves(store, 2, normalization)
    assert features.dtype == np.float32 and features.shape == (3000, 8)
    for block, recorded in enumerate((store.loss, store.margin)):
        expected = reference_features(recorded[:, 2:].astype(np.float64), store.labels, normalization)
        np.testing.assert_allclose(features[:, 4 * block:4 * (block + 1)], expected, rtol=1e-6, atol=1e-6)


def test_saved_features_are_not_read_once_a_margin_chunk_changed_on_disk(tmp_path):
    from curvenet_dist.curves.features import normalized_curves, curve_features

    store = margin_store(tmp_path / "c.zarr")
    curve_features(store, 2, "class_mean")
    # Another margin column with the same losses: as if the store's margins were copied in from elsewhere.
    store.margin[:, 3] = store.margin[:, 3] + 1.0 + np.arange(3000, dtype=np.float32)
    np.testing.assert_array_equal(curve_features(store, 2, "class_mean"), normalized_curves(store, 2, "class_mean"))


def test_margins_are_written_beside_the_losses_and_forgotten_with_them(tmp_path):
    from curvenet_dist.curves.features import mean_margin

    store = margin_store(tmp_path / "c.zarr", samples=50, epochs=4)
    reopened = CurveStore.open(tmp_path / "c.zarr", mode="r")
    assert reopened.margin.shape == (50, 4) and reopened.margin.chunks == reopened.loss.chunks
    np.testing.assert_allclose(mean_margin(reopened), reopened.margin[:].astype(np.float64).mean(axis=1))
    with pytest.raises(CurveStoreError, match="epoch 3: expected one finite margin for each of 50 samples, got none"):
        store.write_epoch(3, np.ones(50, np.float32), lr=0.1)
    with pytest.raises(CurveStoreError, match=r"finite margin for each of 50 samples, got shape \(50,\), non-finite "
                                              r"at sample ids \[7\]"):
        store.write_epoch(3, np.ones(50, np.float32), lr=0.1, margins=np.where(np.arange(50) == 7, np.inf, 0.0))
    store.discard_from(2)
    assert store.complete_epochs().tolist() == [0, 1] and np.isnan(store.margin[:, 2:]).all()


@pytest.mark.parametrize("damage, problem", [
    (lambda chunk: chunk.unlink(), "is missing"),
    (flip_bytes, "fails its checksum"),
], ids=["deleted", "flipped"])
def test_a_damaged_margin_chunk_is_named_like_a_damaged_loss_chunk(tmp_path, damage, problem):
    from curvenet_dist.curves.features import normalized_curves, mean_margin

    store = margin_store(tmp_path / "c.zarr")
    damage(tmp_path / "c.zarr" / "margin" / "c" / "0" / "3")
    assert store.damage(range(6)) == {3: f"chunk margin/c/0/3 {problem}"}, "the probe records epoch 4 again"
    # CurveNet reads the margins beside the losses: it stops at the same line.
    for read in (lambda: mean_margin(store), lambda: normalized_curves(store, 2, "dataset")):
        with pytest.raises(CurveStoreError, match=rf"c.zarr: probe epochs \[4\] are damaged \(epoch 4: chunk "
                                                  rf"margin/c/0/3 {problem}\); rerun the probe command, which records "
                                                  rf"them again$"):
            read()


def test_a_store_recorded_before_margins_opens_for_the_allocate_stage(tmp_path):
    from curvenet_dist.curves.features import curve_features, mean_margin

    random_store(tmp_path / "old.zarr")  # the layout stores had before the probe recorded margins: no margin array
    assert "margin" not in zarr.open_group(str(tmp_path / "old.zarr"), mode="r").array_keys()
    store = CurveStore.open(tmp_path / "old.zarr", mode="r")
    assert curve_features(store, 2, "class_mean").shape == (3000, 4) and store.damage(range(6)) == {}
    with pytest.raises(CurveStoreError, match="old.zarr holds no logit margins: it was begun before the probe "
                                              "recorded them"):
        mean_margin(store)


def test_several_values_per_sample_are_gathered_as_rows():
    from curvenet_dist.curves.gather import first_value_by_id

    ids = np.array([2, 0, 1, 2])  # id 2 repeated by padding
    rows = np.array([[2.0, -2.0], [0.0, 0.5], [1.0, -1.0], [9.0, 9.0]])
    np.testing.assert_array_equal(first_value_by_id(ids, rows, 3), [[0.0, 0.5], [1.0, -1.0], [2.0, -2.0]])


@pytest.mark.slow
def test_two_ranks_record_each_samples_margin_once_an_epoch_through_an_interruption_and_a_lost_chunk(tmp_path):
    """Real probe runs under torchrun with gloo; on CPU every kernel and reduction is deterministic, so a resumed or
    re-recorded epoch holds the very values of an uninterrupted run."""
    from tests.conftest import QUICKSTART, TINY, torchrun
    from tests.test_probe import start_probe, wait_for

    # Batches of 8: many steps an epoch, so that a SIGTERM is most likely noticed inside one.
    extra = ["probe.epochs=4", "data.batch_size=8"]

    def probe(run_dir):
        return torchrun("probe.py", 2, ["--config", str(QUICKSTART), f"run.dir={run_dir}", *TINY, *extra]).stdout

    probe(tmp_path / "whole")
    whole = CurveStore.open(tmp_path / "whole" / "curves.zarr", mode="r")
    loss, margin = whole.loss[:].astype(np.float64), whole.margin[:].astype(np.float64)
    assert margin.shape == loss.shape and np.isfinite(margin).all() and whole.complete_epochs().tolist() == [0, 1, 2, 3]
    # Each margin m is its own sample's: that sample's cross-entropy over 10 classes lies in
    # [log(1 + e^-m), log(1 + 9 e^-m)].
    assert (loss >= np.log1p(np.exp(-margin)) - 1e-4).all() and (loss <= np.log1p(9 * np.exp(-margin)) + 1e-4).all()
    assert (margin < 0).any() and (margin > 0).any()

    process = start_probe(tmp_path / "resumed", 2, extra)
    wait_for(lambda: list((tmp_path / "resumed" / "checkpoints").glob("step-00001-*.pt")), what="the first epoch")
    os.killpg(process.pid, signal.SIGTERM)  # torchrun forwards it to its workers
    output, _ = process.communicate(timeout=120)
    assert "SIGTERM: saved" in output and not (tmp_path / "resumed" / "metrics.json").exists(), output
    assert "resuming at epoch" in probe(tmp_path / "resumed")
    np.testing.assert_array_equal(CurveStore.open(tmp_path / "resumed" / "curves.zarr", mode="r").margin[:], margin)

    (tmp_path / "resumed" / "curves.zarr" / "margin" / "c" / "0" / "3").unlink()
    assert ("probe epochs [4] are damaged (epoch 4: chunk margin/c/0/3 is missing); the probe records epoch 4 and "
            "every later one again") in probe(tmp_path / "resumed")
    np.testing.assert_array_equal(CurveStore.open(tmp_path / "resumed" / "curves.zarr", mode="r").margin[:], margin)


def test_a_mostly_mislabeled_class_keeps_its_wrong_labels_where_every_class_has_them(tmp_path):
    # A small class that is 70% wrong (a head class's errors landed in it) beside classes 10% wrong. Centred on its
    # own class, its wrong labels sit at the class's centre, among the other classes' clean samples; CurveNet then
    # has to learn a threshold per class from a few hundred meta steps. Its input puts them with every wrong label.
    from sklearn.metrics import roc_auc_score

    from curvenet_dist.config import CurveNetConfig
    from curvenet_dist.curves.features import normalized_curves

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [300, 200, 100])
    wrong = np.zeros(len(labels), bool)
    for start, size, count in ((0, 300, 30), (300, 200, 20), (500, 100, 70)):
        wrong[start + rng.choice(size, count, replace=False)] = True
    store = CurveStore.open_or_create(tmp_path / "c.zarr", fingerprint="f", dataset_fingerprint="d", labels=labels,
                                      true_labels=np.where(wrong, (labels + 1) % 3, labels), num_epochs=6)
    loss_level = np.where(wrong, 2.0, 0.5) + 0.4 * rng.standard_normal(len(labels))
    for epoch in range(6):
        store.write_epoch(epoch, (loss_level * np.exp(-epoch / 10)).astype(np.float32), lr=0.1)

    def pooled_auroc(normalization):
        return roc_auc_score(wrong, normalized_curves(store, 1, normalization).mean(axis=1))

    assert pooled_auroc(CurveNetConfig.curve_normalization) >= 0.99
    assert pooled_auroc("class") < 0.95, "centred on its own class, the swamped class's wrong labels look clean"


@pytest.mark.parametrize("make", [random_store, margin_store])
def test_the_suspicion_direction_reads_the_mean_standardised_margin_or_loss(tmp_path, make):
    from curvenet_dist.curves.features import normalized_curves, suspicion_direction

    store = make(tmp_path / "c.zarr")
    features = normalized_curves(store, 2, "class")
    suspicion = features @ suspicion_direction(store, 2)
    # Where the probe records margins, a low mean margin over the epochs CurveNet reads is what looks wrong; a
    # store of losses alone has only the mean loss.
    expected = -features[:, 4:].mean(1) if store.margin is not None else features.mean(1)
    np.testing.assert_allclose(suspicion, expected, rtol=1e-5, atol=1e-6)
