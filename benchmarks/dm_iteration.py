"""Cost of one DM iteration at IPC 10 on this machine -> benchmarks/dm_iteration.md

    python -m benchmarks.dm_iteration      # needs `dvc repro prepare` first

Times distill.dm at the default real batch (params.yaml) and the paper's 256 real images per
class, 10 classes, ConvNet-3, DSA, all classes in one forward pass.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch

from mmdistill.core.config import load_params
from mmdistill.core.runtime import versions
from mmdistill.core.storage import save_text
from mmdistill.data.datasets import load_split
from mmdistill.distill.methods import distribution_matching, random_selection

ITERATIONS = 5


def main() -> None:
    params = load_params()
    train = load_split("train")
    init = random_selection(train, 10, 0)
    lines = ["# DM iteration cost, IPC 10", "", f"Command: `python -m benchmarks.dm_iteration` ({os.cpu_count()} CPU "
             f"cores, torch {versions()['torch']}, {torch.get_num_threads()} threads, {ITERATIONS} iterations each).",
             "", "| real images per class | seconds per iteration |", "|---|---|"]
    for batch_real in (params["distill"]["dm"]["batch_real"], 256):
        p = copy.deepcopy(params)
        p["distill"]["dm"].update(iterations=ITERATIONS, batch_real=batch_real)
        start = time.perf_counter()
        distribution_matching(train, init, p, "distill.dm", torch.device("cpu"), 0)
        lines.append(f"| {batch_real} | {(time.perf_counter() - start) / ITERATIONS:.2f} |")
        print(lines[-1], flush=True)
    save_text("\n".join(lines) + "\n", Path("benchmarks/dm_iteration.md"))


if __name__ == "__main__":
    main()
