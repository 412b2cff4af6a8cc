"""Dynamic Loss (DESIGN.md §6): a label corrector and a margin generator, meta-learned each epoch on a hierarchical
sample of the training set (plus, with dynamic_loss.clean_meta, the clean meta set), which that epoch trains
without. Samples are ranked by their loss in one evaluation pass at each epoch's start: no probe is needed."""
from __future__ import annotations

import numpy as np
import torch

from curvenet_dist.data.loader import build_loader
from curvenet_dist.engine.evaluate import losses_and_samples
from curvenet_dist.meta.distributed import all_reduce_mean_
from curvenet_dist.meta.hierarchical import hierarchical_sample, rank_buckets, union
from curvenet_dist.meta.meta_batches import MetaBatches
from curvenet_dist.methods.base import AllocateSetup, EpochPlan, TrainingLoss
from curvenet_dist.methods.meta_learned import MetaLearnedMethod
from curvenet_dist.models.dynamic_loss import DynamicLoss, DynamicLossTraining, warmup_corrector_loss


class DynamicLossMethod(MetaLearnedMethod):
    name = "dynamic_loss"
    needs_probe = False

    def __init__(self, setup: AllocateSetup):
        config, settings = setup.config, setup.config.dynamic_loss
        super().__init__(setup, settings)
        self.meta_table = self._select_meta_table() if settings.clean_meta else None
        torch.manual_seed(config.run.seed)
        self._adopt(DynamicLoss(setup.splits.num_classes, settings.buckets, settings.hidden))
        self.loss = DynamicLossTraining(self.weighting_net)
        # The epoch's evaluation pass (each sample's loss and sampled prediction), kept for a resumed epoch, and
        # where a resumed epoch left its meta batches.
        self.eval_losses = self.predicted = self.resumed_meta_position = None
        self.warm = False

    def training_loss(self) -> TrainingLoss:
        return self.loss

    def start_epoch(self, epoch: int, start_batch: int) -> EpochPlan:
        """The reference's warm-up epochs train plain CE (while the corrector learns the given labels); after it,
        the epoch's hierarchical meta sample is drawn and the epoch trains on the rest, until the freeze."""
        frozen = self._freeze_if_due(epoch)
        self.warm = epoch < self.settings.warmup_epochs and not frozen
        self.meta_learning = not (self.warm or frozen)
        losses = self._evaluate_losses(epoch, start_batch)
        inputs = self._rank_inputs(losses)
        ones = torch.ones(len(self.setup.splits.train), device=self.setup.device) if self.warm else None
        if not self.meta_learning:
            return EpochPlan(self.setup.train_loader, fixed_weights=ones, inputs=inputs)
        train_rows = self._draw_meta_set(losses, epoch, start_batch)
        loader = build_loader(self.setup.config.data, self.setup.splits.train.select(train_rows), train=True,
                              **self.setup.loader_arguments)
        return EpochPlan(loader, inputs=inputs, sample_ids=torch.from_numpy(train_rows))

    def _evaluate_losses(self, epoch: int, start_batch: int) -> np.ndarray:
        """Every sample's loss (and sampled prediction, kept in `predicted`) from one evaluation pass; a run
        resumed inside an epoch reuses that epoch's pass, so it trains on the same split as before."""
        setup, train = self.setup, self.setup.splits.train
        if self.eval_losses is None or start_batch == 0:
            seed = hash((setup.config.run.seed, epoch, setup.context.rank)) % 2**32
            generator = torch.Generator(setup.device).manual_seed(seed)
            losses, samples = losses_and_samples(setup.model, setup.train_eval_loader, setup.device, len(train),
                                                 setup.autocast, generator)
            self.eval_losses = torch.from_numpy(losses).to(setup.device)
            self.predicted = torch.from_numpy(samples).to(setup.device)
        return self.eval_losses.cpu().numpy()

    def _rank_inputs(self, losses: np.ndarray) -> torch.Tensor:
        """Every sample's (loss-rank bucket within its class, sampled prediction)."""
        buckets = rank_buckets(losses, self.setup.splits.train.labels, self.settings.buckets)
        return torch.stack([torch.from_numpy(buckets).to(self.setup.device), self.predicted], dim=1)

    def _draw_meta_set(self, losses: np.ndarray, epoch: int, start_batch: int) -> np.ndarray:
        """Draws the epoch's hierarchical meta sample (with the clean set, if any) into the meta batches; returns
        the training rows left."""
        setup, train = self.setup, self.setup.splits.train
        meta_rows = hierarchical_sample(losses, train.labels, setup.splits.num_classes, setup.config.run.seed, epoch)
        meta_table = train.select(meta_rows)
        if self.meta_table is not None:
            meta_table = union(meta_table, self.meta_table)
        self.meta_batches = MetaBatches(self.meta_loader(meta_table))
        # Each epoch's meta set is new; its shuffle starts at the epoch's number, or where a resumed epoch left it.
        self.meta_batches.load_state_dict(self.resumed_meta_position if start_batch else {"epoch": epoch, "batch": 0})
        return np.setdiff1d(train.ids, meta_rows)

    def before_step(self, epoch: int, batch: int, labels: torch.Tensor, inputs: torch.Tensor | None,
                    ids: torch.Tensor) -> None:
        # The reference's warm-up of the corrector: for its first iterations it learns to reproduce the given labels.
        steps_before = epoch * len(self.setup.train_loader) + batch
        if not self.warm or steps_before >= self.settings.warmup_corrector_steps:
            return
        self.weighting_optimizer.zero_grad(set_to_none=True)
        warmup_corrector_loss(self.weighting_net, inputs[:, 0], labels, torch.exp(-self.eval_losses[ids])).backward()
        parameters = [param for param in self.weighting_net.parameters() if param.grad is not None]
        all_reduce_mean_([param.grad for param in parameters])
        self.weighting_optimizer.step()

    def final_weights(self, train_losses: np.ndarray) -> np.ndarray:
        """The trust weight w of each sample's rank bucket under the final classifier's losses."""
        device, labels = self.setup.device, self.setup.splits.train.labels
        buckets = rank_buckets(train_losses, labels, self.settings.buckets)
        with torch.no_grad():
            return self.weighting_net.trust(torch.from_numpy(buckets).to(device),
                                            torch.from_numpy(labels).to(device)).cpu().numpy()

    def summary(self, weights: np.ndarray) -> dict:
        with torch.no_grad():
            margins = [round(m, 6) for m in self.weighting_net.margins().tolist()]
        return {**super().summary(weights), "margins": margins}

    def describe(self) -> str:
        config = self.setup.config
        clean = (f" and {len(self.meta_table)} clean ({config.meta.source})" if self.meta_table is not None else "")
        return (f"meta set: each epoch's hierarchical sample{clean}, dynamic_loss.skip_layers {self.skip_layers}, "
                f"a meta update every {self.settings.meta_interval} batch(es), meta.sync {config.meta.sync}, ")

    def tags(self) -> dict[str, str]:
        clean = f"+{self.setup.config.meta.source}" if self.meta_table is not None else ""
        return {"meta_source": f"hierarchical{clean}", "skip_layers": str(self.skip_layers)}

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.eval_losses is not None:
            state["eval_losses"], state["predicted"] = self.eval_losses, self.predicted
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.resumed_meta_position = state["meta_batches"]
        if "eval_losses" in state:
            self.eval_losses, self.predicted = state["eval_losses"], state["predicted"]
