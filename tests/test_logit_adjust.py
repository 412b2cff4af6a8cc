"""Logit adjustment's training loss: what makes it the long-tail baseline is that its minimiser predicts the
balanced posterior, not the training set's skewed one."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from curvenet_dist.methods.logit_adjust import LogitAdjustedLoss, log_prior_adjustment


def test_the_adjustment_is_tau_times_the_log_class_share_and_an_empty_class_gets_the_smallest():
    adjustment = log_prior_adjustment(np.array([80, 20, 0]), tau=1.0)
    np.testing.assert_allclose(adjustment.numpy(), np.log([80 / 100, 20 / 100, 20 / 100]), rtol=1e-6)
    assert torch.equal(log_prior_adjustment(np.array([80, 20]), tau=0.0), torch.zeros(2))


def fitted_probabilities(loss, labels: torch.Tensor) -> torch.Tensor:
    """The softmax of one free logit vector fitted to `labels` (the same input seen with each label)."""
    logits = torch.zeros(1, 2, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(500):
        optimizer.zero_grad()
        batch = logits.expand(len(labels), 2)
        loss(batch, labels).mean().backward()
        optimizer.step()
    return logits.detach().softmax(1)[0]


def test_plain_cross_entropy_learns_the_skew_and_the_adjusted_loss_learns_the_balanced_posterior():
    labels = torch.tensor([0] * 90 + [1] * 10)
    plain = fitted_probabilities(lambda z, y: F.cross_entropy(z, y, reduction="none"), labels)
    adjusted_loss = LogitAdjustedLoss(log_prior_adjustment(np.array([90, 10]), tau=1.0))
    balanced = fitted_probabilities(lambda z, y: adjusted_loss(z, y, None, None, False)[0], labels)
    np.testing.assert_allclose(plain.numpy(), [0.9, 0.1], atol=1e-3)
    np.testing.assert_allclose(balanced.numpy(), [0.5, 0.5], atol=1e-3)
