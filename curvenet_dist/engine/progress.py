"""Rank 0's progress lines: samples/s, loss, LR and ETA within and across epochs; other ranks stay quiet."""
from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, enabled: bool, stage: str, total_epochs: int, interval_s: float = 30.0):
        self.enabled, self.stage, self.total_epochs, self.interval_s = enabled, stage, total_epochs, interval_s
        self.run_start = time.monotonic()
        self.epochs_done_this_run = 0

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"[{self.stage}] {message}", file=sys.stdout, flush=True)

    def start_epoch(self, epoch: int, batches: int) -> None:
        self.epoch, self.batches = epoch, batches
        self.epoch_start = self.last_print = time.monotonic()

    def step(self, batch: int, samples_seen: int) -> None:
        """A line every interval_s within long epochs. No loss here: reading it would sync the GPU every step."""
        now = time.monotonic()
        if self.enabled and now - self.last_print >= self.interval_s:
            self.last_print = now
            rate = samples_seen / max(now - self.epoch_start, 1e-9)
            self.say(f"epoch {self.epoch + 1}/{self.total_epochs} batch {batch + 1}/{self.batches} {rate:.0f} samples/s")

    def end_epoch(self, epoch: int, samples: int, metrics: dict) -> None:
        now = time.monotonic()
        self.epochs_done_this_run += 1
        epoch_s = now - self.epoch_start
        per_epoch = (now - self.run_start) / self.epochs_done_this_run
        eta = per_epoch * (self.total_epochs - epoch - 1)
        details = " ".join(f"{key} {value:.4g}" for key, value in metrics.items())
        self.say(f"epoch {epoch + 1}/{self.total_epochs} {details} {samples / max(epoch_s, 1e-9):.0f} samples/s "
                 f"({epoch_s:.1f}s) ETA {_duration(eta)}")
