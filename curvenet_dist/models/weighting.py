"""Weighting networks G of the allocate stage: CurveNet (loss curve + label) and the Meta-Weight-Net baseline.

Both share one call, `forward(curves [B, D], labels [B], losses [B]) -> weights [B]` (positive), so the trainer
treats them alike; each ignores the inputs it does not use.
"""
from __future__ import annotations

import torch
from torch import nn

# The reference code's floor on every weight (CurveNet's output is sigmoid(.) + 0.02): no sample is ever ignored.
WEIGHT_FLOOR = 0.02


def _relu_mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for in_features, out_features in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(in_features, out_features), nn.ReLU()]
    return nn.Sequential(*layers)


class CurveNet(nn.Module):
    """DESIGN.md §4: a curve branch and a label embedding, summed, then an MLP to one sigmoid weight."""

    def __init__(
        self,
        curve_length: int,
        num_classes: int,
        embedding_dim: int = 64,
        curve_hidden: tuple[int, ...] = (128, 128),
        head_hidden: tuple[int, ...] = (128, 64),
        prior_direction: torch.Tensor | None = None,
    ):
        """`prior_direction` [curve_length]: the net's output corrects the probe's own judgment of the label, each
        weight starting at sigmoid(-curve . prior_direction) + 0.02 (curvenet.prior_slope times
        curves/features.suspicion_direction); None: no prior, every weight starts at 0.52."""
        super().__init__()
        self.curve_length = curve_length
        # Not in the state dict: it is fixed by the probe's store, which the method reads again on resume.
        self.register_buffer("prior_direction", torch.zeros(curve_length) if prior_direction is None
                             else prior_direction.float(), persistent=False)
        self.curve_branch = _relu_mlp([curve_length, *curve_hidden, embedding_dim])
        self.label_embedding = nn.Embedding(num_classes, embedding_dim)
        self.head = nn.Sequential(_relu_mlp([embedding_dim, *head_hidden]), nn.Linear(head_hidden[-1], 1))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.label_embedding.weight)
        # The head starts at zero output, so every weight starts at the prior's (0.52 without one), where the
        # sigmoid is steep. The reference code starts at sigmoid(4.5) = 0.99, where a weight moves 23x less per
        # step: within a small dataset's meta budget the weights then never separate (docs/DESIGN.md, departures).
        # With a zero last layer, the first Adam step moves the output layer and the hidden layers follow from the
        # second.
        nn.init.zeros_(self.head[-1].weight)

    def forward(self, curves: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        if curves is None or curves.dim() != 2 or curves.shape[1] != self.curve_length:
            shape = None if curves is None else tuple(curves.shape)
            raise ValueError(
                f"CurveNet was built for curves of length {self.curve_length} (probe.epochs - curvenet.skip_epochs, "
                f"twice that where the probe recorded margins) but got curves of shape {shape}"
            )
        # The reference code adds the label embedding twice: the same as one embedding learning at twice the rate.
        features = self.curve_branch(curves) + 2 * self.label_embedding(labels)
        return torch.sigmoid(self.head(features).squeeze(1) - curves @ self.prior_direction) + WEIGHT_FLOOR


class MetaWeightNet(nn.Module):
    """Shu et al. (2019): a 1-hidden-layer MLP from a sample's current loss value to its weight."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(
        self, curves: torch.Tensor | None, labels: torch.Tensor | None, losses: torch.Tensor
    ) -> torch.Tensor:
        # As in MW-Net's reference code (vnet(cost.data)), the loss enters as a value: no gradient flows from the
        # weight back into the classifier through the loss, only into the weighting net through the meta loss.
        return torch.sigmoid(self.net(losses.detach().unsqueeze(1))).squeeze(1)
