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
    """Catches SIGTERM; `agreed()` tells every rank at once whether any rank was signalled."""

    def __init__(self, device: torch.device, check_every: int = 20):
        self.requested = False
        self.device, self.check_every = device, check_every
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, step: int, force: bool = False) -> bool:
        # A collective every step would stall the GPU on .item(); every few steps is soon enough for a
        # pre-emption warning measured in minutes.
        if not force and step % self.check_every:
            return False
        return any_rank(self.requested, self.device)
