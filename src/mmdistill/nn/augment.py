"""Differentiable siamese augmentation (DSA), shared by distillation and evaluation.

As in DSA, each call draws ONE transform family at random (color, crop, cutout, scale,
rotate, and flip where enabled) and applies it with per-image random parameters.
Passing the same `seed` replays the same draw, so real and synthetic batches can be
augmented alike. Everything is differentiable w.r.t. the input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class DifferentiableAugment:
    def __init__(self, flip: bool = False, brightness=1.0, saturation=2.0, contrast=0.5, crop=0.125,
                 cutout=0.5, scale=1.2, rotate=15.0):
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast
        self.crop, self.cutout, self.scale, self.rotate = crop, cutout, scale, rotate
        self.families = ["color", "crop", "cutout", "scale", "rotate"] + (["flip"] if flip else [])

    def __call__(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed)
        n = x.shape[0]

        def rand(*shape):
            return torch.rand(*shape, generator=gen).to(x.device)

        family = self.families[int(torch.randint(len(self.families), (1,), generator=gen))]
        if family == "color":
            x = x + (rand(n, 1, 1, 1) - 0.5) * self.brightness
            if x.shape[1] > 1:
                mean = x.mean(dim=1, keepdim=True)
                x = (x - mean) * (rand(n, 1, 1, 1) * self.saturation) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - mean) * (rand(n, 1, 1, 1) + self.contrast) + mean
        if family == "cutout":
            return self._cutout(x, rand)
        ones, zeros = torch.ones(n, device=x.device), torch.zeros(n, device=x.device)
        sx = sy = ones
        theta, tx, ty = zeros, zeros, zeros
        if family == "scale":
            sx = rand(n) * (self.scale - 1 / self.scale) + 1 / self.scale
            sy = rand(n) * (self.scale - 1 / self.scale) + 1 / self.scale
        elif family == "rotate":
            theta = (rand(n) - 0.5) * 2 * math.radians(self.rotate)
        elif family == "crop":  # translation by up to `crop` of the side, in grid units (side = 2)
            tx = (rand(n) - 0.5) * 4 * self.crop
            ty = (rand(n) - 0.5) * 4 * self.crop
        elif family == "flip":
            sx = torch.where(rand(n) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(theta), torch.sin(theta)
        mat = torch.stack([torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)], 1)
        grid = F.affine_grid(mat, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def _cutout(self, x, rand):
        """Zero a square of side `cutout` x image side, centred at a random point."""
        n, _, h, w = x.shape
        ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
        cy = (rand(n) * (h + 1 - ch % 2)).long() - ch // 2
        cx = (rand(n) * (w + 1 - cw % 2)).long() - cw // 2
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((ys >= cy.view(n, 1, 1)) & (ys < (cy + ch).view(n, 1, 1)) &
                  (xs >= cx.view(n, 1, 1)) & (xs < (cx + cw).view(n, 1, 1)))
        return x * (~inside).unsqueeze(1).to(x.dtype)
