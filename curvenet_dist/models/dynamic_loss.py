"""Dynamic Loss (Jiang et al.): a label corrector and a margin generator, meta-learned like CurveNet (DESIGN.md §6).

The corrector maps a sample's loss-rank bucket within its given class, taken as the bucket's place in (0, 1), and
that class to a trust weight w in (0, 1): what a meta step learns of one rank serves its neighbouring ranks, so a
few hundred meta steps shape it (DESIGN.md §9). A sample whose y_pred (a sample of the classifier's own
prediction) is its given label trains on it in full; one whose y_pred is another class keeps the share w of its
loss, and the rest is dropped rather than moved to y_pred (DESIGN.md §9). The generator gives per-class additive
logit margins m, used in training only, which start at the log of the class prior. The training loss is
kept * CE(z + m, given).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# The reference's initial corrector bias: every trust weight starts near sigmoid(3.98) = 0.98 (trust the labels).
INITIAL_TRUST_LOGIT = 3.98


def _mlp(hidden: int, outputs: int, bias: float | torch.Tensor) -> nn.Sequential:
    """`bias`: the output layer's initial bias, one value for every output or one per output."""
    net = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, outputs))
    for layer in net[::2]:
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
    with torch.no_grad():
        net[-1].bias.copy_(torch.as_tensor(bias))
    return net


class DynamicLoss(nn.Module):
    """`log_prior` [C], the log of each class's share of the training labels, is the generator's initial bias (the
    reference's: 1 for every class): the classifier trains under logit adjustment's margins from the first meta
    step, so the corrector's meta-gradient is not spent on the class prior (DESIGN.md §9)."""

    def __init__(self, log_prior: torch.Tensor, buckets: int = 100, hidden: int = 64):
        super().__init__()
        self.num_classes, self.buckets = len(log_prior), buckets
        self.rank_input = nn.Linear(1, hidden)
        self.corrector = _mlp(hidden, self.num_classes, INITIAL_TRUST_LOGIT)
        self.class_feature = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, hidden)))
        self.generator = _mlp(hidden, self.num_classes, log_prior)

    def trust(self, buckets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """w [B] in (0, 1): the corrector's output for each sample's rank bucket, the given class's column."""
        ranks = (buckets.to(self.rank_input.weight.dtype) + 0.5) / self.buckets
        logits = self.corrector(torch.relu(self.rank_input(ranks.unsqueeze(1))))
        return torch.sigmoid(logits.gather(1, labels.unsqueeze(1))).squeeze(1)

    def margins(self) -> torch.Tensor:
        """m [C]: the additive logit margin of each class."""
        return self.generator(self.class_feature).squeeze(0)


class DynamicLossTraining:
    """The Dynamic Loss training loss for MetaIteration. A sample's inputs are its (rank bucket, y_pred) pair
    ([B, 2] long), both fixed for the epoch; the weight reported per sample is its trust weight w, the share of its
    loss it keeps where y_pred is not its given label."""

    def __init__(self, net: DynamicLoss):
        self.net = net

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor, inputs: torch.Tensor,
                 track_meta: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(track_meta and torch.is_grad_enabled()):
            trust = self.net.trust(inputs[:, 0], labels)
            margins = self.net.margins()
        agrees = (inputs[:, 1] == labels).to(trust.dtype)
        kept = trust + (1 - trust) * agrees
        log_probabilities = F.log_softmax(logits + margins, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        return -kept * log_probabilities, trust.detach()


def warmup_corrector_loss(net: DynamicLoss, buckets: torch.Tensor, labels: torch.Tensor,
                          given_probability: torch.Tensor) -> torch.Tensor:
    """The reference's warm-up objective for the corrector: the corrected target (with the softmax prediction,
    whose given-class entry is `given_probability`) should reproduce the given label, -log(w + (1 - w) p_y)."""
    trust = net.trust(buckets, labels)
    return -torch.log(trust + (1 - trust) * given_probability + 1e-8).mean()
