"""How the weighting net's outputs are scaled before they weigh the loss (`curvenet.weight_scale`,
`mwnet.weight_scale`).

With DESIGN.md §5's plain mean_i G_i * L_i, the meta step lowers the meta loss fastest by raising *every*
weight: a larger virtual step. Trained long enough, every weight saturates at the top (plain CE). Dividing by a
mean weight removes that direction, so the meta step can only learn which samples matter:
- `batch`: by the batch's mean (over the union batch in exact mode), Meta-Weight-Net's original normalisation. On
  small batches a few samples can then take most of the step.
- `dataset`: by the mean weight over the training set. CurveNet's input is fixed per sample, so this mean is a
  function of the net alone; it is estimated on a fixed, seeded sample of the training set, the same on every
  rank, and differentiated through like the weights themselves.
- `class`: by the mean weight of the sample's given class (estimated alike, on a fixed sample of each class),
  times N / (C n_c). Every class then carries the same total weight, as in class-balanced CE, and the net only
  shares a class's weight out among its samples: the class rebalancing no longer competes with the noise for
  the sigmoid's range (DESIGN.md §9).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from curvenet_dist.meta.distributed import all_reduce_mean_, differentiable_all_reduce_mean


def balanced_class_factors(class_counts: np.ndarray) -> torch.Tensor:
    """N / (C n_c) per class: weights that give every class the same total and keep the mean weight 1 (0 for a
    class with no samples, which no sample can use)."""
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    present = counts > 0
    factors = torch.zeros_like(counts)
    factors[present] = counts.sum() / (present.sum() * counts[present])
    return factors


def noise_aware_class_factors(class_counts: np.ndarray, wrong_fraction: np.ndarray) -> torch.Tensor:
    """Class-balanced CE's factor for each class's estimated clean share and CE's (1) for its estimated wrong
    share, (1 - f_c) N / (C n_c) + f_c, rescaled to a mean weight of 1: a class whose labels look mostly wrong
    gets CE's total instead of multiplying its wrong labels."""
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    wrong = torch.as_tensor(np.asarray(wrong_fraction), dtype=torch.float64)
    factors = (1 - wrong) * balanced_class_factors(class_counts) + wrong * (counts > 0)
    return factors * counts.sum() / (factors * counts).sum()


def class_means(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of `values` per class (differentiable; 0 for a class absent from `labels`)."""
    sums = values.new_zeros(num_classes).index_add(0, labels, values)
    # index_add, not bincount: it also runs on the meta device, where bench slmo --cost-model counts FLOPs.
    counts = values.new_zeros(num_classes).index_add(0, labels, torch.ones_like(values)).clamp_min(1)
    return sums / counts


class WeightScale:
    def __init__(self, mode: str, sync: str = "exact", reference_curves: torch.Tensor | None = None,
                 reference_labels: torch.Tensor | None = None, class_factors: torch.Tensor | None = None):
        """`mode`: a weight scale its method's config has checked (`none`, `batch`, `dataset` or `class`).
        `dataset` and `class` take the fixed reference sample's inputs and labels (reference_sample), `class`
        also each class's factor (the class's total over its count)."""
        self.mode, self.sync = mode, sync
        self.reference_curves, self.reference_labels = reference_curves, reference_labels
        self.class_factors = class_factors.to(reference_curves) if mode == "class" else None

    def __call__(self, weights: torch.Tensor, weighting_net: nn.Module | None, labels: torch.Tensor) -> torch.Tensor:
        """`weights` (of samples with given `labels`) divided by the chosen mean, differentiably when `weights`
        carries a graph."""
        if self.mode == "none":
            return weights
        if self.mode == "class":
            reference = weighting_net(self.reference_curves, self.reference_labels, None)
            return self._class_shares(weights, labels, class_means(reference, self.reference_labels,
                                                                    len(self.class_factors)))
        if self.mode == "dataset":
            mean = weighting_net(self.reference_curves, self.reference_labels, None).mean()
        else:
            mean = weights.mean().reshape(1)
            if self.sync == "exact":
                if weights.requires_grad:
                    mean = differentiable_all_reduce_mean([mean])[0]
                else:
                    mean = mean.clone()
                    all_reduce_mean_([mean])
        return weights / mean.clamp_min(1e-12)

    def frozen(self, all_weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A frozen net's weights for the whole training set (sample i has given label labels[i]), scaled once by
        their exact mean, or their exact class means (unless `none`): the rest of training is plain weighted CE."""
        if self.mode == "none":
            return all_weights
        if self.mode == "class":
            return self._class_shares(all_weights, labels, class_means(all_weights, labels, len(self.class_factors)))
        return all_weights / all_weights.mean().clamp_min(1e-12)

    def _class_shares(self, weights: torch.Tensor, labels: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """Each weight over its class's mean weight `means[label]`, times the class's balanced factor."""
        return weights / means[labels].clamp_min(1e-12) * self.class_factors[labels]


def reference_sample(labels: np.ndarray, size: int, seed: int, by_class: bool = False) -> torch.Tensor:
    """Sorted sample ids of the fixed estimation sample for `dataset` / `class` scaling, drawn without
    replacement by a generator every rank seeds alike: `size` of all samples or, `by_class`, ceil(size / C) of
    each class (all of a smaller set or class)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    if not by_class:
        if len(labels) <= size:
            return torch.arange(len(labels))
        return torch.randperm(len(labels), generator=generator)[:size].sort().values
    classes = labels.unique()
    per_class = -(-size // len(classes))
    picked = []
    for label in classes.tolist():
        members = (labels == label).nonzero().squeeze(1)
        picked.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(picked).sort().values
