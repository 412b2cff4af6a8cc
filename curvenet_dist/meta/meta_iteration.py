"""One allocate-stage iteration (DESIGN.md §5): virtual step, meta step, actual step, with SLMO and exact or local
distributed meta-gradients.

The train batch is forwarded once: its graph serves both the virtual step (create_graph, top parameters only)
and the actual step. The bottom parts are unchanged in w_hat, so the meta batch's bottom features are computed
once without a graph and the second-order backward stops at the first top part (paper eq. 10).

What the meta-net controls is the per-sample training loss, behind one seam (`training_loss`): given the train
batch's logits, labels, cross-entropies and per-sample inputs, it returns the per-sample loss, differentiable in
the meta-net's parameters when `track_meta`, and the per-sample weight to report. CurveNet and Meta-Weight-Net
weigh the cross-entropy (`WeightedCrossEntropy`); Dynamic Loss corrects the target and adds margins
(models/dynamic_loss.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from curvenet_dist.config import ConfigError
from curvenet_dist.meta.distributed import OverlappedGradientMean, all_reduce_mean_, differentiable_all_reduce_mean
from curvenet_dist.meta.slmo import PartRange, split_layers
from curvenet_dist.meta.virtual_step import virtual_optimizer_step, virtual_sgd_step
from curvenet_dist.meta.weight_scale import WeightScale
from curvenet_dist.models.staged import StagedNet

SYNC_MODES = ("exact", "local")
VIRTUAL_RULES = ("optimizer", "sgd")


@dataclass
class IterationResult:
    losses: torch.Tensor
    """Per-sample cross-entropy of the train batch [B] (of its adjusted logits, under a logit adjustment),
    detached."""
    logits: torch.Tensor
    """The train batch's logits [B, C], detached."""
    weights: torch.Tensor
    """Per-sample weights [B] used by the actual step (from the updated weighting net; Dynamic Loss: the trust
    weight w)."""
    meta_loss: torch.Tensor | None
    """Meta-batch cross-entropy at w_hat, averaged over ranks (a 0-d tensor, left on the device so the hot path
    never waits for it); None when the weighting net was not updated."""
    meta_gradient_norm: torch.Tensor | None = None
    """The norm of the weighting net's meta-gradient (averaged over ranks, before the optimizer's weight decay), a
    0-d tensor on the device; None when the weighting net was not updated. How hard the meta set pulls on the net:
    a run whose weights never moved shows it here."""


class WeightedCrossEntropy:
    """CurveNet / Meta-Weight-Net: the weighting net's weight, scaled, times each sample's cross-entropy. The
    inputs are CurveNet's curves (MW-Net reads the loss instead)."""

    def __init__(self, weighting_net: nn.Module, scale: WeightScale):
        self.weighting_net, self.scale = weighting_net, scale

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor,
                 inputs: torch.Tensor | None, track_meta: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(track_meta and torch.is_grad_enabled()):
            weights = self.scale(self.weighting_net(inputs, labels, losses.detach()), self.weighting_net, labels)
        return weights * losses, weights.detach()


def _cloned(buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in buffers.items()}


