"""Cross-architecture evaluation of one distilled set on this machine -> benchmarks/cross_arch.md

    python -m mmdistill.data.sources && python -m mmdistill.distill.methods --method random --ipc 10
    python -m benchmarks.cross_arch random 10 50     # method, IPC, epochs (1 repeat)

Runs mmdistill.evaluate.classification.evaluate with evaluate.nets = every architecture of the zoo at its default
norm and a reduced budget, and records accuracy and wall time per network. A smoke test of the
zoo on real data, not a paper comparison (the papers train 1000+ epochs, 5 repeats).
"""
from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

from mmdistill.core.config import load_params
from mmdistill.core.runtime import versions
from mmdistill.core.storage import save_text
from mmdistill.data.datasets import dataset_info
from mmdistill.evaluate.classification import evaluate

NETS = ["convnet3", "alexnet", "vgg11", "resnet18", "vit"]


def main() -> None:
    method, ipc, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    params = load_params()
    info = dataset_info()
    lines = [f"# Cross-architecture evaluation: {method}, IPC {ipc}, {info['name']}", "",
             f"Command: `python -m benchmarks.cross_arch {method} {ipc} {epochs}` ({os.cpu_count()} CPU cores shared "
             f"with other jobs, load average {os.getloadavg()[0]:.1f} at the start, torch {versions()['torch']}). "
             f"{epochs} epochs, 1 repeat, otherwise the `evaluate` params (DSA {params['evaluate']['augment']}).", "",
             "| network | test accuracy (%) | val accuracy (%) | wall time (s) |", "|---|---|---|---|"]
    for name in NETS:
        p = copy.deepcopy(params)
        p["evaluate"].update(nets=[name], epochs=epochs, repeats=1)
        start = time.perf_counter()
        m = evaluate(method, ipc, p)[0][name]
        lines.append(f"| {name} | {m['test_accuracy_mean']:.2f} | {m['val_accuracy_mean']:.2f} | "
                     f"{time.perf_counter() - start:.0f} |")
        print(lines[-1], flush=True)
    save_text("\n".join(lines) + "\n", Path("benchmarks/cross_arch.md"))


if __name__ == "__main__":
    main()
