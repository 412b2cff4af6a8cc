"""An endless stream of meta batches from a meta loader, whose position is part of a checkpoint."""
from __future__ import annotations

import numpy as np
import torch


class MetaBatches:
    """The meta loader (limited to the sample ids `rows`, if given), reshuffled each time it runs out. Its position
    (epoch, batch) is checkpointed, so a resumed run draws the same meta batches as an uninterrupted one."""

    def __init__(self, loader, rows: np.ndarray | None = None):
        self.loader, self.rows, self.epoch, self.batch, self.iterator = loader, rows, 0, 0, None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self.iterator is None:
                self.loader.set_epoch(self.epoch, self.batch, self.rows)
                self.iterator = iter(self.loader)
            try:
                images, labels, _ = next(self.iterator)
                self.batch += 1
                return images, labels
            except StopIteration:
                self.iterator, self.epoch, self.batch = None, self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self.iterator = state["epoch"], state["batch"], None