class MetaIteration:
    """Trains a classifier with per-sample weights from `weighting_net` (CurveNet, MW-Net, or None for plain CE),
    meta-learning the weighting net on the meta batch when asked to."""

    def __init__(
        self,
        model: StagedNet,
        weighting_net: nn.Module | None,
        classifier_optimizer: torch.optim.SGD,
        weighting_optimizer: torch.optim.Optimizer | None,
        skip_layers: int,
        sync: str = "exact",
        weight_scale: WeightScale | None = None,
        virtual_rule: str = "optimizer",
        training_loss=None,
        data_parallel: nn.Module | None = None,
        logit_adjustment: torch.Tensor | None = None,
    ):
        """`virtual_rule`: `optimizer` moves w_hat as the classifier's SGD would (momentum, weight decay, Nesterov;
        CurveNet's reference code, through `higher`); `sgd` is Meta-Weight-Net's reference virtual step, plain
        w - lr * g at the current LR. `training_loss`: the seam above; by default the weighting net's weight times
        the cross-entropy. `data_parallel`: the classifier wrapped in DistributedDataParallel
        (forward_sync_buffers=False), which steps without a meta update (plain CE, a frozen net) go through, so
        their gradient all-reduce overlaps the backward as in any DDP training. `logit_adjustment` [C]: added to
        the train batch's logits for every cross-entropy it trains on (logit adjustment); evaluation is not
        adjusted."""
        if not isinstance(model, StagedNet):
            raise TypeError(f"MetaIteration needs the bare StagedNet classifier (not DDP-wrapped), got {type(model)}")
        if sync not in SYNC_MODES:
            raise ConfigError(f"meta.sync={sync!r} is not allowed; choose one of: {', '.join(SYNC_MODES)}")
        if virtual_rule not in VIRTUAL_RULES:
            raise ValueError(f"virtual_rule={virtual_rule!r}; choose one of: {', '.join(VIRTUAL_RULES)}")
        if weighting_net is not None and weighting_optimizer is None:
            raise ValueError("a weighting net needs a weighting optimizer")
        self.model = model
        self.weighting_net = weighting_net
        self.classifier_optimizer = classifier_optimizer
        self.weighting_optimizer = weighting_optimizer
        self.sync = sync
        self.scale = weight_scale or WeightScale("none", sync)
        self.virtual_rule = virtual_rule
        self.training_loss = training_loss or (WeightedCrossEntropy(weighting_net, self.scale)
                                               if weighting_net is not None else None)
        self.data_parallel = data_parallel
        # On the classifier's device once: a host-to-device copy every step would wait for the GPU.
        self.logit_adjustment = (None if logit_adjustment is None
                                 else logit_adjustment.to(next(model.parameters()).device))
        self.split = split_layers(model, skip_layers)
        self.bottom = PartRange(model, 0, self.split.bottom_part_count)
        self.top = PartRange(model, self.split.bottom_part_count)
        self.classifier_parameters = [param for param in model.parameters() if param.requires_grad]
        self.gradient_mean = OverlappedGradientMean(self.classifier_parameters)
        self.virtual_parameters = {
            name: param for name, param in self.split.top_parameters.items() if param.requires_grad
        }
        self.running_statistics = [buffer for buffer in model.buffers() if buffer.is_floating_point()]

    def step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        inputs: torch.Tensor | None,
        meta_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
        fixed_weights: torch.Tensor | None = None,
    ) -> IterationResult:
        """One classifier step on the train batch. With a meta batch (images, labels) and a weighting net, first
        the virtual step, the meta step and an Adam step of the weighting net; the actual step then uses its new
        weights. Without, plain weighted CE with the current net (all weights 1 without a net), or with
        `fixed_weights` when given (a frozen CurveNet's weights, computed once for all samples)."""
        self.classifier_optimizer.zero_grad(set_to_none=True)
        meta_update = self.weighting_net is not None and meta_batch is not None
        # The one real forward of the train batch: BatchNorm running statistics update here, once. A meta update
        # needs the bottom/top split (its virtual step differentiates the top only); DDP's hooks would not see
        # that forward, so only a plain step goes through the DDP wrapper.
        if meta_update or self.data_parallel is None:
            logits = self.top(self.bottom(images))
        else:
            logits = self.data_parallel(images)
        adjusted = logits if self.logit_adjustment is None else logits + self.logit_adjustment.to(logits.dtype)
        losses = F.cross_entropy(adjusted, labels, reduction="none")

        meta_loss = meta_gradient_norm = None
        if meta_update:
            meta_loss, meta_gradient_norm = self._update_weighting_net(logits, losses, labels, inputs, *meta_batch)

        if fixed_weights is not None:
            weights = fixed_weights
            sample_losses = weights * losses
        elif self.training_loss is None:
            weights = torch.ones_like(losses)
            sample_losses = losses
        else:
            sample_losses, weights = self.training_loss(logits, labels, losses, inputs, track_meta=False)
        # After a DDP forward DDP averages the gradients during the backward; after a meta update's forward
        # (through PartRange, unseen by DDP) our own buckets do. The running statistics are averaged either way,
        # so every replica evaluates the same.
        overlapped = meta_update or self.data_parallel is None
        if overlapped:
            self.gradient_mean.start()
        sample_losses.mean().backward()
        if overlapped:
            self.gradient_mean.finish()
        all_reduce_mean_(self.running_statistics)
        self.classifier_optimizer.step()
        return IterationResult(losses=losses.detach(), logits=logits.detach(), weights=weights, meta_loss=meta_loss,
                               meta_gradient_norm=meta_gradient_norm)

    def _update_weighting_net(
        self,
        logits: torch.Tensor,
        losses: torch.Tensor,
        labels: torch.Tensor,
        inputs: torch.Tensor | None,
        meta_images: torch.Tensor,
        meta_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The meta step and the weighting net's optimizer step; returns the meta loss and meta-gradient norm."""
        top_parameters = self.virtual_parameters
        # Virtual step (paper eq. 11) on the top parameters only (SLMO).
        sample_losses, _ = self.training_loss(logits, labels, losses, inputs, track_meta=True)
        virtual_grads = torch.autograd.grad(
            sample_losses.mean(), list(top_parameters.values()), create_graph=True, retain_graph=True
        )
        if self.sync == "exact":
            # Equal batch sizes per rank: the mean of rank means is the union batch's mean gradient.
            virtual_grads = differentiable_all_reduce_mean(list(virtual_grads))
        if self.virtual_rule == "optimizer":
            updated = virtual_optimizer_step(
                self.classifier_optimizer, top_parameters, dict(zip(top_parameters, virtual_grads))
            )
        else:
            lr = self.classifier_optimizer.param_groups[0]["lr"]
            values = virtual_sgd_step(list(top_parameters.values()), list(virtual_grads),
                                      [None] * len(virtual_grads), lr)
            updated = dict(zip(top_parameters, values))

        # Meta step. Cloned buffers take the in-place running-statistics update of these throwaway passes.
        with torch.no_grad():
            meta_features = functional_call(self.bottom, _cloned(self.split.bottom_buffers), (meta_images,))
        meta_logits = functional_call(self.top, {**updated, **_cloned(self.split.top_buffers)}, (meta_features,))
        meta_loss = F.cross_entropy(meta_logits, meta_labels)
        weighting_parameters = [param for param in self.weighting_net.parameters() if param.requires_grad]
        weighting_grads = list(torch.autograd.grad(meta_loss, weighting_parameters))
        # Averaged in both sync modes so the weighting net stays identical on every rank.
        meta_loss_value = meta_loss.detach().reshape(1).clone()
        all_reduce_mean_(weighting_grads + [meta_loss_value])
        for param, grad in zip(weighting_parameters, weighting_grads):
            param.grad = grad
        self.weighting_optimizer.step()
        return meta_loss_value[0], torch.linalg.vector_norm(torch.stack([grad.norm() for grad in weighting_grads]))
