"""Differentiable siamese augmentation (DSA), shared by distillation and evaluation.

The same random transform parameters can be replayed on real and synthetic batches
(`seed` argument), as DSA requires. Everything is differentiable w.r.t. the input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class DifferentiableAugment:
    """color (brightness, saturation, contrast) + crop (translate) + cutout + scale + rotate [+ flip]."""

    def __init__(self, flip: bool = False, brightness=1.0, saturation=2.0, contrast=0.5, crop=0.125,
                 cutout=0.5, scale=1.2, rotate=15.0):
        self.flip, self.brightness, self.saturation, self.contrast = flip, brightness, saturation, contrast
        self.crop, self.cutout, self.scale, self.rotate = crop, cutout, scale, rotate

    def __call__(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed)
        n, dev = x.shape[0], x.device

        def rand(*shape):
            return torch.rand(*shape, generator=gen).to(dev)

        x = x + (rand(n, 1, 1, 1) - 0.5) * self.brightness
        if x.shape[1] > 1:
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (rand(n, 1, 1, 1) * self.saturation) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (rand(n, 1, 1, 1) + self.contrast) + mean

        # one affine grid for scale, rotation and translation
        sx = (rand(n) - 0.5) * 2 * (self.scale - 1) + 1
        sy = (rand(n) - 0.5) * 2 * (self.scale - 1) + 1
        theta = (rand(n) - 0.5) * 2 * math.radians(self.rotate)
        tx = (rand(n) - 0.5) * 2 * self.crop * 2
        ty = (rand(n) - 0.5) * 2 * self.crop * 2
        cos, sin = torch.cos(theta), torch.sin(theta)
        mat = torch.stack([torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)], 1)
        if self.flip:
            sign = torch.where(rand(n) < 0.5, -1.0, 1.0)
            mat[:, 0, :2] = mat[:, 0, :2] * sign[:, None]
        grid = F.affine_grid(mat, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)

        # cutout: zero a square of side `cutout` * size at a random place
        h, w = x.shape[2:]
        ch, cw = int(h * self.cutout / 2), int(w * self.cutout / 2)
        cy = (rand(n) * (h - ch)).long()
        cx = (rand(n) * (w - cw)).long()
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        keep = ~(((ys >= cy.view(n, 1, 1)) & (ys < (cy + ch).view(n, 1, 1))) &
                 ((xs >= cx.view(n, 1, 1)) & (xs < (cx + cw).view(n, 1, 1))))
        return x * keep.unsqueeze(1).to(x.dtype)
