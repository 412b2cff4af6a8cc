"""Checkpoints: written atomically (temporary file, then rename), the newest k kept, refused if from another run."""
from __future__ import annotations

import os
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that belongs to another dataset or config."""


class Checkpointer:
    def __init__(self, folder: Path, fingerprint: str, keep: int):
        self.folder, self.fingerprint, self.keep = Path(folder), fingerprint, keep

    def _paths(self) -> list[Path]:
        return sorted(self.folder.glob("step-*.pt"))

    def save(self, state: dict, epoch: int, batch: int = 0) -> Path:
        """Save `state` as the position (epoch, batch): the next work to do. Keeps the newest `keep`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step-{epoch:05d}-{batch:08d}.pt"
        temporary = path.with_suffix(".tmp")
        torch.save({"fingerprint": self.fingerprint, "epoch": epoch, "batch": batch, **state}, temporary)
        os.replace(temporary, path)
        for old in self._paths()[: -self.keep]:
            old.unlink()
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict | None:
        paths = self._paths()
        if not paths:
            return None
        state = torch.load(paths[-1], map_location=map_location, weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{paths[-1]} belongs to another dataset or config (fingerprint {state.get('fingerprint')}, this "
                f"run {self.fingerprint}); choose another run.dir or move the old run away"
            )
        return state
