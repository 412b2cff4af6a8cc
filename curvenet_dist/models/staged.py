"""The shape every backbone takes: a stem, stages, and a head, run in order.

SLMO splits a backbone between parts: `skip_layers=k` keeps the stem and the first k stages
out of the virtual step (k=0 skips nothing), so the bottom is `parts[:k + 1]` for k > 0.
"""
from __future__ import annotations

import torch
from torch import nn


class StagedNet(nn.Module):
    """A classifier as an ordered list of parts: parts[0] is the stem, parts[-1] the head (pool + fc)."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], head: nn.Module):
        super().__init__()
        self.parts = nn.ModuleList([stem, *stages, head])

    @property
    def num_stages(self) -> int:
        return len(self.parts) - 2

    def bottom_part_count(self, skip_layers: int) -> int:
        """How many leading parts SLMO keeps out of the virtual step for `skip_layers`."""
        if not 0 <= skip_layers <= self.num_stages:
            raise ValueError(f"skip_layers={skip_layers} is outside [0, {self.num_stages}] for this backbone")
        return 0 if skip_layers == 0 else skip_layers + 1

    def forward_parts(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        for part in self.parts[start:end]:
            x = part(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(x)


class ClassifierHead(nn.Module):
    """Global average pooling, then a linear layer."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
