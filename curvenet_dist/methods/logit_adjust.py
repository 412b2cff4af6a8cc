"""Logit adjustment (Menon et al., ICLR 2021): cross-entropy on the logits plus tau * log of the class prior during
training; the model predicts from its plain logits. The prior is the training set's given-label frequency, so the
head classes' logits are handicapped in training and the tail's margins widen."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from curvenet_dist.methods.base import AllocateSetup, Method, TrainingLoss


def log_prior_adjustment(class_counts, tau: float) -> torch.Tensor:
    """tau * log of each class's share of the training set; a class with no sample gets the smallest present
    share rather than log 0."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    prior = counts.clamp_min(counts[counts > 0].min()) / counts.sum()
    return (tau * prior.log()).float()


class LogitAdjustedLoss:
    """The training loss: cross-entropy of the adjusted logits; every sample weighs 1."""

    def __init__(self, adjustment: torch.Tensor):
        self.adjustment = adjustment

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor, inputs, track_meta: bool):
        adjusted = F.cross_entropy(logits + self.adjustment.to(logits.dtype), labels, reduction="none")
        return adjusted, torch.ones_like(adjusted)


class LogitAdjustment(Method):
    def __init__(self, setup: AllocateSetup):
        super().__init__(setup)
        adjustment = log_prior_adjustment(setup.splits.train.class_counts(), setup.config.logit_adjust.tau)
        self.loss = LogitAdjustedLoss(adjustment.to(setup.device))

    def training_loss(self) -> TrainingLoss:
        return self.loss

    def describe(self) -> str:
        return f"logit_adjust.tau {self.setup.config.logit_adjust.tau:g}, "

    def fingerprint(self) -> tuple:
        return (vars(self.setup.config.logit_adjust),)
