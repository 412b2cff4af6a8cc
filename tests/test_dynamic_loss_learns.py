"""Dynamic Loss's label corrector learns whom to trust within the meta budget a small dataset gives it: on a long
tail with 40% wrong labels, real meta iterations lower the trust of the high-loss ranks, where the wrong labels
are, in every class including the smallest."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from curvenet_dist.data.bias import corrupt_labels
from curvenet_dist.meta.hierarchical import rank_buckets
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.meta.weighting_optimizer import weighting_optimizer
from curvenet_dist.methods.logit_adjust import log_prior_adjustment
from curvenet_dist.models.dynamic_loss import DynamicLoss, DynamicLossTraining
from tests.test_curvenet_learns import BATCH, META_PER_CLASS, NUM_CLASSES, class_clusters, small_classifier

COUNTS, BUCKETS = [300, 150, 80, 40], 100
# The grid config's Dynamic Loss run makes about 240 meta updates before its freeze.
META_STEPS = 100
WARMUP_STEPS = 50


def test_the_corrector_trusts_the_wrong_labels_least_within_a_small_meta_budget():
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(NUM_CLASSES), COUNTS)
    given = corrupt_labels(true, NUM_CLASSES, "proportional", 0.4, rng)
    mislabeled = given != true
    # What the classifier's last epoch gives Dynamic Loss: a wrong label's loss is high, and its prediction is
    # mostly the true class; a clean sample's loss is low, and its prediction mostly its label.
    losses = np.where(mislabeled, 2.0, 0.5) + 0.4 * rng.standard_normal(len(true))
    predicted = np.where(rng.random(len(true)) < 0.8, true, rng.integers(0, NUM_CLASSES, len(true)))
    inputs = torch.from_numpy(np.stack([rank_buckets(losses, given, BUCKETS), predicted], 1))
    labels = torch.from_numpy(given)
    generator = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(NUM_CLASSES, 3, 2, 2, generator=generator)
    images = class_clusters(true, centres, generator)
    meta_labels = np.repeat(np.arange(NUM_CLASSES), META_PER_CLASS)
    meta = (class_clusters(meta_labels, centres, generator), torch.from_numpy(meta_labels))

    model = small_classifier()
    torch.manual_seed(1)
    net = DynamicLoss(log_prior_adjustment(np.bincount(given), tau=1.0), BUCKETS)
    iteration = MetaIteration(model, net, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
                              weighting_optimizer(net.parameters(), 3e-3, weight_decay=0.0), skip_layers=0,
                              training_loss=DynamicLossTraining(net))
    order = torch.Generator().manual_seed(2)
    # As the method's warm-up epochs: plain CE before the first meta update, so that the meta-gradient measures
    # a classifier that has learned something.
    for step in range(WARMUP_STEPS + META_STEPS):
        ids = torch.randperm(len(true), generator=order)[:BATCH]
        warm = step < WARMUP_STEPS
        iteration.step(images[ids], labels[ids], inputs[ids], None if warm else meta,
                       fixed_weights=torch.ones(BATCH) if warm else None)

    with torch.no_grad():
        trust = net.trust(inputs[:, 0], labels).numpy()
    # The corrector has one trust curve per class: each must rank its own class's wrong labels least trusted.
    for label in range(NUM_CLASSES):
        members = given == label
        assert roc_auc_score(mislabeled[members], -trust[members]) >= 0.9, f"class {label} of {COUNTS}"
