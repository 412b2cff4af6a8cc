"""Run by tests/test_dynamic_loss_allocate.py under torchrun: one evaluation pass of a fixed model over the
quickstart's training set, sharded over the ranks, then Dynamic Loss's rank buckets and hierarchical sample;
writes them to <out>/rank<r>.npz."""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from curvenet_dist.config import load_config
from curvenet_dist.data.datasets import build_splits
from curvenet_dist.data.loader import build_loader
from curvenet_dist.engine.distributed import exit_without_finalization
from curvenet_dist.engine.evaluate import losses_and_samples
from curvenet_dist.meta.hierarchical import hierarchical_sample, rank_buckets
from curvenet_dist.models.cifar_resnet import cifar_resnet


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = load_config(args.config, ["data.image_size=8", "data.eval_batch_size=50"])
    splits = build_splits(config.data, config.bias)
    train = splits.train
    torch.manual_seed(0)
    model = cifar_resnet(8, splits.num_classes, width=8)
    loader = build_loader(config.data, train, train=False, rank=rank, world_size=world, seed=0,
                          device=torch.device("cpu"))
    losses, _ = losses_and_samples(model, loader, torch.device("cpu"), len(train), nullcontext,
                                   torch.Generator().manual_seed(rank))
    np.savez(args.out / f"rank{rank}.npz", losses=losses, buckets=rank_buckets(losses, train.labels, 100),
             sample=hierarchical_sample(losses, train.labels, splits.num_classes, seed=0, epoch=3),
             labels=train.labels)
    dist.destroy_process_group()
    exit_without_finalization(0)


if __name__ == "__main__":
    main()
