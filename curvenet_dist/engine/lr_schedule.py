"""Learning-rate schedules, as a function of (fractional) epoch."""
from __future__ import annotations

import math

from curvenet_dist.config import AllocateConfig, ProbeConfig


def probe_lr(config: ProbeConfig, base_lr: float, epoch: float) -> float:
    """The probe stage's cyclical LR.

    `square` (the reference code): base_lr for the first warm_fraction of epochs, then a square wave that holds
    high_lr for cycle_epochs, low_lr for cycle_epochs, and so on. `triangular` (Smith 2017): low_lr rising
    linearly to high_lr over cycle_epochs, then back down, repeated.
    """
    if config.schedule == "square":
        warm_epochs = config.warm_fraction * config.epochs
        if epoch < warm_epochs:
            return base_lr
        half_wave = int((epoch - warm_epochs) // config.cycle_epochs)
        return config.high_lr if half_wave % 2 == 0 else config.low_lr
    cycle_position = epoch / config.cycle_epochs
    distance = abs(cycle_position - 2 * math.floor(cycle_position / 2) - 1)
    return config.low_lr + (config.high_lr - config.low_lr) * (1 - distance)


def step_lr(config: AllocateConfig, base_lr: float, epoch: int) -> float:
    """Step decay, base_lr * gamma^(milestones passed), after a linear warm-up over the first warmup_epochs."""
    warmup = min(1.0, (epoch + 1) / config.warmup_epochs) if config.warmup_epochs else 1.0
    return warmup * base_lr * config.gamma ** sum(epoch >= milestone for milestone in config.milestones)
