"""How the weighting net's outputs are scaled before they weigh the loss (`meta.weight_scale`).

With DESIGN.md §5's plain mean_i G_i * L_i, the meta step lowers the meta loss fastest by raising *every*
weight: a larger virtual step. Trained long enough, every weight saturates at the top (plain CE). Dividing by a
mean weight removes that direction, so the meta step can only learn which samples matter:
- `batch`: by the batch's mean (over the union batch in exact mode), Meta-Weight-Net's original normalisation. On
  small batches a few samples can then take most of the step.
- `dataset`: by the mean weight over the training set. CurveNet's input is fixed per sample, so this mean is a
  function of the net alone; it is estimated on a fixed, seeded sample of the training set, the same on every
  rank, and differentiated through like the weights themselves.
"""
from __future__ import annotations

import torch
from torch import nn

from curvenet_dist.config import ConfigError
from curvenet_dist.meta.distributed import all_reduce_mean_, differentiable_all_reduce_mean

WEIGHT_SCALES = ("none", "batch", "dataset")


class WeightScale:
    def __init__(self, mode: str, sync: str = "exact", reference_curves: torch.Tensor | None = None,
                 reference_labels: torch.Tensor | None = None):
        if mode not in WEIGHT_SCALES:
            raise ConfigError(f"meta.weight_scale={mode!r} is not allowed; choose one of: {', '.join(WEIGHT_SCALES)}")
        if mode == "dataset" and (reference_curves is None or reference_labels is None):
            raise ConfigError("meta.weight_scale='dataset' needs per-sample inputs fixed for the run (CurveNet's "
                              "curves); use 'batch' or 'none' for a weighting net over the current loss")
        self.mode, self.sync = mode, sync
        self.reference_curves, self.reference_labels = reference_curves, reference_labels

    def __call__(self, weights: torch.Tensor, weighting_net: nn.Module | None) -> torch.Tensor:
        """`weights` divided by the chosen mean (differentiably when `weights` carries a graph)."""
        if self.mode == "none":
            return weights
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

    def frozen(self, all_weights: torch.Tensor) -> torch.Tensor:
        """A frozen net's weights for the whole training set, scaled once by their exact mean (unless `none`):
        the rest of training is plain weighted CE."""
        return all_weights if self.mode == "none" else all_weights / all_weights.mean().clamp_min(1e-12)


def reference_sample(num_samples: int, size: int, seed: int) -> torch.Tensor:
    """Sorted sample ids of the fixed estimation sample for `dataset` scaling: all of them for a small training
    set, else `size` drawn without replacement by a generator every rank seeds alike."""
    if num_samples <= size:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_samples, generator=generator)[:size].sort().values
