"""torch.compile on DM's step: eager vs compiled ConvNet-3 embedding -> benchmarks/speed_compile.md

    python -m benchmarks.speed_compile [--iterations N]

Same setting as benchmarks/speed.py (Fashion-MNIST, IPC 10, 256 real per class, DSA, a fresh ConvNet-3 per
iteration, the engine's batched DM loss). The compiled variant wraps `net.embed` with torch.compile (inductor,
default mode); its first iteration includes compilation and is reported separately.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks.speed import CLASSES, datasets
from stages.augment import DifferentiableAugment
from stages.io import save_text
from stages.matching import class_means
from stages.nets import make_net
from stages.params import versions


def dm_step(embed, real, syn, opt):
    with torch.no_grad():
        real_means = class_means(embed(real), CLASSES)
    loss = ((real_means - class_means(embed(syn), CLASSES)) ** 2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def run(real, syn0, iterations: int, compiled: bool) -> tuple[float, float]:
    """-> (seconds of the first iteration, iterations/s over the rest)."""
    augment = DifferentiableAugment(flip=False)
    syn = syn0.clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    times = []
    for it in range(iterations + 1):
        torch.manual_seed(it)
        net = make_net("convnet3", real.shape[1], CLASSES, real.shape[2]).requires_grad_(False)
        embed = torch.compile(net.embed) if compiled else net.embed
        start = time.perf_counter()
        dm_step(embed, augment(real, it), augment(syn, it), opt)
        times.append(time.perf_counter() - start)
    return times[0], iterations / sum(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    real, syn = datasets()["Fashion-MNIST 28x28x1"]
    rows = []
    for compiled in (False, True, False, True):
        load = os.getloadavg()[0]
        first, rate = run(real, syn, args.iterations, compiled)
        rows.append(f"| {'compiled' if compiled else 'eager'} | {first:.1f} | {rate:.3f} | {load:.2f} |")
        print(rows[-1], flush=True)
    lines = ["# torch.compile on DM's step", "",
             f"Command: `python -m benchmarks.speed_compile --iterations {args.iterations}`, {os.cpu_count()} CPU "
             f"cores, torch {versions()['torch']}, {torch.get_num_threads()} threads; Fashion-MNIST 28x28, IPC 10, "
             "256 real per class, DSA, fresh ConvNet-3 per iteration, batched DM loss; two alternating rounds.", "",
             "| variant | first iteration (s, incl. compile) | later iterations (it/s) | load before |",
             "|---|---|---|---|", *rows, ""]
    save_text("\n".join(lines), "benchmarks/speed_compile.md")


if __name__ == "__main__":
    main()
