"""Meta-learning stops early only when CurveNet's weights have learned something and then stopped moving."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from curvenet_dist.meta.settling import WeightSettling

LABELS = np.repeat([0, 1], [60, 20])


def learned(shift: float) -> np.ndarray:
    """Weights that down-weight every 4th sample of each class, the pattern moved by `shift`."""
    return np.where(np.arange(80) % 4 == 0, 0.2 + shift, 1.0)


def test_weights_that_stop_moving_settle_after_the_calm_epochs_in_a_row():
    settling = WeightSettling(tolerance=0.05, patience=2)
    changes = [settling.observe(learned(shift), LABELS) for shift in (0.0, 0.3, 0.31, 0.5, 0.501, 0.502)]
    assert changes[0] is None and changes[1] > 0.05 and changes[2] < 0.05
    # One calm epoch (0.3 -> 0.31) is not enough; the move to 0.5 starts the count again.
    assert settling.calm_epochs == 2 and settling.settled


def test_weights_that_never_spread_never_settle_and_tolerance_0_never_stops():
    settling = WeightSettling(tolerance=0.05, patience=1)
    for _ in range(4):
        settling.observe(np.full(80, 0.5200040), LABELS)
    assert not settling.settled
    never = WeightSettling(tolerance=0.0, patience=1)
    for _ in range(4):
        never.observe(learned(0.0), LABELS)
    assert not never.settled


def test_settling_state_survives_a_checkpoint(tmp_path):
    settling = WeightSettling(tolerance=0.05, patience=2)
    for shift in (0.0, 0.3, 0.301):
        settling.observe(learned(shift), LABELS)
    torch.save(settling.state_dict(), tmp_path / "state.pt")
    resumed = WeightSettling(tolerance=0.05, patience=2)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.observe(learned(0.302), LABELS) == pytest.approx(settling.observe(learned(0.302), LABELS))
    assert resumed.settled and settling.settled
