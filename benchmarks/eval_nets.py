"""Training cost of each evaluation network on this machine -> benchmarks/eval_nets.md

    python -m benchmarks.eval_nets

One SGD step (forward, backward, update; no augmentation) on a batch of 100 random images,
the size of an IPC 10 set of 10 classes, at 28x28 greyscale and 32x32 colour, for every
architecture of mmdistill.nn.nets at its default norm. Reports single-thread CPU milliseconds per
image (process time, so that other jobs on a shared machine distort it less than wall time),
the ratio to ConvNet-3 and the projected CPU minutes of one `evaluate` run at IPC 10
(evaluate.epochs x evaluate.repeats passes over 100 images).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmdistill.core.config import load_params
from mmdistill.core.runtime import versions
from mmdistill.core.storage import save_text
from mmdistill.nn.nets import make_net

NETS = ["convnet3", "resnet18", "vgg11", "alexnet", "vit"]
BATCH, STEPS = 100, 5


def ms_per_image(name: str, channels: int, size: int) -> float:
    torch.manual_seed(0)
    net = make_net(name, channels, 10, size)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(BATCH, channels, size, size), torch.arange(BATCH) % 10
    times = []
    for _ in range(STEPS + 1):  # the first step warms up
        start = time.process_time()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.process_time() - start)
    return 1000 * min(times[1:]) / BATCH


def main() -> None:
    torch.set_num_threads(1)
    params = load_params()
    epochs, repeats = params["evaluate"]["epochs"], params["evaluate"]["repeats"]
    load = os.getloadavg()[0]
    lines = ["# Evaluation network cost", "",
             f"Command: `python -m benchmarks.eval_nets` ({os.cpu_count()} CPU cores, torch {versions()['torch']}, "
             f"1 thread, CPU time, load average {load:.1f} at the start; best of {STEPS} SGD steps on {BATCH} images, "
             f"no augmentation). Projected: CPU minutes of one `evaluate` run at IPC 10 with the default {epochs} "
             f"epochs x {repeats} repeats (DSA augmentation adds to this).", "",
             "| network | input | CPU ms per image | x ConvNet-3 | projected CPU minutes, IPC 10 |",
             "|---|---|---|---|---|"]
    for channels, size in ((1, 28), (3, 32)):
        base = None
        for name in NETS:
            ms = ms_per_image(name, channels, size)
            base = base or ms
            minutes = ms * BATCH * epochs * repeats / 60000
            lines.append(f"| {name} | {channels}x{size}x{size} | {ms:.2f} | {ms / base:.1f} | {minutes:.1f} |")
            print(lines[-1], flush=True)
    save_text("\n".join(lines) + "\n", Path("benchmarks/eval_nets.md"))


if __name__ == "__main__":
    main()
