"""Dynamic Loss's pieces: the corrector and generator, its training loss through MetaIteration's seam (checked
against a plain reference step), rank buckets, the hierarchical sample and the config's refusals."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from curvenet_dist.config import ConfigError, load_config
from curvenet_dist.meta.hierarchical import hierarchical_sample, rank_buckets
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.meta.virtual_step import virtual_sgd_step
from curvenet_dist.methods.logit_adjust import log_prior_adjustment
from curvenet_dist.models.cifar_resnet import cifar_resnet
from curvenet_dist.models.dynamic_loss import DynamicLoss, DynamicLossTraining
from tests.test_meta import NUM_CLASSES, assert_same_tensors, make_batch

BUCKETS = 5


def make_run():
    torch.manual_seed(0)
    model = cifar_resnet(8, NUM_CLASSES).double()
    net = DynamicLoss(torch.tensor([0.4, 0.3, 0.2, 0.1]).log(), BUCKETS, hidden=16).double()
    return (model, net, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
            torch.optim.Adam(net.parameters(), lr=3e-3))


def dynamic_inputs(seed: int, batch_size: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, BUCKETS, (batch_size,), generator=generator),
                        torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)], 1)


def reference_loss(net, logits, labels, inputs):
    """-log softmax(z + m)_y, kept in full where y_pred = y and in the share w elsewhere, written out."""
    ranks = (inputs[:, :1].double() + 0.5) / BUCKETS
    w = torch.sigmoid(net.corrector(torch.relu(net.rank_input(ranks))))[torch.arange(len(labels)), labels]
    kept = torch.where(inputs[:, 1] == labels, 1.0, w)
    margins = net.generator(net.class_feature)[0]
    return -(kept * F.log_softmax(logits + margins, 1)[torch.arange(len(labels)), labels]).mean()


def reference_step(model, net, optimizer, net_optimizer, skip_layers, batch, inputs):
    count = model.bottom_part_count(skip_layers)
    parameters = dict(model.named_parameters())
    top_names = [name for name in parameters if int(name.split(".")[1]) >= count]
    buffers = lambda: {name: b.clone() for name, b in model.named_buffers()}  # noqa: E731
    logits = functional_call(model, {**parameters, **buffers()}, (batch["images"],))
    top = [parameters[name] for name in top_names]
    grads = torch.autograd.grad(reference_loss(net, logits, batch["labels"], inputs), top, create_graph=True)
    group = optimizer.param_groups[0]
    w_hat = virtual_sgd_step(top, list(grads), [optimizer.state.get(p, {}).get("momentum_buffer") for p in top],
                             lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"])
    meta_logits = functional_call(model, {**parameters, **dict(zip(top_names, w_hat)), **buffers()},
                                  (batch["meta_images"],))
    meta_loss = F.cross_entropy(meta_logits, batch["meta_labels"])
    for param, grad in zip(net.parameters(), torch.autograd.grad(meta_loss, list(net.parameters()))):
        param.grad = grad
    net_optimizer.step()
    optimizer.zero_grad()
    logits = model(batch["images"])
    with torch.no_grad():
        frozen = copy.deepcopy(net)
    reference_loss(frozen, logits, batch["labels"], inputs).backward()
    optimizer.step()


def test_corrector_starts_trusting_the_labels_and_margins_start_at_the_log_prior():
    log_prior = log_prior_adjustment([500, 200, 100, 50, 50, 40, 30, 20, 10, 5], tau=1.0)
    net = DynamicLoss(log_prior, buckets=100, hidden=64)
    trust = net.trust(torch.arange(100).repeat(10), torch.arange(10).repeat_interleave(100))
    assert 0.9 < trust.mean().item() < 1 and trust.min().item() > 0.5
    # The output layer's bias is the log prior; its weights add only a small random part to it.
    torch.testing.assert_close(net.margins(), log_prior, atol=0.5, rtol=0)


def test_a_sample_keeps_its_trust_share_of_the_loss_only_where_its_prediction_disagrees():
    """Where y_pred is the given label the sample trains on it in full, whatever its trust; elsewhere it keeps
    the share w, and nothing of it moves to y_pred."""
    net = DynamicLoss(torch.zeros(3), buckets=10, hidden=8)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 2])
    inputs = torch.tensor([[9, 0], [9, 1], [9, 1], [0, 0]])
    losses, trust = DynamicLossTraining(net)(logits, labels, None, inputs, track_meta=False)
    plain = F.cross_entropy(logits + net.margins().detach(), labels, reduction="none")
    torch.testing.assert_close(losses, plain * torch.tensor([1.0, trust[1], 1.0, trust[3]]))
    assert (trust < 1).all()


@pytest.mark.parametrize("skip_layers", [0, 2])
def test_meta_iteration_with_dynamic_loss_matches_a_reference_step(skip_layers):
    fast = make_run()
    reference = copy.deepcopy(fast)
    iteration = MetaIteration(fast[0], fast[1], fast[2], fast[3], skip_layers,
                              training_loss=DynamicLossTraining(fast[1]))
    for seed in (1, 2):
        batch, inputs = make_batch(seed), dynamic_inputs(seed)
        result = iteration.step(batch["images"], batch["labels"], inputs, (batch["meta_images"], batch["meta_labels"]))
        reference_step(*reference, skip_layers, batch, inputs)
        assert ((result.weights > 0) & (result.weights < 1)).all()
        assert_same_tensors([p.grad for p in fast[1].parameters()], [p.grad for p in reference[1].parameters()])
        assert_same_tensors(fast[1].parameters(), reference[1].parameters())
        assert_same_tensors(fast[0].state_dict().values(), reference[0].state_dict().values())
    # Both the corrector and the generator learn from the meta loss.
    assert fast[1].corrector[-1].weight.grad.abs().sum() > 0 and fast[1].generator[-1].weight.grad.abs().sum() > 0


def test_rank_buckets_rank_within_each_given_class():
    losses = np.array([0.5, 0.1, 0.9, 3.0, 2.0, 1.0, 0.3, 0.2])
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    buckets = rank_buckets(losses, labels, 2)
    # class 0 by loss: ids 1, 6, 0, 2 -> buckets 0, 0, 1, 1; class 1: ids 7, 5, 4, 3 -> 0, 0, 1, 1.
    np.testing.assert_array_equal(buckets, [1, 0, 1, 1, 1, 0, 0, 0])
    assert rank_buckets(losses, labels, 100).max() < 100


def test_hierarchical_sample_is_balanced_low_loss_and_seeded():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [40, 100, 200])
    losses = rng.random(len(labels))
    rows = hierarchical_sample(losses, labels, 3, seed=0, epoch=1)
    # Half the smallest class (20) drawn per class, the lower-loss half (10) kept.
    np.testing.assert_array_equal(np.bincount(labels[rows], minlength=3), [10, 10, 10])
    assert losses[rows].mean() < losses.mean() - 0.15
    np.testing.assert_array_equal(rows, hierarchical_sample(losses, labels, 3, seed=0, epoch=1))
    assert not np.array_equal(rows, hierarchical_sample(losses, labels, 3, seed=0, epoch=2))


@pytest.mark.parametrize("overrides, message", [
    (["dynamic_loss.buckets=1"], "dynamic_loss.buckets=1 must be >= 2"),
    (["dynamic_loss.meta_interval=0"], "dynamic_loss.meta_interval=0 must be > 0"),
    # Its trust weights mix targets: no weight scale applies to them.
    (["dynamic_loss.weight_scale=batch"], "unknown key 'dynamic_loss.weight_scale'"),
])
def test_bad_dynamic_loss_config_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["method=dynamic_loss", *overrides])


def test_each_epoch_ranks_samples_by_the_losses_of_the_last_epochs_training(tmp_path):
    """No evaluation pass after the first epoch: the ranks and y_pred of epoch e + 1 are what epoch e's training
    steps saw. Every sample trains every epoch, the epoch's meta sample with its given label as its target (as the
    reference fine-tunes on it), so no class loses its share of the epoch's steps to the meta sample."""
    from curvenet_dist.engine.allocate import AllocateTrainer
    from curvenet_dist.engine.distributed import DistributedContext
    from tests.conftest import QUICKSTART, TINY

    config = load_config(QUICKSTART, [*TINY, f"run.dir={tmp_path}", "method=dynamic_loss", "allocate.epochs=2",
                                      "allocate.milestones=[2]", "dynamic_loss.warmup_epochs=1",
                                      "dynamic_loss.buckets=10", "meta.batch_size=20"])
    trainer = AllocateTrainer(config, DistributedContext(0, 0, 1, torch.device("cpu")))
    method, step = trainer.method, trainer.iteration.step
    step_losses = []

    def recording_step(*args, **kwargs):
        result = step(*args, **kwargs)
        step_losses.append(result.losses)
        return result

    trainer.iteration.step = recording_step
    trainer.train_epoch(0, 0, 0.0)
    # The warm-up epoch trained every sample once: each one's loss is now the one its step computed.
    warm_losses = torch.cat(step_losses)
    assert sorted(method.sample_losses.tolist()) == pytest.approx(sorted(warm_losses.tolist()))
    before = method.sample_losses.clone()
    plan = method.start_epoch(1, 0)
    meta_sample = method.meta_batches.rows[method.meta_batches.rows < len(before)]
    assert len(meta_sample) > 0
    labels = method.setup.train_labels()
    torch.testing.assert_close(plan.inputs[meta_sample, 1], labels[meta_sample])
    trainer.train_epoch(1, 0, 0.0)
    assert (method.sample_losses != before).all(), "every sample trained in the epoch, its meta sample's included"
    assert ((method.predicted >= 0) & (method.predicted < 10)).all()
