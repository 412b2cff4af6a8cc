"""Builders shared by the probe and allocate trainers."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch

from curvenet_dist.config import Config
from curvenet_dist.data.sample_table import DataError, SampleTable
from curvenet_dist.engine.distributed import DistributedContext, min_over_ranks
from curvenet_dist.models.registry import build_backbone
from curvenet_dist.models.staged import StagedNet


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def probe_fingerprint(config: Config, train: SampleTable) -> str:
    """What makes two probe runs' curves comparable: the samples, the model, the optimiser, the schedule."""
    data = {key: getattr(config.data, key) for key in ("image_size", "batch_size", "augment", "mean", "std")}
    model = {key: getattr(config.model, key) for key in ("name", "depth", "width", "weights")}
    return fingerprint(train.fingerprint(), data, model, vars(config.optim), vars(config.probe), config.run.seed)


def check_images_exist(table: SampleTable, split: str, context: DistributedContext) -> None:
    """Fail before training, naming the sample, if an image file is missing or unreadable. Each rank checks
    its share of the files (one look per file for the whole job, which matters for a million images on a
    shared filesystem); every rank then stops with the same message for the first bad sample any rank found."""
    first_bad = len(table)
    for sample_id in range(context.rank, len(table), context.world_size):
        if not os.access(table.image_root / table.paths[sample_id], os.R_OK):
            first_bad = sample_id
            break
    first_bad = min_over_ranks(first_bad, context.device)
    if first_bad < len(table):
        raise DataError(f"{split} sample {first_bad}: image {table.image_path(first_bad)} is missing or unreadable")


def build_model(config: Config, num_classes: int, device: torch.device) -> StagedNet:
    torch.manual_seed(config.run.seed)
    model = build_backbone(config.model, num_classes).to(device)
    if device.type == "cuda" and config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def autocast_for(config: Config, device: torch.device):
    """bf16 autocast on GPU when asked; float32 on CPU."""
    if device.type == "cuda" and config.model.amp == "bf16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def write_atomically(path: Path, write) -> None:
    """`write(temporary)`, flushed to disk, then renamed to `path`: a reader sees the old file or the new one."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    with open(temporary, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temporary, path)


def write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=2) + "\n"
    write_atomically(path, lambda temporary: temporary.write_text(text))
