"""A run whose weighting net never moved says so, with the likely cause."""
from __future__ import annotations

import numpy as np
import pytest

from curvenet_dist.engine.evaluate import WEIGHT_SPREAD_FLOOR, constant_weights_warning
from curvenet_dist.tracking.report import weight_change, weight_spread


def test_weights_equal_within_every_class_have_no_spread_whatever_the_class_totals():
    labels = np.repeat([0, 1, 2], [50, 20, 5])
    class_balanced = np.array([0.5, 1.25, 5.0])[labels]
    assert weight_spread(class_balanced, labels) == 0.0
    assert weight_spread(np.full(75, 0.5200040), labels) == 0.0
    learned = class_balanced * np.where(np.arange(75) % 4 == 0, 0.1, 1.3)
    assert weight_spread(learned, labels) > WEIGHT_SPREAD_FLOOR


def test_constant_weights_get_one_line_naming_the_likely_cause():
    assert constant_weights_warning(0.3, 448, 1e-3) is None
    few = constant_weights_warning(1e-7, 120, 1e-3)
    weak = constant_weights_warning(1e-7, 448, 3e-7)
    for line in (few, weak):
        assert line.startswith("warning: the weights ended nearly constant") and "\n" not in line
    assert "120 meta updates are few" in few
    assert "meta-gradient was weak (mean norm 3.0e-07" in weak


def test_weight_change_ignores_class_totals_and_counts_who_is_down_weighted():
    labels = np.repeat([0, 1], [40, 10])
    learned = np.where(np.arange(50) % 5 == 0, 0.2, 1.0)
    # Rescaling a class's total moves no sample within its class.
    assert weight_change(learned, learned * np.array([1.0, 3.0])[labels], labels) == pytest.approx(0.0, abs=1e-12)
    # Down-weighting other samples of the same classes is a change of the order of the weights' whole spread.
    assert weight_change(learned, np.roll(learned, 1), labels) > 1.0
