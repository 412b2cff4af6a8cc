"""Meta-Weight-Net (Shu et al., NeurIPS 2019): a 1-h-1 MLP maps each sample's current loss to its weight,
meta-learned on the clean meta set with the reference code's plain-SGD virtual step."""
from __future__ import annotations

import numpy as np
import torch

from curvenet_dist.engine.batched import weights_by_chunks
from curvenet_dist.meta.meta_batches import MetaBatches
from curvenet_dist.meta.meta_iteration import WeightedCrossEntropy
from curvenet_dist.meta.weight_scale import WeightScale
from curvenet_dist.methods.base import AllocateSetup, EpochPlan, TrainingLoss
from curvenet_dist.methods.meta_learned import MetaLearnedMethod
from curvenet_dist.models.weighting import MetaWeightNet


class MetaWeightNetMethod(MetaLearnedMethod):
    name = "mwnet"
    virtual_rule = "sgd"

    def __init__(self, setup: AllocateSetup):
        config = setup.config
        super().__init__(setup, config.mwnet)
        self.meta_table = self._select_meta_table()
        torch.manual_seed(config.run.seed)
        self._adopt(MetaWeightNet(config.mwnet.hidden))
        self.loss = WeightedCrossEntropy(self.weighting_net, WeightScale(config.mwnet.weight_scale, config.meta.sync))
        self.meta_batches = MetaBatches(self.meta_loader(self.meta_table))

    def training_loss(self) -> TrainingLoss:
        return self.loss

    def start_epoch(self, epoch: int, start_batch: int) -> EpochPlan:
        self.meta_learning = not self._freeze_if_due(epoch)
        return EpochPlan(self.setup.train_loader)

    def final_weights(self, train_losses: np.ndarray) -> np.ndarray:
        # The weight depends on the sample's loss: here its loss under the final classifier.
        losses = torch.from_numpy(train_losses).to(self.setup.device)
        return weights_by_chunks(self.weighting_net, self.setup.train_labels(), losses=losses).cpu().numpy()
