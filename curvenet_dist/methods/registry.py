"""Every allocate method by its config name (`method=`)."""
from __future__ import annotations

from curvenet_dist.methods.balanced_ce import BalancedCrossEntropy
from curvenet_dist.methods.base import AllocateSetup, Method
from curvenet_dist.methods.ce import CrossEntropy
from curvenet_dist.methods.curvenet import CurveNetMethod
from curvenet_dist.methods.dynamic_loss import DynamicLossMethod
from curvenet_dist.methods.logit_adjust import LogitAdjustment
from curvenet_dist.methods.mwnet import MetaWeightNetMethod

METHODS: dict[str, type[Method]] = {
    "ce": CrossEntropy,
    "balanced_ce": BalancedCrossEntropy,
    "logit_adjust": LogitAdjustment,
    "mwnet": MetaWeightNetMethod,
    "curvenet": CurveNetMethod,
    "dynamic_loss": DynamicLossMethod,
}


def build_method(setup: AllocateSetup) -> Method:
    """The method config.method names, built from `setup` (config validation has checked the name)."""
    return METHODS[setup.config.method](setup)
