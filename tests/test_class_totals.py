"""CurveNet's class totals follow each class's estimated clean share: the probe's curve store says how many of a
class's labels look wrong, and a class whose labels look mostly wrong gets less than class-balanced CE's total, so
rebalancing does not multiply its wrong labels."""
from __future__ import annotations

import numpy as np
import pytest

from curvenet_dist.curves.store import CurveStore
from curvenet_dist.curves.wrong_labels import probe_wrong_label_fraction
from curvenet_dist.meta.weight_scale import balanced_class_factors, noise_aware_class_factors

EPOCHS = 6


def test_a_class_whose_labels_look_mostly_wrong_gets_less_than_class_balanced_total():
    counts = np.array([600, 300, 100])
    wrong = np.array([0.1, 0.1, 2 / 3])  # the tail's estimated clean count is a third of its given count
    factors = noise_aware_class_factors(counts, wrong).numpy()
    totals = factors * counts
    assert totals.sum() == pytest.approx(counts.sum()), "the mean weight stays 1"
    assert totals[2] < counts.sum() / 3, "below class-balanced CE's total for the mostly mislabeled tail"
    assert totals[1] > totals[2] and factors[1] > 1, "a clean-looking small class is still weighed up"
    # No wrong labels estimated: class-balanced CE's factors; every label wrong: CE's.
    np.testing.assert_allclose(noise_aware_class_factors(counts, np.zeros(3)), balanced_class_factors(counts))
    np.testing.assert_allclose(noise_aware_class_factors(counts, np.ones(3)), np.ones(3))


def write_store(path, labels, true_labels, margins: bool) -> CurveStore:
    """A probe's store: a clean sample's loss falls and its margin turns positive early; a mislabeled one's loss
    stays high and its margin negative (another class predicted) to the end. A few clean samples of class 0 end
    on a negative margin after having been learned: the AUM vetoes them."""
    store = CurveStore.open_or_create(path, fingerprint="f", dataset_fingerprint="d", labels=labels,
                                      true_labels=true_labels, num_epochs=EPOCHS, with_margins=margins)
    mislabeled = labels != true_labels
    forgotten = np.flatnonzero(~mislabeled & (labels == 0))[:20]
    for epoch in range(EPOCHS):
        loss = np.where(mislabeled, 2.5, 2.0 * np.exp(-epoch))
        margin = np.where(mislabeled, -2.0, min(epoch - 1.0, 2.0))
        if epoch == EPOCHS - 1:
            loss[forgotten], margin[forgotten] = 1.5, -0.5
        store.write_epoch(epoch, loss.astype(np.float32), lr=0.1,
                          margins=margin.astype(np.float32) if margins else None)
    return store


def test_the_probe_store_gives_each_class_share_of_wrong_labels(tmp_path):
    # A head class's errors swamp the tail: 70 head samples carry the tail's label beside its own 30.
    true = np.repeat(np.arange(3), [500, 200, 30])
    labels = true.copy()
    labels[np.flatnonzero(true == 0)[-70:]] = 2
    store = write_store(tmp_path / "curves.zarr", labels, true, margins=True)
    np.testing.assert_allclose(probe_wrong_label_fraction(store, num_classes=4), [0, 0, 0.7, 0])
    old = write_store(tmp_path / "old.zarr", labels, true, margins=False)
    assert probe_wrong_label_fraction(old, num_classes=3) is None, "a store without margins gives no estimate"
