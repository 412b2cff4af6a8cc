"""CurveNet learns, within the meta budget a small dataset gives it: on a real curve store whose clean and
mislabeled curves differ as in the paper's Fig. 1, tens of real meta iterations give weights that separate the
mislabeled samples, and the weight scale leaves the meta step no way to raise every weight instead."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from curvenet_dist.config import CurveNetConfig
from curvenet_dist.curves.features import normalized_curves
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.data.bias import corrupt_labels
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.meta.weight_scale import WeightScale, balanced_class_factors, reference_sample
from curvenet_dist.meta.weighting_optimizer import weighting_optimizer
from curvenet_dist.models.staged import ClassifierHead, StagedNet
from curvenet_dist.models.weighting import CurveNet
from curvenet_dist.tracking.report import class_relative, noise_detection_scores

NUM_CLASSES, PER_CLASS, EPOCHS, SKIP_EPOCHS = 4, 150, 15, 2
BATCH, META_PER_CLASS = 64, 10


def fig1_curves(true_labels: np.ndarray, given_labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, T] losses: a clean sample's loss falls early; a mislabeled one's stays high while the LR is high and
    falls only late (paper Fig. 1), each with sample-to-sample spread."""
    t = np.arange(EPOCHS)
    clean = 2.0 * np.exp(-t / 3.0)
    mislabeled = 2.3 * np.exp(-t / 25.0)
    noisy = true_labels != given_labels
    curves = np.where(noisy[:, None], mislabeled, clean) * rng.uniform(0.7, 1.3, (len(true_labels), 1))
    return (curves + 0.15 * np.abs(rng.standard_normal(curves.shape))).astype(np.float32)


def class_clusters(labels: np.ndarray, centres: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """3x2x2 'images' around a centre per true class."""
    return centres[torch.from_numpy(labels)] + 0.8 * torch.randn(len(labels), 3, 2, 2, generator=generator)


def small_classifier() -> StagedNet:
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU())
    return StagedNet(stem, [nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU())], ClassifierHead(16, NUM_CLASSES))


@pytest.fixture(scope="module")
def biased_data(tmp_path_factory):
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
    given = corrupt_labels(true, NUM_CLASSES, "proportional", 0.4, rng)
    store = CurveStore.open_or_create(tmp_path_factory.mktemp("probe") / "curves.zarr", fingerprint="synthetic",
                                      dataset_fingerprint="synthetic", labels=given, true_labels=true,
                                      num_epochs=EPOCHS)
    for epoch, column in enumerate(fig1_curves(true, given, rng).T):
        store.write_epoch(epoch, column, lr=0.1)
    features = torch.from_numpy(normalized_curves(store, SKIP_EPOCHS, CurveNetConfig.curve_normalization))
    generator = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(NUM_CLASSES, 3, 2, 2, generator=generator)
    meta_labels = np.repeat(np.arange(NUM_CLASSES), META_PER_CLASS)
    return {"true": true, "given": torch.from_numpy(given), "features": features,
            "centred_features": torch.from_numpy(normalized_curves(store, SKIP_EPOCHS, "class_mean")),
            "images": class_clusters(true, centres, generator),
            "meta_images": class_clusters(meta_labels, centres, generator), "meta_labels": torch.from_numpy(meta_labels)}


def train_curvenet(data: dict, scale: str, steps: int, meta_lr: float = 1e-3,
                   classifier_lr: float = 0.1) -> tuple[CurveNet, WeightScale]:
    """`steps` real allocate iterations (virtual step, meta step, actual step) at the project's defaults."""
    model = small_classifier()
    torch.manual_seed(1)
    curvenet = CurveNet(EPOCHS - SKIP_EPOCHS, NUM_CLASSES)
    weight_scale = WeightScale(scale, "exact", data["features"], data["given"],
                               balanced_class_factors(np.bincount(data["given"].numpy(), minlength=NUM_CLASSES)))
    iteration = MetaIteration(
        model, curvenet, torch.optim.SGD(model.parameters(), lr=classifier_lr, momentum=0.9, weight_decay=5e-4),
        weighting_optimizer(curvenet.parameters(), meta_lr, weight_decay=1e-4), skip_layers=0,
        weight_scale=weight_scale,
    )
    order = torch.Generator().manual_seed(2)
    for _ in range(steps):
        ids = torch.randperm(len(data["given"]), generator=order)[:BATCH]
        iteration.step(data["images"][ids], data["given"][ids], data["features"][ids],
                       (data["meta_images"], data["meta_labels"]))
    return curvenet, weight_scale


def all_weights(curvenet: CurveNet, data: dict) -> np.ndarray:
    with torch.no_grad():
        return curvenet(data["features"], data["given"], None).numpy()


def noise_auroc(weights: np.ndarray, data: dict) -> float:
    return roc_auc_score(data["true"] != data["given"].numpy(), -weights)


@pytest.mark.parametrize("scale", ["dataset", "class"])
def test_curvenet_separates_mislabeled_samples_within_tens_of_meta_steps(biased_data, scale):
    curvenet, weight_scale = train_curvenet(biased_data, scale, steps=40)
    weights = all_weights(curvenet, biased_data)
    assert weights.std() / weights.mean() > 0.05, "the weights must vary between samples"
    assert noise_auroc(weights, biased_data) >= 0.9


