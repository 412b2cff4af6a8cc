"""What every meta-learned method shares: a weighting net and its optimizer, a clean meta set streamed in meta
batches, meta updates every `meta_interval` batches until the classifier's first LR decay, and the SLMO depth
(DESIGN.md §5)."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from curvenet_dist.config import ConfigError, MetaLearningConfig
from curvenet_dist.data.loader import build_loader
from curvenet_dist.engine.components import check_images_exist
from curvenet_dist.engine.distributed import broadcast_model
from curvenet_dist.engine.evaluate import constant_weights_warning
from curvenet_dist.meta.meta_batches import MetaBatches
from curvenet_dist.meta.meta_set import select_meta_set
from curvenet_dist.meta.weighting_optimizer import weighting_optimizer
from curvenet_dist.methods.base import AllocateSetup, Method
from curvenet_dist.tracking.report import weight_spread


class MetaLearnedMethod(Method):
    ranks_samples = True
    name = ""
    """The method's config section, which names its keys in errors."""

    def __init__(self, setup: AllocateSetup, settings: MetaLearningConfig):
        super().__init__(setup)
        self.settings = settings
        if not 0 <= settings.skip_layers <= setup.model.num_stages:
            raise ConfigError(f"{self.name}.skip_layers={settings.skip_layers} is outside [0, "
                              f"{setup.model.num_stages}] for this backbone ({setup.model.num_stages} stages)")
        self.skip_layers = settings.skip_layers
        self.meta_table = None
        self.meta_batches: MetaBatches | None = None
        self.meta_learning = False
        # The last meta epoch's mean meta-gradient norm, for the end-of-run line on weights that never moved.
        self.last_meta_gradient_norm: float | None = None

    def _select_meta_table(self):
        """The clean meta set meta.source names."""
        table = select_meta_set(self.setup.config.meta, self.setup.splits, self.setup.store)
        check_images_exist(table, "meta", self.setup.context)
        return table

    def _adopt(self, net: torch.nn.Module) -> None:
        """Take `net` (built under the run's seed) as the weighting net, identical on every rank, with its optimizer."""
        self.weighting_net = net.to(self.setup.device)
        broadcast_model(self.weighting_net)
        self.weighting_optimizer = weighting_optimizer(self.weighting_net.parameters(), self.settings.meta_lr,
                                                       self.settings.meta_weight_decay)

    def meta_loader(self, table):
        config = self.setup.config
        meta_data = dataclasses.replace(config.data, batch_size=config.meta.batch_size)
        return build_loader(meta_data, table, train=True, **self.setup.loader_arguments)

    def frozen(self, epoch: int) -> bool:
        """The weighting net is frozen after the classifier's first LR decay (CurveNet paper, Training Method)."""
        milestones = self.setup.config.allocate.milestones
        return bool(milestones) and epoch >= milestones[0]

    def meta_epochs(self) -> int:
        """How many epochs meta-learn before the freeze."""
        return sum(not self.frozen(epoch) for epoch in range(self.setup.config.allocate.epochs))

    def meta_update_count(self) -> int:
        """How many meta updates the weighting net gets before its freeze."""
        return -(-len(self.setup.train_loader) // self.settings.meta_interval) * self.meta_epochs()

    def _freeze_if_due(self, epoch: int) -> bool:
        frozen = self.frozen(epoch)
        if frozen:
            self.weighting_net.requires_grad_(False)
        return frozen

    def meta_batch(self, batch: int):
        if not self.meta_learning or batch % self.settings.meta_interval:
            return None
        return tuple(t.to(self.setup.device, non_blocking=True) for t in self.meta_batches.next())

    def end_epoch(self, train_metrics: dict[str, float]) -> None:
        if "meta_gradient_norm" in train_metrics:
            self.last_meta_gradient_norm = train_metrics["meta_gradient_norm"]

    def describe(self) -> str:
        config = self.setup.config
        size = f"{len(self.meta_table)} " if self.meta_table is not None else ""
        return (f"meta set {size}({config.meta.source}), {self.name}.skip_layers {self.skip_layers}, a meta update "
                f"every {self.settings.meta_interval} batch(es){self.update_budget()}, meta.sync {config.meta.sync}, ")

    def update_budget(self) -> str:
        # How many meta updates the weighting net gets: a small dataset gets few (DESIGN §9, the initial output).
        return f" ({self.meta_update_count()} before the freeze)"

    def tags(self) -> dict[str, str]:
        return {"meta_source": self.setup.config.meta.source, "skip_layers": str(self.skip_layers)}

    def fingerprint(self) -> tuple:
        return vars(self.settings), vars(self.setup.config.meta)

    def summary(self, weights: np.ndarray) -> dict:
        return {"weight_spread": weight_spread(weights, self.setup.splits.train.labels)}

    def warnings(self, summary: dict) -> list[str]:
        warning = constant_weights_warning(summary["weight_spread"], self.meta_update_count(),
                                           self.last_meta_gradient_norm)
        return [warning] if warning else []

    def state_dict(self) -> dict:
        return {"meta_batches": (self.meta_batches.state_dict() if self.meta_batches is not None
                                 else {"epoch": 0, "batch": 0}),
                "weighting_net": self.weighting_net.state_dict(),
                "weighting_optimizer": self.weighting_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.weighting_net.load_state_dict(state["weighting_net"])
        self.weighting_optimizer.load_state_dict(state["weighting_optimizer"])
        if self.meta_batches is not None:
            self.meta_batches.load_state_dict(state["meta_batches"])
