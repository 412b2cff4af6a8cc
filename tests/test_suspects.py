"""How many labels are wrong per class, and which: the estimate from a classifier's loss on its training set."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from curvenet_dist.tracking.suspects import flag_wrong_labels, flagged_scores, suspect_scores

CLASS_SIZES = [300, 150, 80, 12]
"""Clean samples per class; the tail class 3 gets 28 samples of other classes too: 70% of its labels are wrong."""
TAIL_WRONG = 28
HEAD_NOISE = 0.1
TOLERANCE = 3
"""Each class's estimated wrong-label count is within this many samples of the truth (the tail's: 28 +- 3)."""


def noisy_long_tailed_set(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, given labels and true labels: four Gaussian blobs, 10% of the head classes' labels moved to another
    head class, and the tail class's 12 samples outnumbered by 28 samples of the other classes labelled as it."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * np.eye(len(CLASS_SIZES), 8)
    true = np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES)
    given = true.copy()
    head = np.flatnonzero(true < 3)
    moved = rng.choice(head, round(HEAD_NOISE * len(head)), replace=False)
    given[moved] = (true[moved] + rng.integers(1, 3, len(moved))) % 3
    into_tail = rng.choice(np.setdiff1d(head, moved), TAIL_WRONG, replace=False)
    given[into_tail] = 3
    features = centers[true] + rng.normal(size=(len(true), centers.shape[1]))
    return features, given, true


def test_the_wrong_label_count_of_each_class_is_near_the_truth_with_a_70_percent_mislabeled_tail_class():
    for seed in range(3):
        features, given, true = noisy_long_tailed_set(seed)
        probabilities = LogisticRegression(max_iter=1000).fit(features, given).predict_proba(features)
        losses = -np.log(probabilities[np.arange(len(given)), given])
        flagged = flag_wrong_labels(losses, given, probabilities.argmax(1) != given, None)
        estimated = np.bincount(given[flagged], minlength=4)
        wrong = np.bincount(given[given != true], minlength=4)
        assert wrong[3] == TAIL_WRONG
        assert (np.abs(estimated - wrong) <= TOLERANCE).all(), (seed, estimated, wrong)
        assert flagged_scores(flagged, given != true)["flagged_f1"] > 0.8


def test_the_suspect_score_is_one_minus_the_given_labels_probability_without_probe_margins():
    losses = np.array([0.0, np.log(2), np.log(4)])
    np.testing.assert_allclose(suspect_scores(losses, None), [0.0, 0.5, 0.75])


def test_with_probe_margins_the_order_ranks_the_wrong_labels_better_than_either_signal():
    # Each signal misses a different part of the wrong labels: the final classifier has fitted some of them, the
    # probe's margins miss others. A low margin is suspect, as a high loss is.
    rng = np.random.default_rng(0)
    wrong = rng.random(2000) < 0.3
    losses = np.where(wrong, 2.0, 0.3) * rng.lognormal(0, 1.5, wrong.size)
    margins = np.where(wrong, -1.0, 1.0) + rng.normal(0, 1.5, wrong.size)
    combined = roc_auc_score(wrong, suspect_scores(losses, margins))
    assert combined > roc_auc_score(wrong, suspect_scores(losses, None)) + 0.05
    assert combined > roc_auc_score(wrong, -margins) + 0.05
    np.testing.assert_allclose(suspect_scores(np.array([0.1, 0.2, 0.3]), np.array([0.0, -1.0, -2.0])), [1/3, 2/3, 1])


def test_a_sample_is_flagged_only_below_its_class_mean_and_when_another_class_is_predicted():
    # Class 0's mean p is 0.5: sample 0 (p 0.9) is above it though predicted as class 1; sample 2 (p 0.2) is below
    # it but predicted as labelled. Class 1's mean is 0.27: only sample 4 is below it.
    p = np.array([0.9, 0.4, 0.2, 0.4, 0.1, 0.3])
    labels = np.array([0, 0, 0, 1, 1, 1])
    predictions = np.array([1, 1, 0, 0, 0, 0])
    assert flag_wrong_labels(-np.log(p), labels, predictions != labels, None).tolist() == [
        False, True, False, False, True, False]
    # With the probe's mean margins, a sample the probe saw under its given label (margin >= 0) is not flagged.
    margins = np.array([-1.0, 0.5, -1.0, -1.0, -0.2, -1.0])
    assert flag_wrong_labels(-np.log(p), labels, predictions != labels, margins).tolist() == [
        False, False, False, False, True, False]
    assert flagged_scores(np.array([True, True, False]), np.array([True, False, True])) == {
        "flagged_precision": 0.5, "flagged_recall": 0.5, "flagged_f1": 0.5}
