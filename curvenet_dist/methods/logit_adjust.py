"""Logit adjustment (Menon et al., ICLR 2021): cross-entropy on the logits plus tau * log of the class prior during
training; the model predicts from its plain logits. The prior is the training set's given-label frequency, so the
head classes' logits are handicapped in training and the tail's margins widen."""
from __future__ import annotations

import torch

from curvenet_dist.methods.base import AllocateSetup, Method


def log_prior_adjustment(class_counts, tau: float) -> torch.Tensor:
    """tau * log of each class's share of the training set; a class with no sample gets the smallest present
    share rather than log 0."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    prior = counts.clamp_min(counts[counts > 0].min()) / counts.sum()
    return (tau * prior.log()).float()


class LogitAdjustment(Method):
    """Every sample weighs 1; the trainer adds the adjustment to the logits of its cross-entropy."""

    def __init__(self, setup: AllocateSetup):
        super().__init__(setup)
        self.adjustment = log_prior_adjustment(setup.splits.train.class_counts(), setup.config.logit_adjust.tau)

    def logit_adjustment(self) -> torch.Tensor:
        return self.adjustment

    def describe(self) -> str:
        return f"logit_adjust.tau {self.setup.config.logit_adjust.tau:g}, "

    def fingerprint(self) -> tuple:
        return (vars(self.setup.config.logit_adjust),)
