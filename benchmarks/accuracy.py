"""Fashion-MNIST accuracy of random, dc, dsa, dm, dsdm at reduced CPU budgets -> benchmarks/accuracy.md

    python -m stages.prepare && python -m benchmarks.accuracy

Runs in a scratch directory (SCRATCH) holding a reduced copy of data/prepared: the first TRAIN_PER_CLASS
train, VAL_PER_CLASS val and TEST_PER_CLASS test images of each class. There it runs the stage
functions (pretrain, distill, evaluate) in-process with BUDGETS laid over params.yaml, and writes
the table, beside the DSDM paper's Table 1 (ConvNet-3, full budgets), after every result.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from stages import distill, evaluate, pretrain
from stages.io import save_text
from stages.params import load_params, versions

IPCS = (1, 10)
METHODS = ("random", "dc", "dsa", "dm", "dsdm")
RUNS = [(m, 1) for m in METHODS] + [(m, 10) for m in METHODS]  # IPC 1 first: the IPC 10 rows cost most
SCRATCH = Path("/tmp/accuracy-benchmark")
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 200, 10, 100
PAPER = {"random": (51.4, 73.8, 82.5), "dc": (70.5, 82.3, 83.6), "dsa": (70.6, 84.6, 88.7),
         "dm": (70.7, 83.5, 88.1), "dsdm": (80.8, 87.3, 88.9)}  # DSDM paper, Table 1, IPC 1/10/50
BUDGETS = {  # param -> value in distill.{method}, per (method, ipc); None = any IPC
    ("dc", 1): {"iterations": 10, "batch_real": 16},
    ("dc", 10): {"iterations": 2, "batch_real": 16, "outer_loop": 10, "inner_loop": 5},
    ("dm", None): {"iterations": 40, "batch_real": 16},
    ("dsdm", None): {"iterations": 40, "batch_real": 16},
}
BUDGETS[("dsa", 1)], BUDGETS[("dsa", 10)] = BUDGETS[("dc", 1)], BUDGETS[("dc", 10)]
PRETRAIN = {"models": 3, "epochs": 1}
EVALUATE = {"epochs": 50, "repeats": 2}


def reduced_copy(source: Path, target: Path) -> None:
    """The first N images of each class of every split of `source`, written to `target` (same metadata)."""
    import pyarrow as pa
    from stages.io import read_parquet, read_parquet_metadata, write_parquet
    shutil.rmtree(target, ignore_errors=True)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS), ("test", TEST_PER_CLASS)):
        table = read_parquet(source / split)
        labels = table["label"].to_numpy()
        keep = sorted(i for c in sorted(set(labels.tolist())) for i in np.flatnonzero(labels == c)[:per_class])
        write_parquet(table.take(pa.array(keep)), target / "data/prepared" / f"{split}-00000.parquet",
                      read_parquet_metadata(source / split))


def budget(method: str, ipc: int) -> dict:
    return BUDGETS.get((method, ipc), BUDGETS.get((method, None), {}))


def table(results: dict, timings: dict, base: dict) -> str:
    lines = ["# Fashion-MNIST accuracy at reduced CPU budgets, beside the DSDM paper's Table 1", "",
             f"Command: `python -m stages.prepare && python -m benchmarks.accuracy` ({os.cpu_count()} CPU cores "
             f"shared with 4 other agents' jobs, load average above 8; torch {versions()['torch']}). "
             f"Wall time so far: {sum(timings.values()) / 60:.1f} minutes.", "",
             f"Ours: ConvNet-3; data: the first {TRAIN_PER_CLASS} train, {VAL_PER_CLASS} val and {TEST_PER_CLASS} "
             f"test images per class of the prepared Fashion-MNIST; test accuracy (%) mean ± std over "
             f"{EVALUATE['repeats']} evaluation networks trained {EVALUATE['epochs']} epochs on the synthetic set "
             "(SGD momentum 0.9, lr 0.01 x0.1 at half, DSA). Budgets not listed are params.yaml's. "
             "Paper: 60k train images, 10k test, DC/DSA 1000 outer iterations with DC's loops, DM 20k and DSDM 10k "
             "iterations, 256 real images per class, pool of 10 nets x 20 epochs, 1000 evaluation epochs.", "",
             "| method | IPC | ours (%) | paper (%) | our distillation budget | distill s | evaluate s |",
             "|---|---|---|---|---|---|---|"]
    for method, ipc in RUNS:
        if (method, ipc) not in results:
            continue
        r = results[(method, ipc)]
        b = ", ".join(f"{k} {v}" for k, v in budget(method, ipc).items()) or "-"
        if method == "dsdm":
            b += f"; pool of {PRETRAIN['models']} nets x {PRETRAIN['epochs']} epoch ({timings['pretrain']:.0f} s)"
        lines.append(f"| {method} | {ipc} | {r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} | "
                     f"{PAPER[method][IPCS.index(ipc)]} | {b} | {timings[(method, ipc, 'distill')]:.0f} | "
                     f"{timings[(method, ipc, 'evaluate')]:.0f} |")
    missing = [f"{m} IPC {k}" for m, k in RUNS if (m, k) not in results]
    if missing:
        lines += ["", "Not run (out of time on the shared CPU): " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path("benchmarks/accuracy.md").resolve()
    base = load_params()
    base["pretrain"].update(PRETRAIN)
    base["evaluate"].update(EVALUATE)
    reduced_copy(Path("data/prepared").resolve(), SCRATCH)
    os.chdir(SCRATCH)
    timings, results = {}, {}
    start = time.perf_counter()
    pretrain.pretrain(base)
    timings["pretrain"] = time.perf_counter() - start
    for method, ipc in RUNS:
        params = copy.deepcopy(base)
        params["distill"][method].update(budget(method, ipc))
        start = time.perf_counter()
        distill.distill(method, ipc, params)
        timings[(method, ipc, "distill")] = time.perf_counter() - start
        start = time.perf_counter()
        results[(method, ipc)] = evaluate.evaluate(method, ipc, params)
        timings[(method, ipc, "evaluate")] = time.perf_counter() - start
        r = results[(method, ipc)]
        print(f"{method} ipc{ipc}: {r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} "
              f"(distill {timings[(method, ipc, 'distill')]:.0f}s, evaluate "
              f"{timings[(method, ipc, 'evaluate')]:.0f}s)", flush=True)
        save_text(table(results, timings, base), out)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
