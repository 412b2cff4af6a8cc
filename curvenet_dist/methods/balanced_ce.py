"""Class-balanced cross-entropy: every sample of given class c weighs N / (C n_c), so each class carries the same
total weight (the long-tail baseline)."""
from __future__ import annotations

import numpy as np
import torch

from curvenet_dist.meta.weight_scale import balanced_class_factors
from curvenet_dist.methods.base import AllocateSetup, EpochPlan, Method


class BalancedCrossEntropy(Method):
    def __init__(self, setup: AllocateSetup):
        super().__init__(setup)
        factors = balanced_class_factors(setup.splits.train.class_counts()).float().to(setup.device)
        self.weights: torch.Tensor = factors[setup.train_labels()]

    def start_epoch(self, epoch: int, start_batch: int) -> EpochPlan:
        return EpochPlan(self.setup.train_loader, fixed_weights=self.weights)

    def final_weights(self, train_losses: np.ndarray) -> np.ndarray:
        return self.weights.cpu().numpy()
