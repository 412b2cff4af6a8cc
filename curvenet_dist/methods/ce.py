"""Plain cross-entropy on the given labels: the trivial baseline."""
from __future__ import annotations

from curvenet_dist.methods.base import Method


class CrossEntropy(Method):
    """Every weight 1, no meta set: the base interface's behaviour as it is."""
