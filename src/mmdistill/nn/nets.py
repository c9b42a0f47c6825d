"""The network zoo, sized by input resolution and channels.

    make_net(name, channels, classes, image_size) -> nn.Module with .embed(x) (flat penultimate
    features) and forward(x) (logits)

Names (append `:NORM` to choose the norm layer, e.g. `resnet18:instance`, `convnet3:batch`):

| name                | network                                                      | default norm |
|---------------------|--------------------------------------------------------------|--------------|
| convnet             | ConvNet, depth from resolution (3 at 28/32, 4 at 64, 5 at 128, 6 at 256) | instance |
| convnet3 … convnet6 | ConvNet of that depth: [conv3x3(128) -> norm -> ReLU -> avgpool 2] x depth, linear; at 28 px the last pool takes a 7 px map to 3 (1152 features) | instance |
| convnet_pad32, convnet3_pad32 … | the DC/DM code base's form: a 28 px input padded to 32 by the first conv (padding 3), so maps of 32/16/8 px and 2048 features; ~30-40 % more compute than convnetN at 28 px, the same network at other sizes | instance |
| resnet18            | ResNet-18 (BasicBlock 2-2-2-2); 3x3 stem below 128 px, 7x7/2 stem + maxpool from 128 px | batch |
| vgg11               | VGG-11 (8 conv + linear), first conv padded so 28 px becomes 32 | batch |
| alexnet             | the small-input AlexNet of the DC line of work (5 conv, 3 max-pools, linear) | none |
| vit                 | small ViT: patch max(4, size // 8), dim 256, 6 layers, 8 heads, MLP 512, class token | layer |

Norms: instance (GroupNorm with one group per channel, affine), batch, layer (GroupNorm with one group),
none. The ViT only takes `layer`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mmdistill.core.storage import PipelineError

NORMS = ("instance", "batch", "layer", "none")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "layer":
        return nn.GroupNorm(1, width, affine=True)
    if kind == "none":
        return nn.Identity()
    raise PipelineError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")


class ConvNet(nn.Module):
    """depth x [conv3x3(width) -> norm -> ReLU -> avgpool 2], then a linear classifier. `pad_28_to_32`: a 28 px
    input is padded to 32 by the first conv (padding 3), as the DC/DM code base does for the MNIST family."""

    def __init__(self, channels: int, classes: int, image_size: int, width: int = 128, depth: int = 3,
                 norm: str = "instance", pad_28_to_32: bool = False):
        super().__init__()
        if image_size >> depth < 1:
            raise PipelineError(f"ConvNet of depth {depth} needs images of at least {2 ** depth} px, got {image_size}")
        pad_first = 3 if pad_28_to_32 and image_size == 28 else 1
        layers, c, size = [], channels, image_size + 2 * (pad_first - 1)
        for d in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=pad_first if d == 0 else 1), _norm(norm, width),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            c, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def convnet_depth(image_size: int) -> int:
    """3 at 28/32 px, 4 at 64, 5 at 128, 6 at 256: the final feature map stays about 4x4."""
    return max(1, round(math.log2(image_size)) - 2)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out))

    def forward(self, x):
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, channels: int, classes: int, image_size: int, norm: str = "batch"):
        super().__init__()
        if image_size >= 128:  # ImageNet stem: /4 before the blocks
            stem = [nn.Conv2d(channels, 64, 7, 2, 3, bias=False), _norm(norm, 64), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2, 1)]
        else:
            stem = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False), _norm(norm, 64), nn.ReLU(inplace=True)]
        blocks, c = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c, width, stride, norm), BasicBlock(width, width, 1, norm)]
            c = width
        self.features = nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(512, classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


class VGG11(nn.Module):
    PLAN = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, channels: int, classes: int, image_size: int, norm: str = "batch"):
        super().__init__()
        pad_first = 3 if image_size == 28 else 1  # 28 px (MNIST family) -> 32 px, as in the DC code base
        layers, c, size = [], channels, image_size + 2 * (pad_first - 1)
        for item in self.PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                layers += [nn.Conv2d(c, item, 3, padding=pad_first if not layers else 1), _norm(norm, item),
                           nn.ReLU(inplace=True)]
                c = item
        if size < 1:
            raise PipelineError(f"vgg11 needs images of at least 32 px, got {image_size}")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 * size * size, classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


class AlexNet(nn.Module):
    """conv5(128) pool conv5(192) pool conv3(256) conv3(192) conv3(192) pool, linear; 28 px padded to 32."""

    def __init__(self, channels: int, classes: int, image_size: int, norm: str = "none"):
        super().__init__()
        pad_first = 4 if image_size == 28 else 2
        plan = ((channels, 128, 5, pad_first, True), (128, 192, 5, 2, True), (192, 256, 3, 1, False),
                (256, 192, 3, 1, False), (192, 192, 3, 1, True))
        layers, size = [], image_size + 2 * pad_first - 4
        for c_in, c_out, k, pad, pool in plan:
            layers += [nn.Conv2d(c_in, c_out, k, padding=pad), _norm(norm, c_out), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        if size < 1:
            raise PipelineError(f"alexnet needs images of at least 8 px, got {image_size}")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(192 * size * size, classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


class ViT(nn.Module):
    """Patch embedding + class token + learned positions, pre-norm transformer encoder."""

    def __init__(self, channels: int, classes: int, image_size: int, norm: str = "layer", dim: int = 256,
                 depth: int = 6, heads: int = 8, mlp: int = 512):
        super().__init__()
        if norm != "layer":
            raise PipelineError(f"vit takes only norm 'layer', got {norm!r}")
        patch = max(4, image_size // 8)
        if image_size % patch:
            raise PipelineError(f"vit: image size {image_size} is not a multiple of its patch size {patch}")
        self.patches = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, classes)

    def embed(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.norm(self.encoder(tokens)[:, 0])

    def forward(self, x):
        return self.classifier(self.embed(x))


def _convnet(depth: int | None, pad_28_to_32: bool = False):
    return lambda c, k, size, norm: ConvNet(c, k, size, depth=depth or convnet_depth(size), norm=norm,
                                            pad_28_to_32=pad_28_to_32)


# name -> (builder(channels, classes, image_size, norm), default norm)
NETWORKS = {
    "convnet": (_convnet(None), "instance"),
    **{f"convnet{d}": (_convnet(d), "instance") for d in (3, 4, 5, 6)},
    "convnet_pad32": (_convnet(None, pad_28_to_32=True), "instance"),
    **{f"convnet{d}_pad32": (_convnet(d, pad_28_to_32=True), "instance") for d in (3, 4, 5, 6)},
    "resnet18": (ResNet18, "batch"),
    "vgg11": (VGG11, "batch"),
    "alexnet": (AlexNet, "none"),
    "vit": (ViT, "layer"),
}


def make_net(name: str, channels: int, classes: int, image_size: int) -> nn.Module:
    """`name` is an architecture of NETWORKS, optionally `:norm` (e.g. `resnet18:instance`)."""
    arch, _, norm = name.partition(":")
    if arch not in NETWORKS:
        raise PipelineError(f"unknown network {name!r}; valid: {', '.join(NETWORKS)} "
                            f"(optionally with :norm, norm one of {', '.join(NORMS)})")
    builder, default_norm = NETWORKS[arch]
    if norm and norm not in NORMS:
        raise PipelineError(f"unknown norm {norm!r} in network {name!r}; valid: {', '.join(NORMS)}")
    return builder(channels, classes, image_size, norm or default_norm)
