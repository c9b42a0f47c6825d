"""DM and DC iterations per second: the engine's batched losses vs a plain per-class loop -> benchmarks/speed.md

    python -m benchmarks.speed      # needs `python -m stages.prepare` first

Both sides compute the same loss (tests/test_engine.py checks they agree) on the same data,
networks and augmentation: DM at the DM paper's setting (IPC 10, 256 real images per class,
DSA), DC at the DC paper's (IPC 10, 256 real images per class, one matching step = one pixel
update; DC's outer iteration at IPC 10 is 10 of them plus 9 x 50 network epochs on the synthetic set,
which the engine does not change).
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stages.augment import DifferentiableAugment
from stages.data import load_split
from stages.io import save_text
from stages.matching import distribution_gap, gradient_match
from stages.nets import make_net
from stages.params import versions

CLASSES, IPC, BATCH_REAL, ROUNDS = 10, 10, 256, 2


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
    layer-wise distance (1 - cosine per output unit, as in stages.matching; 1-D parameters skipped)."""
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


def iterations_per_second(loss_fn, real, syn0, repeats: int, augment) -> float:
    """Time `repeats` pixel updates (fresh ConvNet-3, augmentation, loss, backward, SGD step)."""
    syn = syn0.clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    start = time.perf_counter()
    for it in range(repeats):
        torch.manual_seed(it)
        net = make_net("convnet3", real.shape[1], CLASSES, real.shape[2])
        loss = loss_fn(net, augment(real, it), augment(syn, it), CLASSES)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return repeats / (time.perf_counter() - start)


def main() -> None:
    train = load_split("train")
    images = train.normalized()
    order = torch.argsort(train.labels, stable=True)
    per_class = len(order) // CLASSES
    real = torch.cat([images[order[c * per_class:c * per_class + BATCH_REAL]] for c in range(CLASSES)])
    first = [c * per_class for c in range(CLASSES)]
    syn = torch.cat([images[order[f + BATCH_REAL:f + BATCH_REAL + IPC]] for f in first])
    augment = DifferentiableAugment()
    lines = ["# Distillation iteration speed: engine (batched) vs per-class loop", "",
             f"Command: `python -m benchmarks.speed` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPU cores shared with other jobs, torch {versions()['torch']}, "
             f"{torch.get_num_threads()} threads. Fashion-MNIST 28x28x1, ConvNet-3 (width 128, instance norm), "
             f"IPC {IPC}, {BATCH_REAL} real images per class, DSA. One iteration = fresh network + loss + "
             f"backward + one SGD step on the pixels; best of {ROUNDS} alternating rounds.", "",
             "| loss | per-class loop (it/s) | engine (it/s) | speed-up |", "|---|---|---|---|"]
    for name, loop, batched, repeats in (("DM", distribution_gap_loop, distribution_gap, 2),
                                          ("DC", gradient_match_loop, gradient_match, 1)):
        rates = {"loop": [], "engine": []}
        for _ in range(ROUNDS):  # alternate, so both see the same background load
            rates["loop"].append(iterations_per_second(loop, real, syn, repeats, augment))
            rates["engine"].append(iterations_per_second(batched, real, syn, repeats, augment))
        loop_rate, engine_rate = (max(rates[k]) for k in ("loop", "engine"))
        lines.append(f"| {name} | {loop_rate:.3f} | {engine_rate:.3f} | {engine_rate / loop_rate:.2f}x |")
        print(lines[-1], rates, flush=True)
    save_text("\n".join(lines) + "\n", Path("benchmarks/speed.md"))


if __name__ == "__main__":
    main()
