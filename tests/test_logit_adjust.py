"""Logit adjustment, the long-tail baseline and CurveNet's default rebalancing: what makes it work is that the
trainer's minimiser predicts the balanced posterior, not the training set's skewed one."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from curvenet_dist.curves.store import CurveStore
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.methods.class_rebalance import ClassTotals, LogitAdjusted
from curvenet_dist.methods.logit_adjust import log_prior_adjustment
from curvenet_dist.models.staged import ClassifierHead, StagedNet


def test_the_adjustment_is_tau_times_the_log_class_share_and_an_empty_class_gets_the_smallest():
    adjustment = log_prior_adjustment(np.array([80, 20, 0]), tau=1.0)
    np.testing.assert_allclose(adjustment.numpy(), np.log([80 / 100, 20 / 100, 20 / 100]), rtol=1e-6)
    assert torch.equal(log_prior_adjustment(np.array([80, 20]), tau=0.0), torch.zeros(2))


def fitted_probabilities(adjustment: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """Trains a one-layer classifier through the allocate stage's iteration on one input seen with every label
    of `labels`; returns its predicted (unadjusted) probabilities."""
    torch.manual_seed(0)
    model = StagedNet(nn.Identity(), [nn.Identity()], ClassifierHead(1, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    iteration = MetaIteration(model, None, optimizer, None, skip_layers=0, logit_adjustment=adjustment)
    images = torch.ones(len(labels), 1, 1, 1)
    for _ in range(300):
        iteration.step(images, labels, None)
    with torch.no_grad():
        return model(images[:1]).softmax(1)[0]


def test_plain_cross_entropy_learns_the_skew_and_the_adjusted_trainer_the_balanced_posterior():
    labels = torch.tensor([0] * 90 + [1] * 10)
    np.testing.assert_allclose(fitted_probabilities(None, labels).numpy(), [0.9, 0.1], atol=1e-3)
    adjustment = log_prior_adjustment(np.array([90, 10]), tau=1.0)
    np.testing.assert_allclose(fitted_probabilities(adjustment, labels).numpy(), [0.5, 0.5], atol=1e-3)


def test_curvenet_under_logit_adjustment_keeps_every_class_total_and_adjusts_by_the_given_label_prior(tmp_path):
    # A head class's errors swamp the tail: class 2's given count holds 70 head samples beside its own 30.
    true = np.repeat(np.arange(3), [500, 200, 30])
    labels = true.copy()
    labels[np.flatnonzero(true == 0)[-70:]] = 2
    store = CurveStore.open_or_create(tmp_path / "curves.zarr", fingerprint="f", dataset_fingerprint="d",
                                      labels=labels, true_labels=true, num_epochs=2, with_margins=True)
    for epoch in range(2):
        store.write_epoch(epoch, np.ones(len(labels), np.float32), lr=0.1, margins=np.ones(len(labels), np.float32))
    counts = np.bincount(labels)
    rebalance = LogitAdjusted(store, counts)
    np.testing.assert_allclose(rebalance.class_factors().numpy(), [1, 1, 1])
    np.testing.assert_allclose(rebalance.logit_adjustment().numpy(), np.log(counts / counts.sum()), rtol=1e-6)
    assert ClassTotals(store, counts).logit_adjustment() is None, "class totals train on plain logits"
