"""SIGTERM (pre-emption, `scancel --signal=TERM`, torchrun shutting down) becomes a request to stop cleanly."""
from __future__ import annotations

import signal

import torch

from curvenet_dist.engine.distributed import any_rank

PREEMPTED_EXIT_CODE = 143
"""128 + SIGTERM: the stage saved its position and stopped; the same command resumes it."""


class Preempted(Exception):
    """Raised after every rank has saved; the launcher exits with PREEMPTED_EXIT_CODE."""


class StopSignal:
    """Catches SIGTERM; `agreed()` tells every rank at once whether any rank was signalled.

    The stages ask at every batch boundary: torchrun SIGKILLs its workers 30 s after forwarding SIGTERM, which a
    check every few steps can miss on slow steps or short epochs. One all_reduce of one element per step costs
    little beside a training step (docs/BENCHMARKS.md, "Cost of the per-batch stop check")."""

    def __init__(self, device: torch.device):
        self.requested = False
        self.device = device
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self) -> bool:
        return any_rank(self.requested, self.device)
