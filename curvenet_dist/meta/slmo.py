"""Skip-layer meta optimisation (SLMO, paper eq. 10): split a StagedNet into the bottom parts, which the virtual
step leaves unchanged, and the top parts, which it updates.

Names stay the StagedNet's own (`parts.{i}.…`), so one name -> tensor dict serves the whole model and both halves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from curvenet_dist.models.staged import StagedNet


def part_index(name: str) -> int:
    """`parts.3.0.conv1.weight` -> 3."""
    prefix, index, *_ = name.split(".")
    if prefix != "parts" or not index.isdigit():
        raise ValueError(f"{name!r} is not a StagedNet parameter or buffer name (expected 'parts.<i>.…')")
    return int(index)


@dataclass
class LayerSplit:
    bottom_part_count: int
    """The first `bottom_part_count` parts are the bottom (0: nothing skipped)."""
    bottom_parameters: dict[str, nn.Parameter]
    top_parameters: dict[str, nn.Parameter]
    bottom_buffers: dict[str, torch.Tensor]
    top_buffers: dict[str, torch.Tensor]


def split_layers(model: StagedNet, skip_layers: int) -> LayerSplit:
    count = model.bottom_part_count(skip_layers)

    def halves(named: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        bottom = {name: tensor for name, tensor in named.items() if part_index(name) < count}
        top = {name: tensor for name, tensor in named.items() if part_index(name) >= count}
        return bottom, top

    bottom_parameters, top_parameters = halves(dict(model.named_parameters()))
    bottom_buffers, top_buffers = halves(dict(model.named_buffers()))
    return LayerSplit(count, bottom_parameters, top_parameters, bottom_buffers, top_buffers)


class PartRange(nn.Module):
    """`model.parts[start:end]` run in order, sharing the model's modules and keeping its parameter names, so that
    `torch.func.functional_call` on it takes the same `parts.{i}.…` keys as the whole model."""

    def __init__(self, model: StagedNet, start: int, end: int | None = None):
        super().__init__()
        self.parts = model.parts
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts[self.start : self.end]:
            x = part(x)
        return x
