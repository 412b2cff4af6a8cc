"""Run by tests/test_meta.py under `python -m torch.distributed.run`: one allocate meta iteration (MetaIteration.step)
for each of `cases()` on this rank's share of fixed global batches; writes what it computed, in that order, to
<out>/rank<r>.pt. The test builds the same models and batches from here for its single-process reference."""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from curvenet_dist.engine.distributed import exit_without_finalization
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.meta.weight_scale import WeightScale, balanced_class_factors
from curvenet_dist.models.cifar_resnet import cifar_resnet
from curvenet_dist.models.dynamic_loss import DynamicLoss, DynamicLossTraining
from curvenet_dist.models.staged import StagedNet
from curvenet_dist.models.weighting import CurveNet, MetaWeightNet

GLOBAL_BATCH = 8
GLOBAL_META_BATCH = 6
NUM_CLASSES = 3
CURVE_LENGTH = 4
REFERENCE_SAMPLES = 10
IMAGE_SIZE = {"cifar_resnet": 8, "resnet50": 32}
# (weighting net, weight scale, virtual rule): the dataset scale needs CurveNet's fixed inputs; MW-Net's virtual
# step is its reference's plain SGD.
CURVENET_NONE, CURVENET_BATCH, CURVENET_DATASET, CURVENET_CLASS = (
    ("curvenet", scale, "optimizer") for scale in ("none", "batch", "dataset", "class"))
MWNET_NONE, MWNET_BATCH = (("mwnet", scale, "sgd") for scale in ("none", "batch"))
# Dynamic Loss's corrector and margin generator in the weighting net's place (no weight scale).
DYNAMIC_LOSS = ("dynamic_loss", "none", "optimizer")
WEIGHTINGS = (CURVENET_NONE, CURVENET_BATCH, CURVENET_DATASET, CURVENET_CLASS, MWNET_NONE, MWNET_BATCH, DYNAMIC_LOSS)
# A ResNet-50 case costs ~2 s per rank and as much again for the test's reference, so ResNet-50 runs every
# skip_layers with one weighting each (each weighting once); the CIFAR ResNet runs the full product.
RESNET50_CASES = ((0, MWNET_NONE), (1, MWNET_BATCH), (2, CURVENET_NONE), (3, CURVENET_DATASET), (4, CURVENET_BATCH))
# Large tensors are compared on evenly spaced entries: ResNet-50's full parameters would be 190 MB per case.
COMPARED_ENTRIES = 4096


@dataclass(frozen=True)
class Case:
    backbone: str
    skip_layers: int
    weighting: str
    scale: str
    virtual_rule: str
    sync: str


def cases() -> list[Case]:
    cifar = [Case("cifar_resnet", skip_layers, *weighting, sync) for sync in ("exact", "local")
             for skip_layers in range(4) for weighting in WEIGHTINGS]
    return cifar + [Case("resnet50", skip_layers, *weighting, "exact") for skip_layers, weighting in RESNET50_CASES]


def build_classifier(backbone: str) -> StagedNet:
    torch.manual_seed(0)
    if backbone == "cifar_resnet":
        model = cifar_resnet(8, NUM_CLASSES, width=4)
    else:
        from curvenet_dist.models.timm_resnet import timm_resnet

        model = timm_resnet("resnet50", NUM_CLASSES)
    # timm zero-initialises the last BatchNorm weight of every residual branch, which would hide those branches'
    # batch statistics from every gradient: random affine parameters make every BatchNorm count.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, std=0.1)
    return model.double()


def build_weighting_net(weighting: str) -> nn.Module:
    torch.manual_seed(2)
    if weighting == "mwnet":
        return MetaWeightNet(hidden=8).double()
    if weighting == "dynamic_loss":
        return DynamicLoss(torch.zeros(NUM_CLASSES), buckets=5, hidden=8).double()
    net = CurveNet(CURVE_LENGTH, NUM_CLASSES, embedding_dim=8, curve_hidden=(8,), head_hidden=(8,))
    # CurveNet's zero output layer gives every sample the same first weight; a random one tests per-sample weights.
    nn.init.normal_(net.head[-1].weight)
    return net.double()


