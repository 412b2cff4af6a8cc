"""The CIFAR ResNet of He et al. (2016), depth 6n+2 (ResNet-32: n=5), as used by Meta-Weight-Net and CurveNet."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from curvenet_dist.config import check_cifar_resnet_depth
from curvenet_dist.models.staged import ClassifierHead, StagedNet


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        # He et al.'s option A: subsample and zero-pad channels, no parameters.
        if self.stride == 1 and self.extra_channels == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def cifar_resnet(depth: int, num_classes: int, width: int = 16) -> StagedNet:
    check_cifar_resnet_depth(depth)
    blocks_per_stage = (depth - 2) // 6
    stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    stages, channels = [], width
    for stage_index in range(3):
        out_channels = width * 2**stage_index
        blocks = []
        for block_index in range(blocks_per_stage):
            stride = 2 if stage_index > 0 and block_index == 0 else 1
            blocks.append(BasicBlock(channels, out_channels, stride))
            channels = out_channels
        stages.append(nn.Sequential(*blocks))
    net = StagedNet(stem, stages, ClassifierHead(channels, num_classes))
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
    return net
