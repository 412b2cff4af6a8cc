"""The allocate stage's meta-learning core: virtual SGD step, SLMO split, and the fast meta iteration checked
against a plain reference MW-Net step, BatchNorm statistics, and the exact distributed meta-gradient."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from curvenet_dist.config import ConfigError
from curvenet_dist.meta.distributed import all_reduce_mean_, differentiable_all_reduce_mean
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.meta.slmo import PartRange, split_layers
from curvenet_dist.meta.virtual_step import virtual_sgd_step
from curvenet_dist.meta.weight_scale import WeightScale
from curvenet_dist.models.cifar_resnet import cifar_resnet
from curvenet_dist.models.weighting import CurveNet, MetaWeightNet

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4
CURVE_LENGTH = 5


def make_batch(seed: int, batch_size: int = 8, meta_batch_size: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(batch_size, 3, 8, 8, generator=generator, dtype=torch.float64),
        "labels": torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator),
        "curves": torch.randn(batch_size, CURVE_LENGTH, generator=generator, dtype=torch.float64),
        "meta_images": torch.randn(meta_batch_size, 3, 8, 8, generator=generator, dtype=torch.float64),
        "meta_labels": torch.randint(0, NUM_CLASSES, (meta_batch_size,), generator=generator),
        "reference_curves": torch.randn(20, CURVE_LENGTH, generator=generator, dtype=torch.float64),
        "reference_labels": torch.randint(0, NUM_CLASSES, (20,), generator=generator),
    }


def make_run(weighting: str = "curvenet", nesterov: bool = False):
    torch.manual_seed(0)
    model = cifar_resnet(8, NUM_CLASSES).double()
    if weighting == "curvenet":
        weighting_net = CurveNet(CURVE_LENGTH, NUM_CLASSES, embedding_dim=16, curve_hidden=(16,), head_hidden=(16,))
    else:
        weighting_net = MetaWeightNet(hidden=16)
    weighting_net.double()
    classifier_optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov
    )
    weighting_optimizer = torch.optim.Adam(weighting_net.parameters(), lr=1e-3, weight_decay=1e-4)
    return model, weighting_net, classifier_optimizer, weighting_optimizer


def reference_step(model, weighting_net, classifier_optimizer, weighting_optimizer, skip_layers, batch,
                   scale: str = "none", virtual_rule: str = "optimizer") -> None:
    """A straightforward MW-Net iteration: a full functional forward for the virtual step with only the top
    parameters updated, a full meta forward, then a fresh forward for the actual step. `scale` divides the weights
    by their batch mean, or by the mean weight of the reference curves, in both steps."""

    def weigh(weights):
        if scale == "batch":
            return weights / weights.mean()
        if scale == "dataset":
            return weights / weighting_net(batch["reference_curves"], batch["reference_labels"], None).mean()
        return weights

    count = model.bottom_part_count(skip_layers)
    parameters = dict(model.named_parameters())
    top_names = [name for name in parameters if int(name.split(".")[1]) >= count]

    def throwaway_buffers() -> dict[str, torch.Tensor]:
        return {name: buffer.clone() for name, buffer in model.named_buffers()}

    logits = functional_call(model, {**parameters, **throwaway_buffers()}, (batch["images"],))
    losses = F.cross_entropy(logits, batch["labels"], reduction="none")
    weights = weigh(weighting_net(batch["curves"], batch["labels"], losses.detach()))
    top = [parameters[name] for name in top_names]
    grads = torch.autograd.grad((weights * losses).mean(), top, create_graph=True)
    group = classifier_optimizer.param_groups[0]
    if virtual_rule == "sgd":
        w_hat = [param - group["lr"] * grad for param, grad in zip(top, grads)]
    else:
        w_hat = virtual_sgd_step(
            top,
            list(grads),
            [classifier_optimizer.state.get(param, {}).get("momentum_buffer") for param in top],
            lr=group["lr"],
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
        )
    meta_state = {**parameters, **dict(zip(top_names, w_hat)), **throwaway_buffers()}
    meta_loss = F.cross_entropy(functional_call(model, meta_state, (batch["meta_images"],)), batch["meta_labels"])
    weighting_parameters = list(weighting_net.parameters())
    for param, grad in zip(weighting_parameters, torch.autograd.grad(meta_loss, weighting_parameters)):
        param.grad = grad
    weighting_optimizer.step()

    classifier_optimizer.zero_grad()
    losses = F.cross_entropy(model(batch["images"]), batch["labels"], reduction="none")
    with torch.no_grad():
        weights = weigh(weighting_net(batch["curves"], batch["labels"], losses))
    (weights * losses).mean().backward()
    classifier_optimizer.step()


def step_with(iteration: MetaIteration, batch: dict[str, torch.Tensor], update_weighting: bool = True):
    meta_batch = (batch["meta_images"], batch["meta_labels"]) if update_weighting else None
    return iteration.step(batch["images"], batch["labels"], batch["curves"], meta_batch)


def assert_same_tensors(actual, expected, **tolerance) -> None:
    for a, e in zip(list(actual), list(expected), strict=True):
        torch.testing.assert_close(a, e, **tolerance)


# --- virtual step -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        dict(momentum=0.0, weight_decay=0.0),
        dict(momentum=0.9, weight_decay=5e-4),
        dict(momentum=0.9, weight_decay=5e-4, nesterov=True),
        dict(momentum=0.9, weight_decay=1e-3, dampening=0.1),
    ],
)
@pytest.mark.parametrize("existing_momentum", [False, True])
def test_virtual_sgd_step_matches_torch_sgd(settings, existing_momentum):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64)), torch.nn.Parameter(torch.randn(5, dtype=torch.float64))]
    optimizer = torch.optim.SGD(params, lr=0.05, **settings)
    if existing_momentum:
        for param in params:
            param.grad = torch.randn_like(param)
        optimizer.step()
    grads = [torch.randn_like(param) for param in params]
    buffers = [optimizer.state.get(param, {}).get("momentum_buffer") for param in params]
    saved_buffers = [None if buffer is None else buffer.clone() for buffer in buffers]

    virtual = virtual_sgd_step(params, grads, buffers, lr=0.05, **settings)

    for param, saved in zip(params, saved_buffers):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        assert (buffer is None and saved is None) or torch.equal(buffer, saved), "momentum buffer was modified"
    for param, grad in zip(params, grads):
        param.grad = grad
    optimizer.step()
    assert_same_tensors(virtual, [param.detach() for param in params], rtol=0, atol=1e-12)


def test_virtual_sgd_step_is_differentiable_in_the_gradient():
    param = torch.nn.Parameter(torch.ones(3))
    scale = torch.tensor(2.0, requires_grad=True)
    (updated,) = virtual_sgd_step([param], [scale * torch.ones(3)], [torch.ones(3)], lr=0.1, momentum=0.9)
    # updated = param - 0.1 * (0.9 * 1 + scale): d(sum)/d(scale) = -0.1 * 3
    (grad,) = torch.autograd.grad(updated.sum(), scale)
    assert grad.item() == pytest.approx(-0.3)


# --- SLMO split ---------------------------------------------------------------------------------------------


def test_split_layers_divides_parameters_and_buffers_by_part():
    model = cifar_resnet(8, NUM_CLASSES)
    nothing_skipped = split_layers(model, 0)
    assert nothing_skipped.bottom_part_count == 0 and not nothing_skipped.bottom_parameters
    assert set(nothing_skipped.top_parameters) == {name for name, _ in model.named_parameters()}

    split = split_layers(model, 2)
    assert split.bottom_part_count == 3
    assert all(name.startswith(("parts.0.", "parts.1.", "parts.2.")) for name in split.bottom_parameters)
    assert all(name.startswith(("parts.3.", "parts.4.")) for name in split.top_parameters)
    assert set(split.bottom_parameters) | set(split.top_parameters) == {n for n, _ in model.named_parameters()}
    assert set(split.bottom_buffers) | set(split.top_buffers) == {n for n, _ in model.named_buffers()}

    model.eval()
    images = torch.randn(2, 3, 8, 8)
    halves = PartRange(model, split.bottom_part_count)(PartRange(model, 0, split.bottom_part_count)(images))
    torch.testing.assert_close(halves, model(images))
    with pytest.raises(ValueError, match="slmo.skip_layers=4"):
        split_layers(model, 4)


# --- the meta iteration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weighting,scale,virtual_rule",
    [("curvenet", "none", "optimizer"), ("curvenet", "batch", "optimizer"), ("curvenet", "dataset", "optimizer"),
     ("mwnet", "none", "sgd"), ("mwnet", "batch", "optimizer")],
)
@pytest.mark.parametrize("skip_layers", [0, 2, 3])
def test_fast_meta_iteration_matches_reference_mwnet_step(weighting, scale, virtual_rule, skip_layers):
    fast = make_run(weighting)
    reference = copy.deepcopy(fast)
    batch = make_batch(1)
    weight_scale = WeightScale(scale, "exact", batch["reference_curves"], batch["reference_labels"])
    iteration = MetaIteration(*fast, skip_layers=skip_layers, sync="exact", weight_scale=weight_scale,
                              virtual_rule=virtual_rule)
    # Two iterations: the second's virtual step reads the momentum buffers the first left behind.
    for seed in (1, 2):
        batch = make_batch(seed)
        batch["reference_curves"], batch["reference_labels"] = weight_scale.reference_curves, weight_scale.reference_labels
        result = step_with(iteration, batch)
        reference_step(*reference, skip_layers, batch, scale, virtual_rule)
        if scale == "batch":
            assert result.weights.mean().item() == pytest.approx(1.0)
        fast_model, fast_weighting = fast[0], fast[1]
        reference_model, reference_weighting = reference[0], reference[1]
        assert result.meta_loss is not None
        assert_same_tensors(
            [p.grad for p in fast_weighting.parameters()], [p.grad for p in reference_weighting.parameters()]
        )
        assert_same_tensors(fast_weighting.parameters(), reference_weighting.parameters())
        assert_same_tensors([p.grad for p in fast_model.parameters()], [p.grad for p in reference_model.parameters()])
        assert_same_tensors(fast_model.state_dict().values(), reference_model.state_dict().values())


def test_skip_layers_changes_the_weighting_gradient():
    gradients = {}
    for skip_layers in (0, 3):
        model, weighting_net, classifier_optimizer, weighting_optimizer = make_run()
        iteration = MetaIteration(model, weighting_net, classifier_optimizer, weighting_optimizer, skip_layers)
        step_with(iteration, make_batch(1))
        gradients[skip_layers] = torch.cat([p.grad.reshape(-1) for p in weighting_net.parameters()])
    assert not torch.allclose(gradients[0], gradients[3])


@pytest.mark.parametrize("skip_layers", [0, 2])
def test_virtual_and_meta_passes_leave_batchnorm_statistics_alone(skip_layers):
    model, weighting_net, classifier_optimizer, weighting_optimizer = make_run()
    plain_forward = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    batch = make_batch(1)
    iteration = MetaIteration(model, weighting_net, classifier_optimizer, weighting_optimizer, skip_layers)

    step_with(iteration, batch, update_weighting=True)
    with torch.no_grad():
        plain_forward(batch["images"])

    buffers = dict(model.named_buffers())
    expected = dict(plain_forward.named_buffers())
    assert any(not torch.equal(buffers[name], before[name]) for name in buffers), "the train forward updates them"
    for name in buffers:
        torch.testing.assert_close(buffers[name], expected[name], rtol=0, atol=0, msg=name)


def test_without_weighting_net_a_step_is_plain_cross_entropy_sgd():
    model, _, classifier_optimizer, _ = make_run()
    plain_model = copy.deepcopy(model)
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    iteration = MetaIteration(model, None, classifier_optimizer, None, skip_layers=2)
    for seed in (1, 2):
        batch = make_batch(seed)
        result = step_with(iteration, batch, update_weighting=True)
        plain_optimizer.zero_grad()
        F.cross_entropy(plain_model(batch["images"]), batch["labels"]).backward()
        plain_optimizer.step()
        assert result.meta_loss is None and torch.equal(result.weights, torch.ones(8, dtype=torch.float64))
    assert_same_tensors(model.state_dict().values(), plain_model.state_dict().values())


def test_without_weighting_update_the_net_stays_and_weights_come_from_it():
    model, weighting_net, classifier_optimizer, weighting_optimizer = make_run()
    before = copy.deepcopy(weighting_net.state_dict())
    batch = make_batch(1)
    iteration = MetaIteration(model, weighting_net, classifier_optimizer, weighting_optimizer, skip_layers=2)
    result = step_with(iteration, batch, update_weighting=False)
    assert result.meta_loss is None
    assert_same_tensors(weighting_net.state_dict().values(), before.values(), rtol=0, atol=0)
    with torch.no_grad():
        expected = weighting_net(batch["curves"], batch["labels"], result.losses)
    torch.testing.assert_close(result.weights, expected)
    assert not result.weights.requires_grad and not result.losses.requires_grad


def test_unknown_sync_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="meta.sync='global'"):
        MetaIteration(*make_run(), skip_layers=0, sync="global")


def test_collectives_are_identity_without_a_process_group():
    tensors = [torch.randn(3), torch.randn(2, 2)]
    copies = [tensor.clone() for tensor in tensors]
    all_reduce_mean_(tensors)
    assert_same_tensors(tensors, copies, rtol=0, atol=0)
    assert differentiable_all_reduce_mean(tensors)[0] is tensors[0]


# --- distributed --------------------------------------------------------------------------------------------


def run_worker(nproc: int, out: Path) -> dict:
    out.mkdir()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(REPO_ROOT / "tests/distributed/meta_gradient_worker.py"), "--out", str(out),
    ]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {rank: torch.load(out / f"rank{rank}.pt") for rank in range(nproc)}


@pytest.mark.timeout(300)
def test_exact_two_rank_meta_gradient_equals_one_process_on_the_union_batch(tmp_path):
    """A small StagedNet without BatchNorm, in float64: per-rank BatchNorm batch statistics are the one thing that
    legitimately differs between 2 ranks and one process on the union batch, exactly as in plain DDP."""
    two_ranks = run_worker(2, tmp_path / "two_ranks")
    union = run_worker(1, tmp_path / "union")[0]
    for key in union:
        sync, skip_layers, scale = key
        rank0, rank1 = two_ranks[0][key], two_ranks[1][key]
        # Every rank ends with the same weighting-net gradient and the same classifier, in both modes.
        assert_same_tensors(rank0["weighting_grads"], rank1["weighting_grads"], rtol=0, atol=0)
        assert_same_tensors(rank0["classifier_parameters"], rank1["classifier_parameters"], rtol=0, atol=0)
        if sync == "exact":
            assert_same_tensors(rank0["weighting_grads"], union[key]["weighting_grads"])
            assert_same_tensors(rank0["classifier_parameters"], union[key]["classifier_parameters"])
            assert rank0["meta_loss"] == pytest.approx(union[key]["meta_loss"], rel=1e-12)
        else:
            local = torch.cat([grad.reshape(-1) for grad in rank0["weighting_grads"]])
            exact = torch.cat([grad.reshape(-1) for grad in union[key]["weighting_grads"]])
            assert not torch.allclose(local, exact), f"local mode (skip_layers={skip_layers}, scale={scale}) should differ"
