"""ResNet-50 from timm as a StagedNet: stem (conv1, bn1, act, maxpool), layer1-4, head (pool, fc).

Weights come only from a local file (`model.weights`), never from a hub.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from curvenet_dist.config import ConfigError
from curvenet_dist.models.staged import StagedNet


def load_local_weights(model: nn.Module, path: Path) -> None:
    """Load a timm-layout state dict; a classifier of another class count is left freshly initialised."""
    if not path.is_file():
        raise ConfigError(f"model.weights={path}: no such file (weights are only read from local files)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    own = model.state_dict()
    mismatched = [key for key in ("fc.weight", "fc.bias") if key in state and state[key].shape != own[key].shape]
    for key in mismatched:
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexplained = [key for key in missing if key not in mismatched]
    if unexplained or unexpected:
        raise ConfigError(f"model.weights={path} does not fit {type(model).__name__}: missing {unexplained[:5]}, "
                          f"unexpected {unexpected[:5]}")


def timm_resnet(name: str, num_classes: int, weights: str = "") -> StagedNet:
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if weights:
        load_local_weights(model, Path(weights))
    stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    return StagedNet(stem, stages, nn.Sequential(model.global_pool, model.fc))
