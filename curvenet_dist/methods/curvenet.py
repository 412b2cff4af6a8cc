"""CurveNet (DESIGN.md §5): an MLP over each sample's standardised probe loss and logit-margin curves plus a
label embedding corrects the probe's own judgment of its label (its mean margin) into its weight, meta-learned on
the clean meta set until the classifier's first LR decay (or until its weights settle), then frozen."""
from __future__ import annotations

import numpy as np
import torch

from curvenet_dist.curves.features import curve_features, suspicion_direction
from curvenet_dist.engine.batched import weights_by_chunks
from curvenet_dist.meta.meta_batches import MetaBatches
from curvenet_dist.meta.meta_iteration import WeightedCrossEntropy
from curvenet_dist.meta.settling import WeightSettling
from curvenet_dist.meta.weight_scale import WeightScale, reference_sample
from curvenet_dist.methods.base import AllocateSetup, EpochPlan, TrainingLoss
from curvenet_dist.methods.class_rebalance import REBALANCES
from curvenet_dist.methods.meta_learned import MetaLearnedMethod
from curvenet_dist.models.weighting import CurveNet
from curvenet_dist.tracking.report import audited_noise_scores


class CurveNetMethod(MetaLearnedMethod):
    name = "curvenet"

    def __init__(self, setup: AllocateSetup):
        config, settings = setup.config, setup.config.curvenet
        super().__init__(setup, settings)
        self.meta_table = self._select_meta_table()
        features = curve_features(setup.store, settings.skip_epochs, settings.curve_normalization)
        self.curves = torch.from_numpy(features).to(setup.device)
        self.rebalance = REBALANCES[settings.rebalance](setup.store, setup.splits.train.class_counts())
        prior = settings.prior_slope * torch.from_numpy(suspicion_direction(setup.store, settings.skip_epochs))
        torch.manual_seed(config.run.seed)
        self._adopt(CurveNet(self.curves.shape[1], setup.splits.num_classes, settings.embedding_dim,
                             tuple(settings.curve_hidden), tuple(settings.head_hidden), prior))
        self.scale = self._weight_scale()
        self.loss = WeightedCrossEntropy(self.weighting_net, self.scale)
        self.meta_batches = MetaBatches(self.meta_loader(self.meta_table))
        # Once frozen, a weight depends only on the curve and label: all of them are computed once, and scored once.
        self.frozen_weights: torch.Tensor | None = None
        self.frozen_auroc: dict[str, float] | None = None
        self.settling = WeightSettling(settings.settle_tolerance, settings.settle_epochs)
        self.settled_at: int | None = None
        """The first epoch frozen because the weights settled (None: meta-learned until the first LR decay)."""
        self.meta_epochs_to_decay = self.meta_epochs()
        self.epoch = 0

    def _weight_scale(self) -> WeightScale:
        config, mode = self.setup.config, self.setup.config.curvenet.weight_scale
        if mode not in ("dataset", "class"):
            return WeightScale(mode, config.meta.sync)
        train = self.setup.splits.train
        ids = reference_sample(train.labels, config.curvenet.scale_samples, config.run.seed, by_class=mode == "class")
        labels = torch.from_numpy(train.labels)[ids].to(self.setup.device)
        return WeightScale(mode, config.meta.sync, self.curves[ids.to(self.setup.device)], labels,
                           self.rebalance.class_factors() if mode == "class" else None)

    def training_loss(self) -> TrainingLoss:
        return self.loss

    def logit_adjustment(self) -> torch.Tensor | None:
        return self.rebalance.logit_adjustment()

    @torch.no_grad()
    def weights(self) -> torch.Tensor:
        """CurveNet's weight for every training sample, indexed by sample id."""
        return weights_by_chunks(self.weighting_net, self.setup.train_labels(), self.curves)

    def frozen(self, epoch: int) -> bool:
        return super().frozen(epoch) or (self.settled_at is not None and epoch >= self.settled_at)

    def start_epoch(self, epoch: int, start_batch: int) -> EpochPlan:
        self.epoch = epoch
        frozen = self._freeze_if_due(epoch)
        if frozen and self.frozen_weights is None:
            self.frozen_weights = self.scale.frozen(self.weights(), self.setup.train_labels())
        self.meta_learning = not frozen
        return EpochPlan(self.setup.train_loader, fixed_weights=self.frozen_weights if frozen else None,
                         inputs=self.curves)

    def end_epoch(self, train_metrics: dict[str, float]) -> None:
        super().end_epoch(train_metrics)
        if not self.meta_learning:
            return
        # Every rank computes the same weights from the same net, so every rank decides alike.
        change = self.settling.observe(self.weights().cpu().numpy(), self.setup.splits.train.labels)
        if change is not None:
            train_metrics["weight_change"] = change
        if self.settling.settled and self.settled_at is None:
            self.settled_at = self.epoch + 1

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """The noise AUROC of the current class-relative weights over the samples whose true label is known: how
        the separation grows (or decays) while CurveNet is meta-learned."""
        if self.frozen_auroc is not None:
            return self.frozen_auroc
        if not (self.setup.splits.train.true_labels >= 0).any():
            return {}
        # A meta epoch's end computed its weights already (the settling compares them); the net has not moved since.
        weights = self.settling.previous if self.meta_learning else self.weights().cpu().numpy()
        scores = audited_noise_scores(weights, self.setup.splits.train)
        auroc = {"noise_auroc": scores["noise_auroc"]} if scores else {}
        if self.frozen(epoch):
            self.frozen_auroc = auroc
        return auroc

    def final_weights(self, train_losses: np.ndarray) -> np.ndarray:
        return self.weights().cpu().numpy()

    def describe(self) -> str:
        # Class totals act through the `class` weight scale only; a logit adjustment under any scale.
        if self.scale.mode != "class" and self.logit_adjustment() is None:
            return super().describe()
        return super().describe() + self.rebalance.describe()

    def fingerprint(self) -> tuple:
        # A net over the loss curve alone does not resume as a net over both curves (a store without margins).
        return (*super().fingerprint(), self.curves.shape[1])

    def summary(self, weights: np.ndarray) -> dict:
        return {**super().summary(weights), "meta_epochs": self.meta_epochs(), **self.rebalance.summary()}

    def warnings(self, summary: dict) -> list[str]:
        lines = super().warnings(summary)
        if self.settled_at is not None:
            lines.append(f"the weights settled after epoch {self.settled_at} (curvenet.settle_tolerance): "
                         f"{summary['meta_epochs']} meta epochs, {self.meta_epochs_to_decay - summary['meta_epochs']} "
                         f"fewer than up to the first LR decay")
        return lines

    def state_dict(self) -> dict:
        return {**super().state_dict(), "settling": self.settling.state_dict(), "settled_at": self.settled_at}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.settling.load_state_dict(state["settling"])
        self.settled_at = state["settled_at"]
