"""Reference implementations of the matching losses: one class at a time, plain autograd.

Not used by any stage. They define what the batched losses of mmdistill.distill.losses compute
(tests/test_engine.py checks that both agree) and are the baseline of the speed benchmark
(`python -m benchmarks.run speed`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distribution_gap_loop(net, real: torch.Tensor, syn: torch.Tensor, classes: int) -> torch.Tensor:
    """DM's loss the plain way: one class at a time."""
    nr, ns = len(real) // classes, len(syn) // classes
    total = 0.0
    for c in range(classes):
        with torch.no_grad():
            real_mean = net.embed(real[c * nr:(c + 1) * nr]).mean(0)
        total = total + ((real_mean - net.embed(syn[c * ns:(c + 1) * ns]).mean(0)) ** 2).sum()
    return total


def gradient_match_loop(net, real: torch.Tensor, syn: torch.Tensor, classes: int) -> torch.Tensor:
    """DC's loss the plain way: per class, autograd gradients of real and synthetic images, then the
    layer-wise distance (1 - cosine per output unit, as in losses.layerwise_distance; 1-D parameters skipped)."""
    params = list(net.parameters())
    nr, ns = len(real) // classes, len(syn) // classes
    total = 0.0
    for c in range(classes):
        yr = torch.full((nr,), c, dtype=torch.long, device=real.device)
        ys = torch.full((ns,), c, dtype=torch.long, device=syn.device)
        g_real = torch.autograd.grad(F.cross_entropy(net(real[c * nr:(c + 1) * nr]), yr), params)
        g_syn = torch.autograd.grad(F.cross_entropy(net(syn[c * ns:(c + 1) * ns]), ys), params, create_graph=True)
        for gr, gs in zip(g_real, g_syn):
            if gr.dim() == 1:
                continue
            gr, gs = gr.detach().flatten(1), gs.flatten(1)
            norms = gr.norm(dim=1) * gs.norm(dim=1)
            total = total + ((norms - (gr * gs).sum(1)) / (norms + 1e-6)).sum()
    return total
