"""Backbones shared by methods: a CIFAR-style ResNet-18 (3x3 stem, no max-pool) built from timm."""
from __future__ import annotations

import torch
from torch import nn


def cifar_resnet(num_classes: int, in_chans: int = 3, width: int = 64, layers: tuple[int, ...] = (2, 2, 2, 2)) -> nn.Module:
    """ResNet-18 layout (BasicBlock, [2,2,2,2]) with the CIFAR stem; ``width``/``layers`` shrink the stages for tests.

    timm's ResNet gives the blocks; we swap its ImageNet stem (7x7 stride-2 conv + max-pool) for
    the 3x3 stride-1 conv CIFAR ResNets use, which keeps 32x32 (and 8x8) inputs at full resolution.
    """
    from timm.models.resnet import BasicBlock, ResNet

    channels = tuple(width * 2 ** i for i in range(len(layers)))
    model = ResNet(BasicBlock, list(layers), num_classes=num_classes, in_chans=in_chans, stem_width=width,
                   channels=channels)
    stem = model.bn1.num_features  # timm keeps a 64-wide stem for this stem type whatever the stages are
    model.conv1 = nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the convention of every model in the suite)."""
    return x_uint8.float().div_(127.5).sub_(1.0)
