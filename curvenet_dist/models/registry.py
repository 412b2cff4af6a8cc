"""Backbones by name. Every backbone is a StagedNet, so SLMO can split any of them."""
from __future__ import annotations

from collections.abc import Callable

from curvenet_dist.config import ConfigError, ModelConfig
from curvenet_dist.models.cifar_resnet import cifar_resnet
from curvenet_dist.models.staged import StagedNet


def _timm_resnet50(config: ModelConfig, num_classes: int) -> StagedNet:
    # timm (and the torchvision and dynamo modules it pulls in) costs ~10 s of CPU to import, in every rank:
    # only runs that use it pay.
    from curvenet_dist.models.timm_resnet import timm_resnet

    return timm_resnet("resnet50", num_classes, config.weights)


BACKBONES: dict[str, Callable[[ModelConfig, int], StagedNet]] = {
    "cifar_resnet": lambda config, num_classes: cifar_resnet(config.depth, num_classes, config.width),
    "resnet50": _timm_resnet50,
}


def build_backbone(config: ModelConfig, num_classes: int) -> StagedNet:
    if config.name not in BACKBONES:
        raise ConfigError(f"model.name={config.name!r} is not registered; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[config.name](config, num_classes)
