"""The weighting net's optimizer: Adam with *decoupled* weight decay (AdamW).

The reference code adds an L2 term to Adam's gradient. Adam divides every gradient by its running size, so where
the meta-gradient is weaker than weight_decay * |parameter| (about 1e-5; the meta-gradient scales with the
virtual step's LR and with how the classifier's gradients align, and is around 1e-6 on a small or hard dataset),
the L2 term alone sets each step's direction and Adam takes full-size steps toward zero: the net collapses to its
initial output, every weight equal, and CurveNet is class-balanced CE (docs/DESIGN.md, departures). Decoupled
decay shrinks the parameters by lr * weight_decay per step whatever the gradient's size, so a weak but consistent
meta-gradient still sets the direction.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


def weighting_optimizer(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
