"""Run by tests/test_meta.py under `python -m torch.distributed.run`: one allocate meta iteration per (sync mode,
skip_layers, weighting) on this rank's share of a fixed global batch; writes what it computed to <out>/rank<r>.pt."""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.meta.weight_scale import WeightScale
from curvenet_dist.models.staged import ClassifierHead, StagedNet
from curvenet_dist.models.dynamic_loss import DynamicLoss, DynamicLossTraining
from curvenet_dist.models.weighting import CurveNet

GLOBAL_BATCH = 8
GLOBAL_META_BATCH = 6
NUM_CLASSES = 3
CURVE_LENGTH = 4


def small_net_without_batchnorm() -> StagedNet:
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    stages = [
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()),
    ]
    return StagedNet(stem, stages, ClassifierHead(8, NUM_CLASSES)).double()


def global_batches() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "images": torch.randn(GLOBAL_BATCH, 3, 6, 6, generator=generator, dtype=torch.float64),
        "labels": torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=generator),
        "curves": torch.randn(GLOBAL_BATCH, CURVE_LENGTH, generator=generator, dtype=torch.float64),
        "meta_images": torch.randn(GLOBAL_META_BATCH, 3, 6, 6, generator=generator, dtype=torch.float64),
        "meta_labels": torch.randint(0, NUM_CLASSES, (GLOBAL_META_BATCH,), generator=generator),
        # Dynamic Loss's per-sample inputs: rank bucket (of 5) and sampled prediction.
        "buckets_predicted": torch.stack([torch.randint(0, 5, (GLOBAL_BATCH,), generator=generator),
                                          torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=generator)], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = {name: batch.chunk(world)[rank] for name, batch in global_batches().items()}

    results = {}
    # "dynamic_loss" in the scale's place: Dynamic Loss's corrector and generator instead of CurveNet.
    for sync, skip_layers, scale in itertools.product(("exact", "local"), (0, 1),
                                                      ("none", "batch", "dataset", "dynamic_loss")):
        model = small_net_without_batchnorm()
        torch.manual_seed(2)
        if scale == "dynamic_loss":
            weighting_net, inputs = DynamicLoss(NUM_CLASSES, buckets=5, hidden=8), shard["buckets_predicted"]
        else:
            weighting_net = CurveNet(CURVE_LENGTH, NUM_CLASSES, embedding_dim=8, curve_hidden=(8,), head_hidden=(8,))
            inputs = shard["curves"]
        weighting_net.double()
        iteration = MetaIteration(
            model,
            weighting_net,
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
            torch.optim.Adam(weighting_net.parameters(), lr=1e-3),
            skip_layers=skip_layers,
            sync=sync,
            # The dataset scale's reference samples are the same on every rank: the global batch's curves.
            weight_scale=(None if scale == "dynamic_loss" else
                          WeightScale(scale, sync, global_batches()["curves"], global_batches()["labels"])),
            training_loss=DynamicLossTraining(weighting_net) if scale == "dynamic_loss" else None,
        )
        result = iteration.step(shard["images"], shard["labels"], inputs, (shard["meta_images"], shard["meta_labels"]))
        results[(sync, skip_layers, scale)] = {
            "weighting_grads": [param.grad.clone() for param in weighting_net.parameters()],
            "classifier_parameters": [param.detach().clone() for param in model.parameters()],
            "meta_loss": result.meta_loss.item(),
        }
    torch.save(results, args.out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
