"""The interface between the allocate stage and a method: what the trainer hands a method, what an epoch of it
looks like, and the calls the trainer makes. The trainer knows no method by name; each method is one module of
this package (registry.py lists them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from curvenet_dist.config import Config
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.data.datasets import Splits
from curvenet_dist.engine.distributed import DistributedContext
from curvenet_dist.meta.meta_iteration import IterationResult
from curvenet_dist.models.staged import StagedNet

TrainingLoss = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""(logits, labels, cross-entropies, per-sample inputs, track_meta) -> (per-sample loss, per-sample weight): the
seam through which a method shapes the classifier's loss (meta/meta_iteration.py)."""


@dataclass
class AllocateSetup:
    """What the allocate trainer hands a method to build itself from."""
    config: Config
    context: DistributedContext
    splits: Splits
    store: CurveStore | None
    """The probe's curve store (None for a method that needs no probe and was given none)."""
    model: StagedNet
    """The classifier, bare (not DDP-wrapped)."""
    train_loader: object
    train_eval_loader: object
    """The training set without augmentation, in id order across ranks."""
    loader_arguments: dict
    autocast: Callable

    @property
    def device(self) -> torch.device:
        return self.context.device

    def train_labels(self) -> torch.Tensor:
        """Every training sample's given label, indexed by sample id, on the device."""
        return torch.from_numpy(self.splits.train.labels).to(self.device)


@dataclass
class EpochPlan:
    """How one epoch trains, as a method decides at its start."""
    loader: object
    fixed_weights: torch.Tensor | None = None
    """Per-sample weights indexed by sample id, used as they are (None: the method's training loss decides)."""
    inputs: torch.Tensor | None = None
    """The method's per-sample inputs, indexed by sample id (CurveNet's curves, Dynamic Loss's bucket and sample)."""


class Method:
    """Plain cross-entropy, every weight 1: the base every method overrides where it differs."""
    needs_probe = True
    """Reads the probe's curve store: every method but Dynamic Loss, which ranks samples by their current loss."""
    ranks_samples = False
    """Its final weights order the samples within a class: then they are scored as a noise detector."""
    weighting_net: torch.nn.Module | None = None
    weighting_optimizer: torch.optim.Optimizer | None = None
    skip_layers = 0
    virtual_rule = "optimizer"

    def __init__(self, setup: AllocateSetup):
        self.setup = setup

    def training_loss(self) -> TrainingLoss | None:
        """The per-sample loss the classifier trains on (None: the cross-entropy, or fixed weights times it)."""
        return None

    def logit_adjustment(self) -> torch.Tensor | None:
        """Added to the logits [C] wherever the classifier's cross-entropy is taken in training (None: none)."""
        return None

    def describe(self) -> str:
        """The method's part of the stage's opening line."""
        return ""

    def tags(self) -> dict[str, str]:
        return {}

    def fingerprint(self) -> tuple:
        """What of the config makes this method's checkpoints its own."""
        return ()

    def start_epoch(self, epoch: int, start_batch: int) -> EpochPlan:
        return EpochPlan(self.setup.train_loader)

    def meta_batch(self, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The meta batch for train batch `batch`, or None when that batch takes no meta update."""
        return None

    def before_step(self, epoch: int, batch: int, labels: torch.Tensor, inputs: torch.Tensor | None,
                    ids: torch.Tensor) -> None:
        """Work of the method's own before each classifier step."""

    def after_step(self, ids: torch.Tensor, result: IterationResult) -> None:
        """Take note of a classifier step's outcome for the samples `ids` (their losses and logits)."""

    def end_epoch(self, train_metrics: dict[str, float]) -> None:
        """Take note of an epoch's training metrics."""

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """Rank 0's extra figures of an epoch, logged with the training metrics."""
        return {}

    def final_weights(self, train_losses: np.ndarray) -> np.ndarray:
        """Every training sample's final weight, given its loss under the final classifier (no augmentation)."""
        return np.ones(len(train_losses), np.float32)

    def summary(self, weights: np.ndarray) -> dict:
        """The method's figures for metrics.json."""
        return {}

    def warnings(self, summary: dict) -> list[str]:
        """Lines to print at the end of the run about what the method learned, given its `summary`."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
