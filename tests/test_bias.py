import numpy as np
import pytest

from curvenet_dist.config import BiasConfig
from curvenet_dist.data.bias import apply_bias, corrupt_labels, long_tail_counts, noise_rate_by_class
from curvenet_dist.data.sample_table import DataError, SampleTable


def balanced_table(per_class: int, num_classes: int) -> SampleTable:
    labels = np.repeat(np.arange(num_classes), per_class)
    return SampleTable(None, [f"{i}.png" for i in range(len(labels))], labels, labels, num_classes)


def test_long_tail_follows_the_exponential_profile():
    counts = long_tail_counts(np.full(10, 500), imbalance_factor=100)
    assert counts[0] == 500 and counts[-1] == 5
    expected = np.round(500 * (1 / 100) ** (np.arange(10) / 9))
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("noise_type", ["flip", "flip2", "uniform"])
def test_noise_rate_is_exact_per_class(noise_type):
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(10), 200)
    given = corrupt_labels(true, 10, noise_type, 0.4, rng)
    for c in range(10):
        changed = given[true == c] != c
        if noise_type == "uniform":
            # Uniform noise may redraw the true class: 40% are redrawn, ~36% end up wrong.
            assert 0.3 < changed.mean() <= 0.4
        else:
            assert changed.mean() == pytest.approx(0.4)
            targets = np.unique(given[(true == c) & (given != c)])
            assert len(targets) == (1 if noise_type == "flip" else 2)


def test_pair_noise_lands_the_rate_of_each_class_in_the_next_class_of_one_cycle():
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(10), 200)
    given = corrupt_labels(true, 10, "pair", 0.3, rng)
    next_class = {}
    for c in range(10):
        wrong = given[(true == c) & (given != c)]
        assert len(wrong) == 60
        assert len(np.unique(wrong)) == 1
        next_class[c] = int(wrong[0])
    # One cycle through all classes: every class receives the errors of exactly one other.
    assert sorted(next_class.values()) == list(range(10))
    c, seen = 0, set()
    while c not in seen:
        seen.add(c)
        c = next_class[c]
    assert len(seen) == 10


def test_apply_bias_carves_clean_meta_then_tail_then_noise():
    table = balanced_table(100, 10)
    config = BiasConfig(meta_per_class=10, imbalance_factor=10, noise_type="flip2", noise_rate=0.2, seed=3)
    biased = apply_bias(table, config)
    assert np.bincount(biased.carved_meta.labels, minlength=10).tolist() == [10] * 10
    assert (biased.carved_meta.labels == biased.carved_meta.true_labels).all()
    np.testing.assert_array_equal(np.bincount(biased.train.true_labels), long_tail_counts(np.full(10, 90), 10))
    assert set(biased.carved_meta.paths).isdisjoint(biased.train.paths)
    noisy = biased.train.labels != biased.train.true_labels
    assert noisy.mean() == pytest.approx(0.2, abs=0.02)
    again = apply_bias(table, config)
    assert again.train.paths == biased.train.paths and (again.train.labels == biased.train.labels).all()


def test_a_class_too_small_for_the_meta_set_is_named():
    with pytest.raises(DataError, match="class 0 has 5 training samples"):
        apply_bias(balanced_table(5, 3), BiasConfig(meta_per_class=10))


def test_proportional_noise_keeps_every_given_class_near_the_rate():
    # The CurveNet reference code's model on a long tail (imbalance 50): each given-label class's noise rate is
    # p * (1 - n_c / N), never the 68-83% that exact-count flip2 leaves in some tail classes.
    rng = np.random.default_rng(0)
    counts = long_tail_counts(np.full(10, 2000), 50)
    true = np.repeat(np.arange(10), counts)
    given = corrupt_labels(true, 10, "proportional", 0.4, rng)
    table = SampleTable(None, [f"{i}.png" for i in range(len(true))], given, true, 10)
    rates = noise_rate_by_class(table)
    expected = 0.4 * (1 - counts / counts.sum())
    assert np.all(np.abs(rates - expected) < 0.08), (rates, expected)
    assert (given != true).mean() == pytest.approx(0.4 * (1 - (counts / counts.sum()) @ (counts / counts.sum())),
                                                   abs=0.02)


def test_noise_rate_by_class_counts_wrong_given_labels():
    table = SampleTable(None, ["a", "b", "c", "d"], np.array([0, 0, 1, 1]), np.array([0, 1, 1, -1]), 3)
    rates = noise_rate_by_class(table)
    assert rates[0] == 0.5 and rates[1] == 0.0 and np.isnan(rates[2])


def test_train_per_class_takes_a_balanced_subset_before_the_bias():
    table = balanced_table(100, 4)
    biased = apply_bias(table, BiasConfig(meta_per_class=5, seed=1), train_per_class=30)
    assert np.bincount(biased.carved_meta.labels).tolist() == [5] * 4
    assert np.bincount(biased.train.labels).tolist() == [25] * 4
