"""The network zoo. ConvNet-3 is the standard dataset-distillation backbone."""
from __future__ import annotations

import torch
from torch import nn

from stages.io import PipelineError


class ConvNet(nn.Module):
    """depth x [conv3x3(width) -> instance norm -> ReLU -> avgpool 2], then a linear classifier."""

    def __init__(self, channels: int, classes: int, image_size: int, width: int = 128, depth: int = 3,
                 norm: str = "instance"):
        super().__init__()
        layers, c, size = [], channels, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), _norm(norm, width), nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            c, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "none":
        return nn.Identity()
    raise PipelineError(f"unknown norm {kind!r}; valid: instance, batch, none")


NETWORKS = {"convnet3": lambda channels, classes, size: ConvNet(channels, classes, size, depth=3)}


def make_net(name: str, channels: int, classes: int, image_size: int) -> nn.Module:
    if name not in NETWORKS:
        raise PipelineError(f"unknown network {name!r}; valid: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](channels, classes, image_size)
