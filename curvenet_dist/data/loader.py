"""`data.loader: torch | dali`: one call that builds either, with the same output contract."""
from __future__ import annotations

import torch

from curvenet_dist.config import DataConfig
from curvenet_dist.data.sample_table import SampleTable


def build_loader(config: DataConfig, table: SampleTable, *, train: bool, rank: int, world_size: int, seed: int,
                 device: torch.device):
    arguments = dict(
        train=train, batch_size=config.batch_size if train else config.eval_batch_size, image_size=config.image_size,
        mean=config.mean, std=config.std, augment=config.augment, rank=rank, world_size=world_size, seed=seed,
        num_threads=config.num_workers, device_id=device.index if device.type == "cuda" else None,
    )
    if config.loader == "dali":
        from curvenet_dist.data.dali_loader import build_dali_loader

        return build_dali_loader(table, **arguments)
    from curvenet_dist.data.torch_loader import build_torch_loader

    return build_torch_loader(table, **arguments)
