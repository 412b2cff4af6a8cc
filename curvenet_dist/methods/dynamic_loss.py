"""Dynamic Loss (DESIGN.md §6): a label corrector and a margin generator, meta-learned each epoch on a hierarchical
sample of the training set (plus, with dynamic_loss.clean_meta, the clean meta set), which that epoch trains on
with its given labels. Samples are ranked by their loss in the last epoch's training pass, which also draws each
sample's y_pred from its logits there: no probe and no extra pass is needed."""
from __future__ import annotations

import numpy as np
import torch

from curvenet_dist.curves.gather import all_gather_concat
from curvenet_dist.engine.evaluate import losses_and_samples
from curvenet_dist.meta.distributed import all_reduce_mean_
from curvenet_dist.meta.hierarchical import hierarchical_sample, rank_buckets, union
from curvenet_dist.meta.meta_batches import MetaBatches
from curvenet_dist.meta.meta_iteration import IterationResult
from curvenet_dist.methods.base import AllocateSetup, EpochPlan, TrainingLoss
from curvenet_dist.methods.logit_adjust import log_prior_adjustment
from curvenet_dist.methods.meta_learned import MetaLearnedMethod
from curvenet_dist.models.dynamic_loss import DynamicLoss, DynamicLossTraining, warmup_corrector_loss


class DynamicLossMethod(MetaLearnedMethod):
    name = "dynamic_loss"
    needs_probe = False

    def __init__(self, setup: AllocateSetup):
        config, settings = setup.config, setup.config.dynamic_loss
        super().__init__(setup, settings)
        self.meta_table = self._select_meta_table() if settings.clean_meta else None
        # One meta loader for every epoch, over the training set (and the clean set after it): each epoch's meta
        # sample is a choice of its rows, so no epoch starts new loader workers.
        train = setup.splits.train
        pool = train if self.meta_table is None else union(train, self.meta_table)
        self.clean_rows = np.arange(len(train), len(pool))
        self.meta_pool_loader = self.meta_loader(pool)
        torch.manual_seed(config.run.seed)
        self._adopt(DynamicLoss(log_prior_adjustment(train.class_counts(), tau=1.0), settings.buckets, settings.hidden))
        self.loss = DynamicLossTraining(self.weighting_net)
        # Each sample's loss and sampled prediction as the epoch started (kept for a resumed epoch, so that it
        # trains on the same split), this epoch's recordings of them, and where a resumed epoch left its meta
        # batches.
        self.sample_losses = self.predicted = self.resumed_meta_position = None
        self.recorded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.sampler = torch.Generator(setup.device)
        self.warm = False

    def training_loss(self) -> TrainingLoss:
        return self.loss

    def start_epoch(self, epoch: int, start_batch: int) -> EpochPlan:
        """The reference's warm-up epochs train plain CE (while the corrector learns the given labels); after it,
        until the freeze, the epoch's hierarchical meta sample is drawn and trains with its given labels (its y_pred
        is its given label, so no trust can move its target), the rest with the corrected ones."""
        frozen = self._freeze_if_due(epoch)
        self.warm = epoch < self.settings.warmup_epochs and not frozen
        self.meta_learning = not (self.warm or frozen)
        self.sampler.manual_seed(hash((self.setup.config.run.seed, epoch, self.setup.context.rank)) % 2**32)
        losses = self._sample_losses()
        inputs = self._rank_inputs(losses)
        ones = torch.ones(len(self.setup.splits.train), device=self.setup.device) if self.warm else None
        if not self.meta_learning:
            return EpochPlan(self.setup.train_loader, fixed_weights=ones, inputs=inputs)
        meta_rows = torch.from_numpy(self._draw_meta_set(losses, epoch, start_batch)).to(self.setup.device)
        inputs[meta_rows, 1] = self.setup.train_labels()[meta_rows]
        return EpochPlan(self.setup.train_loader, inputs=inputs)

    def _sample_losses(self) -> np.ndarray:
        """Every sample's loss as the epoch starts. The first epoch, with nothing recorded yet, takes one evaluation
        pass (which draws the predictions too); every later one reads what the last epoch's training recorded."""
        setup = self.setup
        if self.sample_losses is None:
            losses, samples = losses_and_samples(setup.model, setup.train_eval_loader, setup.device,
                                                 len(setup.splits.train), setup.autocast, self.sampler)
            self.sample_losses = torch.from_numpy(losses).to(setup.device)
            self.predicted = torch.from_numpy(samples).to(setup.device)
        return self.sample_losses.cpu().numpy()

    def _rank_inputs(self, losses: np.ndarray) -> torch.Tensor:
        """Every sample's (loss-rank bucket within its class, sampled prediction)."""
        buckets = rank_buckets(losses, self.setup.splits.train.labels, self.settings.buckets)
        return torch.stack([torch.from_numpy(buckets).to(self.setup.device), self.predicted], dim=1)

    def _draw_meta_set(self, losses: np.ndarray, epoch: int, start_batch: int) -> np.ndarray:
        """Draws the epoch's hierarchical meta sample (with the clean set, if any) into the meta batches; returns
        the sample's training rows."""
        setup, train = self.setup, self.setup.splits.train
        meta_rows = hierarchical_sample(losses, train.labels, setup.splits.num_classes, setup.config.run.seed, epoch)
        self.meta_batches = MetaBatches(self.meta_pool_loader, np.concatenate([meta_rows, self.clean_rows]))
        # Each epoch's meta set is new; its shuffle starts at the epoch's number, or where a resumed epoch left it.
        self.meta_batches.load_state_dict(self.resumed_meta_position if start_batch else {"epoch": epoch, "batch": 0})
        return meta_rows

    def before_step(self, epoch: int, batch: int, labels: torch.Tensor, inputs: torch.Tensor | None,
                    ids: torch.Tensor) -> None:
        # The reference's warm-up of the corrector: for its first iterations it learns to reproduce the given labels.
        steps_before = epoch * len(self.setup.train_loader) + batch
        if not self.warm or steps_before >= self.settings.warmup_corrector_steps:
            return
        self.weighting_optimizer.zero_grad(set_to_none=True)
        warmup_corrector_loss(self.weighting_net, inputs[:, 0], labels, torch.exp(-self.sample_losses[ids])).backward()
        parameters = [param for param in self.weighting_net.parameters() if param.grad is not None]
        all_reduce_mean_([param.grad for param in parameters])
        self.weighting_optimizer.step()

    def after_step(self, ids: torch.Tensor, result: IterationResult) -> None:
        # As the reference draws y_pred from each step's logits; here it is kept for the sample's next epoch.
        predicted = torch.multinomial(result.logits.float().softmax(1), 1, generator=self.sampler).squeeze(1)
        self.recorded.append((ids, result.losses.float(), predicted))

    def end_epoch(self, train_metrics: dict[str, float]) -> None:
        """The epoch's recordings from every rank replace those samples' losses and predictions."""
        super().end_epoch(train_metrics)
        if not self.recorded:
            return
        ids, losses, predicted = (all_gather_concat(torch.cat(parts)) for parts in zip(*self.recorded))
        self.recorded = []
        self.sample_losses[ids], self.predicted[ids] = losses, predicted

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
        if self.sample_losses is not None:
            state["sample_losses"], state["predicted"] = self.sample_losses, self.predicted
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.resumed_meta_position = state["meta_batches"]
        # A checkpoint from before the losses were recorded in training holds the same thing as "eval_losses".
        losses = state.get("sample_losses", state.get("eval_losses"))
        if losses is not None:
            self.sample_losses, self.predicted = losses, state["predicted"]
