"""CurveNet and the Meta-Weight-Net baseline: shapes, ranges, initial weights, and what each weight depends on."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from curvenet_dist.models.weighting import CurveNet, MetaWeightNet


def test_curvenet_has_the_design_layout():
    net = CurveNet(curve_length=25, num_classes=10)
    linear_shapes = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, nn.Linear)]
    # (out, in): curve branch 25-128-128-64, then head 64-128-64-1.
    assert linear_shapes == [(128, 25), (128, 128), (64, 128), (128, 64), (64, 128), (1, 64)]
    assert tuple(net.label_embedding.weight.shape) == (10, 64)


def test_curvenet_weights_start_equal_at_the_steepest_point_and_stay_above_the_floor():
    torch.manual_seed(0)
    net = CurveNet(curve_length=25, num_classes=10)
    weights = net(torch.randn(64, 25), torch.randint(0, 10, (64,)), torch.rand(64))
    assert weights.shape == (64,)
    # Every sample starts at sigmoid(0) + 0.02: plain CE after scaling, and where a weight moves fastest.
    torch.testing.assert_close(weights, torch.full((64,), 0.52))
    nn.init.normal_(net.head[-1].weight, std=100.0)
    weights = net(torch.randn(64, 25), torch.randint(0, 10, (64,)), torch.rand(64))
    assert bool(((weights >= 0.02) & (weights <= 1.02)).all())


def test_with_a_prior_a_sample_starts_at_the_weight_its_mean_margin_gives_it():
    # Curves of two loss then two margin columns; the prior reads minus the mean margin, with slope 2.
    direction = 2 * torch.tensor([0.0, 0.0, -0.5, -0.5])
    net = CurveNet(curve_length=4, num_classes=3, prior_direction=direction)
    margins = torch.tensor([-1.0, 0.0, 1.0])
    curves = torch.cat([torch.randn(3, 2), margins[:, None].repeat(1, 2)], 1)
    weights = net(curves, torch.tensor([0, 1, 2]), None)
    torch.testing.assert_close(weights, torch.sigmoid(2 * margins) + 0.02)
    # The head's zero start leaves the prior alone, so the weights are spread before any meta step.
    assert weights[0] < 0.2 < weights[1] < 0.6 < weights[2]


def test_curvenet_weight_depends_on_curve_and_label_not_on_loss():
    torch.manual_seed(0)
    net = CurveNet(curve_length=6, num_classes=3, embedding_dim=8, curve_hidden=(8,), head_hidden=(8,))
    nn.init.normal_(net.head[-1].weight)  # as after some meta steps; the initial net weighs every sample alike
    curves = torch.randn(1, 6).repeat(3, 1)
    by_label = net(curves, torch.tensor([0, 1, 2]), torch.zeros(3))
    assert len(set(by_label.tolist())) == 3
    labels = torch.zeros(2, dtype=torch.long)
    by_curve = net(torch.randn(2, 6), labels, torch.zeros(2))
    assert by_curve[0] != by_curve[1]
    same_curve = torch.randn(1, 6).repeat(2, 1)
    by_loss = net(same_curve, labels, torch.tensor([0.1, 5.0]))
    assert by_loss[0] == by_loss[1]


def test_every_curvenet_parameter_learns_from_the_second_step():
    torch.manual_seed(0)
    net = CurveNet(curve_length=6, num_classes=3)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    curves, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    for _ in range(2):
        optimizer.zero_grad()
        (net(curves, labels, None) * torch.arange(5.0)).sum().backward()
        optimizer.step()
    assert all(param.grad is not None and param.grad.abs().sum() > 0 for param in net.parameters())


def test_curvenet_rejects_curves_of_the_wrong_length():
    net = CurveNet(curve_length=25, num_classes=10)
    with pytest.raises(ValueError, match="curves of length 25.*shape \\(4, 30\\)"):
        net(torch.randn(4, 30), torch.zeros(4, dtype=torch.long), torch.zeros(4))


def test_meta_weight_net_maps_the_loss_value_to_a_weight():
    torch.manual_seed(0)
    net = MetaWeightNet(hidden=100)
    losses = torch.tensor([0.01, 0.5, 2.0, 8.0], requires_grad=True)
    weights = net(None, None, losses)
    assert weights.shape == (4,) and bool(((weights > 0) & (weights < 1)).all())
    assert len(set(weights.tolist())) == 4
    weights.sum().backward()
    # The loss enters as a value: no gradient reaches it, all of it reaches the net.
    assert losses.grad is None
    assert all(param.grad is not None for param in net.parameters())
