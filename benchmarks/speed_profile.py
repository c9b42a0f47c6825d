"""Profile one DM or DC iteration (engine or per-class loop) with torch.profiler -> the table in benchmarks/speed.md

    python -m benchmarks.speed_profile dm_loop|dm_engine|dc_loop|dc_vmap [channels: 1 (28x28) | 3 (32x32)]

Random images at the papers' setting (10 classes x 256 real, IPC 10), DSA, a fresh ConvNet-3; one warm-up
iteration, then one profiled. Prints ops by self CPU time.
"""
from __future__ import annotations

import sys
import time
from functools import partial

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.speed import (
    BATCH_REAL,
    CLASSES,
    IPC,
    distribution_gap_loop,
    gradient_match_loop,
)
from mmdistill.distill.losses import distribution_gap, gradient_match
from mmdistill.nn.augment import DifferentiableAugment
from mmdistill.nn.nets import make_net

LOSSES = {"dm_loop": distribution_gap_loop, "dm_engine": distribution_gap, "dc_loop": gradient_match_loop,
          "dc_engine": gradient_match, "dc_vmap": partial(gradient_match, how="vmap")}


def main() -> None:
    name, channels = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    size = 28 if channels == 1 else 32
    real = torch.randn(CLASSES * BATCH_REAL, channels, size, size)
    syn0 = torch.randn(CLASSES * IPC, channels, size, size)
    augment = DifferentiableAugment()

    def iteration(i: int) -> None:
        torch.manual_seed(i)
        net = make_net("convnet3", channels, CLASSES, size)
        syn = syn0.clone().requires_grad_(True)
        LOSSES[name](net, augment(real, i), augment(syn, i), CLASSES).backward()

    iteration(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        iteration(1)
        print(f"{name}: {time.perf_counter() - start:.2f} s/iteration")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main()
