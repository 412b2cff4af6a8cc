"""How CurveNet meets the long tail (`curvenet.rebalance`, DESIGN.md §5). Under the `class` weight scale CurveNet
only shares each class's total weight out among the class's samples; the rebalancing is one of:
- `ClassTotals` (the default): each class's total is class-balanced CE's for the share of its labels the probe
  finds right and CE's for the share it finds wrong, on plain logits;
- `LogitAdjusted`: every class keeps CE's total, and the classifier trains on its logits plus the log of the
  given-label prior (Menon et al. 2021): no class's wrong labels are weighed up."""
from __future__ import annotations

import numpy as np
import torch

from curvenet_dist.curves.store import CurveStore
from curvenet_dist.curves.wrong_labels import probe_wrong_label_fraction
from curvenet_dist.meta.weight_scale import balanced_class_factors, noise_aware_class_factors
from curvenet_dist.methods.logit_adjust import log_prior_adjustment


class LogitAdjusted:
    def __init__(self, store: CurveStore, class_counts: np.ndarray):
        self.class_counts = class_counts

    def class_factors(self) -> torch.Tensor:
        return torch.ones(len(self.class_counts), dtype=torch.float64)

    def logit_adjustment(self) -> torch.Tensor:
        return log_prior_adjustment(self.class_counts, tau=1.0)

    def describe(self) -> str:
        return "logits adjusted by the class prior, "

    def summary(self) -> dict:
        return {}


class ClassTotals:
    def __init__(self, store: CurveStore, class_counts: np.ndarray):
        self.class_counts = class_counts
        self.wrong_fraction = probe_wrong_label_fraction(store, len(class_counts))

    def class_factors(self) -> torch.Tensor:
        if self.wrong_fraction is None:
            return balanced_class_factors(self.class_counts)
        return noise_aware_class_factors(self.class_counts, self.wrong_fraction)

    def logit_adjustment(self) -> None:
        return None

    def describe(self) -> str:
        if self.wrong_fraction is None:
            return "class-balanced totals (the probe's store holds no margins to estimate from), "
        overall = float(self.wrong_fraction @ self.class_counts / self.class_counts.sum())
        return (f"class totals for {100 * overall:.0f}% estimated wrong labels (per class "
                f"{100 * self.wrong_fraction.min():.0f}-{100 * self.wrong_fraction.max():.0f}%), ")

    def summary(self) -> dict:
        return {} if self.wrong_fraction is None else {"estimated_wrong_fraction": self.wrong_fraction.tolist()}


REBALANCES = {"class_totals": ClassTotals, "logit_adjust": LogitAdjusted}