def optimizers(model: nn.Module, weighting_net: nn.Module) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    return (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
            torch.optim.Adam(weighting_net.parameters(), lr=1e-3))


def global_batches(backbone: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    size = IMAGE_SIZE[backbone]
    return {
        "images": torch.randn(GLOBAL_BATCH, 3, size, size, generator=generator, dtype=torch.float64),
        "labels": torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=generator),
        "curves": torch.randn(GLOBAL_BATCH, CURVE_LENGTH, generator=generator, dtype=torch.float64),
        "meta_images": torch.randn(GLOBAL_META_BATCH, 3, size, size, generator=generator, dtype=torch.float64),
        "meta_labels": torch.randint(0, NUM_CLASSES, (GLOBAL_META_BATCH,), generator=generator),
        # Dynamic Loss's per-sample inputs: rank bucket (of 5) and sampled prediction.
        "buckets_predicted": torch.stack([torch.randint(0, 5, (GLOBAL_BATCH,), generator=generator),
                                          torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=generator)], 1),
        # The dataset and class scales' estimation sample, the same on every rank, and the class scale's counts.
        "reference_curves": torch.randn(REFERENCE_SAMPLES, CURVE_LENGTH, generator=generator, dtype=torch.float64),
        "reference_labels": torch.arange(REFERENCE_SAMPLES) % NUM_CLASSES,
        "class_counts": torch.tensor([30, 12, 5]),
    }


def input_name(weighting: str) -> str:
    """Which batch entry is the weighting net's per-sample input."""
    return "buckets_predicted" if weighting == "dynamic_loss" else "curves"


def compared(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.detach().reshape(-1)
    return flat[:: -(-flat.numel() // COMPARED_ENTRIES)].clone()


def outcome(model: StagedNet, weighting_net: nn.Module, meta_loss: torch.Tensor) -> dict:
    """What the test compares after one step: the weighting net's gradient, the classifier and its running
    statistics, and the meta loss."""
    return {
        "weighting_grads": [param.grad.clone() for param in weighting_net.parameters()],
        "classifier_parameters": [compared(param) for param in model.parameters()],
        "running_statistics": [compared(buffer) for buffer in model.buffers() if buffer.is_floating_point()],
        "meta_loss": meta_loss.item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    initial = {backbone: build_classifier(backbone) for backbone in IMAGE_SIZE}
    batches = {backbone: global_batches(backbone) for backbone in IMAGE_SIZE}

    results = []
    for case in cases():
        batch = batches[case.backbone]
        shard = {name: batch[name].chunk(world)[rank] for name in ("images", "labels", input_name(case.weighting),
                                                                   "meta_images", "meta_labels")}
        model = copy.deepcopy(initial[case.backbone])
        weighting_net = build_weighting_net(case.weighting)
        scale = WeightScale(case.scale, case.sync, batch["reference_curves"], batch["reference_labels"],
                            balanced_class_factors(batch["class_counts"].numpy()))
        # The stem's gradient comes last in the backward; registered before MetaIteration's own hooks, this one sees
        # how many gradient buckets were already being reduced by then.
        in_flight_at_stem = []
        next(model.parameters()).register_post_accumulate_grad_hook(
            lambda _: in_flight_at_stem.append(len(iteration.gradient_mean.in_flight)))
        iteration = MetaIteration(model, weighting_net, *optimizers(model, weighting_net), case.skip_layers,
                                  sync=case.sync, weight_scale=scale, virtual_rule=case.virtual_rule,
                                  training_loss=(DynamicLossTraining(weighting_net)
                                                 if case.weighting == "dynamic_loss" else None))
        result = iteration.step(shard["images"], shard["labels"], shard[input_name(case.weighting)],
                                (shard["meta_images"], shard["meta_labels"]))
        results.append({**outcome(model, weighting_net, result.meta_loss), "in_flight_at_stem": in_flight_at_stem,
                        "buckets": len(iteration.gradient_mean.buckets)})
    torch.save(results, args.out / f"rank{rank}.pt")
    dist.destroy_process_group()
    exit_without_finalization(0)


if __name__ == "__main__":
    main()
