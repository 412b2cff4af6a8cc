"""Run by tests/test_data_parallel_step.py under `python -m torch.distributed.run`: two allocate steps without a
meta update (plain CE, then fixed weights) on this rank's share of a fixed global batch, through the
DistributedDataParallel path when there are several ranks; writes the classifier to <out>/rank<r>.pt."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from curvenet_dist.engine.distributed import exit_without_finalization
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.models.staged import ClassifierHead, StagedNet

GLOBAL_BATCH, NUM_CLASSES = 8, 3


def small_net_without_batchnorm() -> StagedNet:
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    stages = [nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())]
    return StagedNet(stem, stages, ClassifierHead(8, NUM_CLASSES)).double()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 6, 6, generator=generator, dtype=torch.float64).chunk(world)[rank]
    labels = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=generator).chunk(world)[rank]
    weights = torch.rand(GLOBAL_BATCH, generator=generator, dtype=torch.float64).chunk(world)[rank]

    model = small_net_without_batchnorm()
    data_parallel = DistributedDataParallel(model, forward_sync_buffers=False) if world > 1 else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    iteration = MetaIteration(model, None, optimizer, None, skip_layers=1, data_parallel=data_parallel)
    iteration.step(images, labels, None)
    iteration.step(images, labels, None, fixed_weights=weights)
    torch.save([param.detach().clone() for param in model.parameters()], args.out / f"rank{rank}.pt")
    dist.destroy_process_group()
    exit_without_finalization(0)


if __name__ == "__main__":
    main()
