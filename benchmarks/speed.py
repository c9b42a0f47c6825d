"""DM and DC iterations per second: the engine's losses vs a plain per-class loop -> benchmarks/speed.md

    python -m benchmarks.speed [--rounds 3]      # needs `python -m mmdistill.stages.prepare` first

Both sides compute the same loss (tests/test_engine.py checks they agree) on the same data, networks
and DSA augmentation, at the papers' setting: ConvNet-3, IPC 10, 256 real images per class, on
Fashion-MNIST (28x28 grey, the prepared train split) and on 32x32 colour images (random normal
pixels: no colour dataset is prepared here, and the time does not depend on pixel values). One
iteration = fresh network + augmentation + loss + backward + one SGD step on the synthetic pixels
(DC: one matching step; DC's outer iteration adds network training on the synthetic set, which the
engine runs with stages/train.py like any training). Each measurement starts with one untimed
iteration (for the compiled variant it includes compilation).

The engine's variants are its choices in `distill.engine`: the batched losses of stages/matching.py
(fp32), with `precision: bf16` (CPU autocast) and, for DM, `compile: inductor` (torch.compile of the
network's embedding, as stages/engine.py does), alone and together; DC's `class_gradients: vmap`. The CPU is shared with other jobs, so each
measurement records the 1-minute load average before and after it, rounds alternate between the
implementations, and the table shows medians over rounds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from mmdistill.core.runtime import versions
from mmdistill.core.storage import save_text
from mmdistill.data.datasets import load_split
from mmdistill.distill.losses import distribution_gap, gradient_match
from mmdistill.nn.augment import DifferentiableAugment
from mmdistill.nn.nets import make_net

CLASSES, IPC, BATCH_REAL = 10, 10, 256
HAND_WRITTEN = "## Profile and reading (written by hand)"


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


def with_bf16(loss_fn):
    def loss(net, real, syn, classes):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn(net, real, syn, classes)
    return loss


def with_compiled_embedding(loss_fn):
    def loss(net, real, syn, classes):
        net.embed = torch.compile(net.embed)
        return loss_fn(net, real, syn, classes)
    return loss


def iterations_per_second(loss_fn, real, syn0, repeats: int, augment, frozen: bool) -> float:
    """Time `repeats` pixel updates (fresh ConvNet-3, augmentation, loss, backward, SGD step) after one
    untimed update; `frozen`: the network's parameters need no gradient (DM)."""
    syn = syn0.clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    for it in range(repeats + 1):
        if it == 1:
            start = time.perf_counter()
        torch.manual_seed(it)
        net = make_net("convnet3", real.shape[1], CLASSES, real.shape[2]).requires_grad_(not frozen)
        loss = loss_fn(net, augment(real, it), augment(syn, it), CLASSES)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return repeats / (time.perf_counter() - start)


def load1() -> float:
    return os.getloadavg()[0]


def datasets() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Class-major real batches (256 per class) and synthetic sets (IPC 10) for both image kinds."""
    train = load_split("train")
    images = train.normalized()
    order = torch.argsort(train.labels, stable=True)
    per_class = len(order) // CLASSES
    real = torch.cat([images[order[c * per_class:c * per_class + BATCH_REAL]] for c in range(CLASSES)])
    syn = torch.cat([images[order[c * per_class + BATCH_REAL:c * per_class + BATCH_REAL + IPC]]
                     for c in range(CLASSES)])
    gen = torch.Generator().manual_seed(0)
    colour = (torch.randn(CLASSES * BATCH_REAL, 3, 32, 32, generator=gen),
              torch.randn(CLASSES * IPC, 3, 32, 32, generator=gen))
    return {"Fashion-MNIST 28x28x1": (real, syn), "colour 32x32x3": colour}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    augment = DifferentiableAugment()
    losses = (("DM", distribution_gap_loop, {"engine": distribution_gap, "engine, bf16": with_bf16(distribution_gap),
                                             "engine, compiled": with_compiled_embedding(distribution_gap),
                                             "engine, compiled, bf16": with_bf16(with_compiled_embedding(
                                                 distribution_gap))}, 2, True),
              ("DC", gradient_match_loop, {"engine": gradient_match, "engine, bf16": with_bf16(gradient_match),
                                           "engine, vmap": partial(gradient_match, how="vmap")}, 1, False))
    rows, raw = [], []
    for data_name, (real, syn) in datasets().items():
        for loss_name, loop, engines, repeats, frozen in losses:
            rates = {"loop": [], **{k: [] for k in engines}}
            for _ in range(args.rounds):  # alternate, so all see similar background load
                for impl, fn in (("loop", loop), *engines.items()):
                    before = load1()
                    rate = iterations_per_second(fn, real, syn, repeats, augment, frozen)
                    rates[impl].append(rate)
                    raw.append(f"| {data_name} | {loss_name} | {impl} | {rate:.3f} | {before:.2f} | {load1():.2f} |")
                    print(raw[-1], flush=True)
            loop_rate = statistics.median(rates["loop"])
            for impl in engines:
                rate = statistics.median(rates[impl])
                rows.append(f"| {data_name} | {loss_name} | {impl} | {loop_rate:.3f} | {rate:.3f} | "
                            f"{rate / loop_rate:.2f}x |")
    lines = ["# Distillation iteration speed: engine vs per-class loop", "",
             f"Command: `python -m benchmarks.speed --rounds {args.rounds}` on "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
             f"torch {versions()['torch']}, {torch.get_num_threads()} threads. ConvNet-3 (width 128, instance "
             f"norm), IPC {IPC}, {BATCH_REAL} real images per class, DSA. One iteration = fresh network + "
             f"augmentation + loss + backward + one SGD step on the pixels; medians of {args.rounds} alternating "
             f"rounds.", "",
             "| images | loss | engine variant | per-class loop (it/s) | engine (it/s) | speed-up |",
             "|---|---|---|---|---|---|",
             *rows, "", "Every measurement, with the 1-minute load average before and after it:", "",
             "| images | loss | implementation | it/s | load before | load after |", "|---|---|---|---|---|---|",
             *raw, ""]
    out = Path("benchmarks/speed.md")
    kept = out.read_text().partition(HAND_WRITTEN)  # the profile and reading, written by hand, survive reruns
    save_text("\n".join(lines) + (f"\n{HAND_WRITTEN}{kept[2]}" if kept[1] else ""), out)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
