"""When CurveNet's weights have settled, so that meta-learning can stop before the first LR decay
(`curvenet.settle_tolerance`).

CurveNet's weight is a function of the sample's fixed curve and label, so the whole training set's weights can be
compared from one meta epoch's end to the next (`weight_change`: the mean change of the class-relative weight over
its spread). Weights that never spread (a net without a prior still at its initial output) never count as
settled: the meta updates left may yet move them. Weights that start at CurveNet's prior and stay there settle: the
meta step has nothing to change in them.
"""
from __future__ import annotations

import numpy as np
import torch

from curvenet_dist.engine.evaluate import WEIGHT_SPREAD_FLOOR
from curvenet_dist.tracking.report import weight_change, weight_spread


class WeightSettling:
    def __init__(self, tolerance: float, patience: int):
        """Settled after `patience` meta epochs in a row whose change is below `tolerance` (0: never)."""
        self.tolerance, self.patience = tolerance, patience
        self.previous: np.ndarray | None = None
        self.calm_epochs = 0

    def observe(self, weights: np.ndarray, labels: np.ndarray) -> float | None:
        """Take a meta epoch's final weights of every training sample; returns their change since the last meta
        epoch (None for the first)."""
        previous, self.previous = self.previous, weights
        if previous is None:
            return None
        change = weight_change(previous, weights, labels)
        calm = change < self.tolerance and weight_spread(weights, labels) >= WEIGHT_SPREAD_FLOOR
        self.calm_epochs = self.calm_epochs + 1 if calm else 0
        return change

    @property
    def settled(self) -> bool:
        return self.tolerance > 0 and self.calm_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"previous": None if self.previous is None else torch.from_numpy(self.previous),
                "calm_epochs": self.calm_epochs}

    def load_state_dict(self, state: dict) -> None:
        previous = state["previous"]
        self.previous = None if previous is None else previous.numpy()
        self.calm_epochs = state["calm_epochs"]