@pytest.fixture(scope="module")
def swamped_tail(tmp_path_factory):
    """A long tail whose smallest class is 70% mislabeled: 70 samples of the head class carry its label, beside
    its own 30 (as a head class's errors land in a small look-alike class)."""
    rng = np.random.default_rng(1)
    true = np.repeat(np.arange(NUM_CLASSES), [300, 150, 80, 30])
    given = true.copy()
    given[rng.choice(np.flatnonzero(true == 0), 70, replace=False)] = 3
    store = CurveStore.open_or_create(tmp_path_factory.mktemp("probe") / "curves.zarr", fingerprint="swamped",
                                      dataset_fingerprint="swamped", labels=given, true_labels=true,
                                      num_epochs=EPOCHS)
    for epoch, column in enumerate(fig1_curves(true, given, rng).T):
        store.write_epoch(epoch, column, lr=0.1)
    generator = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(NUM_CLASSES, 3, 2, 2, generator=generator)
    meta_labels = np.repeat(np.arange(NUM_CLASSES), META_PER_CLASS)
    return {"true": true, "given": torch.from_numpy(given),
            "features": torch.from_numpy(normalized_curves(store, SKIP_EPOCHS, CurveNetConfig.curve_normalization)),
            "images": class_clusters(true, centres, generator),
            "meta_images": class_clusters(meta_labels, centres, generator), "meta_labels": torch.from_numpy(meta_labels)}


def test_a_weak_meta_gradient_still_moves_curvenet_off_its_initial_output(swamped_tail):
    # A small virtual step (classifier LR 1e-3) makes the meta-gradient around 1e-6, below the weight decay's pull
    # (1e-4 x |parameter|). With the decay added to the gradient, Adam followed the decay alone and every weight
    # stayed at the initial 0.52; decoupled, the meta-gradient sets the direction.
    curvenet, _ = train_curvenet(swamped_tail, "class", steps=100, classifier_lr=1e-3)
    weights = all_weights(curvenet, swamped_tail)
    assert weights.std() / weights.mean() > 0.05, "the weights must move off the initial output"
    tail = swamped_tail["given"].numpy() == 3
    mislabeled = swamped_tail["true"][tail] != 3
    assert roc_auc_score(mislabeled, -weights[tail]) >= 0.9, "the swamped tail class's wrong labels weigh least"


def test_the_dataset_scale_cannot_drift_to_all_weights_one(biased_data):
    # A meta LR high enough that, without a scale, the meta step saturates every weight: plain CE again. On the
    # centred curves (no std division) it does so within 40 steps at 3x the default.
    biased_data = {**biased_data, "features": biased_data["centred_features"]}
    unscaled, _ = train_curvenet(biased_data, "none", steps=40, meta_lr=3e-3)
    raw = all_weights(unscaled, biased_data)
    assert np.median(raw) > 0.95, "without a scale the weights drift to the top"

    scaled, weight_scale = train_curvenet(biased_data, "dataset", steps=40, meta_lr=3e-3)
    raw = torch.from_numpy(all_weights(scaled, biased_data))
    effective = weight_scale.frozen(raw, biased_data["given"]).numpy()
    # The classifier sees weights of mean 1 whatever the net's level, so raising every weight buys nothing:
    # the weights stay spread and keep flagging the mislabeled samples.
    assert effective.mean() == pytest.approx(1.0, abs=1e-5)
    assert np.quantile(effective, 0.1) < 0.5 < 1.2 < np.quantile(effective, 0.9)
    assert noise_auroc(effective, biased_data) >= 0.9


def test_the_class_scale_gives_every_class_the_same_total_whatever_the_net_says_of_the_class():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    raw = torch.tensor([0.9, 0.8, 0.9, 0.1, 0.9, 0.7, 0.3, 0.4, 0.05, 0.6])
    weight_scale = WeightScale("class", "exact", torch.zeros(len(labels), 1), labels, balanced_class_factors(np.array([6, 3, 1])))
    effective = weight_scale.frozen(raw, labels)
    # Class-balanced CE's totals (N / C each, mean weight 1), shared out within a class as the net ranks them.
    totals = torch.zeros(3).index_add(0, labels, effective)
    torch.testing.assert_close(totals, torch.full((3,), 10 / 3))
    assert effective.mean().item() == pytest.approx(1.0)
    assert effective[3] < effective[0] and effective[8] < effective[6]
    # Raising (or lowering) a whole class's weights changes nothing: the meta step can only re-rank within a class.
    raised = raw * torch.tensor([3.0, 0.2, 7.0])[labels]
    torch.testing.assert_close(weight_scale.frozen(raised, labels), effective)


def test_the_class_scale_estimates_each_class_mean_on_a_fixed_sample_of_every_class():
    labels = np.repeat(np.arange(3), [1000, 50, 3])
    ids = reference_sample(labels, size=60, seed=4, by_class=True)
    assert np.bincount(labels[ids.numpy()]).tolist() == [20, 20, 3]
    assert torch.equal(ids, reference_sample(labels, size=60, seed=4, by_class=True)), "every rank draws alike"
    assert torch.equal(ids, ids.sort().values) and len(ids.unique()) == len(ids)


def test_noise_is_scored_on_the_weight_relative_to_its_class():
    # A tail class weighted up as a whole (rebalancing) is not evidence about noise: within each class the
    # mislabeled sample has the lowest weight, and the class-relative weight ranks it first.
    labels = np.array([0, 0, 0, 1, 1, 1])
    weights = np.array([0.20, 0.20, 0.05, 0.90, 0.90, 0.30])
    mislabeled = np.array([False, False, True, False, False, True])
    assert noise_detection_scores(weights, mislabeled)["noise_auroc"] < 1.0
    assert noise_detection_scores(class_relative(weights, labels), mislabeled)["noise_auroc"] == 1.0
