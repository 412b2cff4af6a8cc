"""A weighting net's weight for every training sample, computed in fixed-size chunks: at a million samples one
batch would hold every hidden activation at once (over a GB for CurveNet); chunks keep memory flat in N."""
from __future__ import annotations

import torch

CHUNK = 16384
"""Rows per chunk: CurveNet's activations then fit a CPU cache (at a million samples on one CPU thread, 16384-row
chunks took 1.7 s, 65536-row chunks 4.6 s and one batch 10.2 s); on a GPU it is still a handful of launches."""


@torch.no_grad()
def weights_by_chunks(weighting_net: torch.nn.Module, labels: torch.Tensor, curves: torch.Tensor | None = None,
                      losses: torch.Tensor | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """weighting_net(curves, labels, losses) for all rows, `chunk` rows at a time; [N] on the inputs' device."""
    return torch.cat([
        weighting_net(None if curves is None else curves[start:start + chunk], labels[start:start + chunk],
                      None if losses is None else losses[start:start + chunk])
        for start in range(0, len(labels), chunk)
    ])
