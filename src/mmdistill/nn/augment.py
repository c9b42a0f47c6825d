"""Differentiable siamese augmentation (DSA), shared by distillation, pretraining and evaluation.

Each call draws ONE transform family at random (color, crop, cutout, scale, rotate, and flip where enabled) from
its seed. `siamese=True` draws one parameter set for the whole call (DSA's form whenever a seed is given: the
real images of a class and its synthetic images get the very same transform, `per_class`); otherwise every image
gets its own parameters (DSA's form for training networks). Everything is differentiable w.r.t. the input.

The form of two transforms is a setting (params `dsa`, `from_params`): `crop` shift (DSA: a whole-pixel
translation by up to `crop` x the side, zero fill) | bilinear (the earlier form: a sub-pixel affine shift), and
`align_corners` for the scale/rotate sampling grids (DSA: true).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmdistill.core.config import BOOL, Str, param

CROPS = ("shift", "bilinear")
KEYS = {"crop": Str(*CROPS), "align_corners": BOOL}  # the schema of params `dsa`


class DifferentiableAugment:
    def __init__(self, flip: bool = False, crop_mode: str = "shift", align_corners: bool = True, brightness=1.0,
                 saturation=2.0, contrast=0.5, crop=0.125, cutout=0.5, scale=1.2, rotate=15.0):
        if crop_mode not in CROPS:
            raise ValueError(f"crop_mode must be one of {CROPS}, got {crop_mode!r}")
        self.crop_mode, self.align_corners = crop_mode, align_corners
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast
        self.crop, self.cutout, self.scale, self.rotate = crop, cutout, scale, rotate
        self.families = ["color", "crop", "cutout", "scale", "rotate"] + (["flip"] if flip else [])

    def __call__(self, x: torch.Tensor, seed: int | None = None, siamese: bool = False) -> torch.Tensor:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed)
        n = x.shape[0]
        draws = 1 if siamese else n

        def rand(*shape):
            return torch.rand(draws, *shape, generator=gen).to(x.device).expand(n, *shape)

        family = self.families[int(torch.randint(len(self.families), (1,), generator=gen))]
        if family == "color":
            x = x + (rand(1, 1, 1) - 0.5) * self.brightness
            if x.shape[1] > 1:
                mean = x.mean(dim=1, keepdim=True)
                x = (x - mean) * (rand(1, 1, 1) * self.saturation) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - mean) * (rand(1, 1, 1) + self.contrast) + mean
        if family == "cutout":
            return self._cutout(x, rand)
        if family == "crop" and self.crop_mode == "shift":
            return self._shift(x, gen, draws)
        ones, zeros = torch.ones(n, device=x.device), torch.zeros(n, device=x.device)
        sx = sy = ones
        theta, tx, ty = zeros, zeros, zeros
        if family == "scale":
            sx = rand() * (self.scale - 1 / self.scale) + 1 / self.scale
            sy = rand() * (self.scale - 1 / self.scale) + 1 / self.scale
        elif family == "rotate":
            theta = (rand() - 0.5) * 2 * math.radians(self.rotate)
        elif family == "crop":  # bilinear: translation by up to `crop` of the side, in grid units (side = 2)
            tx = (rand() - 0.5) * 4 * self.crop
            ty = (rand() - 0.5) * 4 * self.crop
        elif family == "flip":
            sx = torch.where(rand() < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(theta), torch.sin(theta)
        mat = torch.stack([torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)], 1)
        grid = F.affine_grid(mat, list(x.shape), align_corners=self.align_corners)
        return F.grid_sample(x, grid, align_corners=self.align_corners)

    def per_class(self, x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """`x` class-major in len(seeds) equal blocks; block c gets one transform drawn from seeds[c] (siamese)."""
        if x.shape[0] % len(seeds):
            raise ValueError(f"{x.shape[0]} images do not split into {len(seeds)} equal class blocks")
        return torch.cat([self(block, seed, siamese=True) for block, seed in zip(x.split(x.shape[0] // len(seeds)),
                                                                                  seeds)])

    def _shift(self, x, gen, draws):
        """Translate by whole pixels, at most round(crop x side) each way, filling with zeros."""
        n, _, h, w = x.shape
        py, px = int(h * self.crop + 0.5), int(w * self.crop + 0.5)
        ty = torch.randint(-py, py + 1, (draws,), generator=gen).expand(n).to(x.device)
        tx = torch.randint(-px, px + 1, (draws,), generator=gen).expand(n).to(x.device)
        padded = F.pad(x, (px, px, py, py))
        rows = (torch.arange(h, device=x.device) + py).unsqueeze(0) + ty.unsqueeze(1)  # n x h
        cols = (torch.arange(w, device=x.device) + px).unsqueeze(0) + tx.unsqueeze(1)  # n x w
        batch = torch.arange(n, device=x.device).view(n, 1, 1)
        return padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)

    def _cutout(self, x, rand):
        """Zero a square of side `cutout` x image side, centred at a random point."""
        n, _, h, w = x.shape
        ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
        cy = (rand() * (h + 1 - ch % 2)).long() - ch // 2
        cx = (rand() * (w + 1 - cw % 2)).long() - cw // 2
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((ys >= cy.view(n, 1, 1)) & (ys < (cy + ch).view(n, 1, 1)) &
                  (xs >= cx.view(n, 1, 1)) & (xs < (cx + cw).view(n, 1, 1)))
        return x * (~inside).unsqueeze(1).to(x.dtype)


def from_params(params: dict, flip: bool) -> DifferentiableAugment:
    """DSA in the form params `dsa` sets."""
    return DifferentiableAugment(flip=flip, crop_mode=param(params, "dsa.crop", str),
                                 align_corners=param(params, "dsa.align_corners", bool))
