"""Fashion-MNIST accuracy at reduced CPU budgets, beside the DSDM paper's Table 1 -> a markdown table

    python -m mmdistill.data.sources && python -m benchmarks.accuracy [--rows dm:50,herding:1 ...] [--out FILE]

Runs in a scratch directory (--scratch) holding a reduced copy of data/prepared: the first
TRAIN_PER_CLASS train, VAL_PER_CLASS val and TEST_PER_CLASS test images of each class. There it runs the
stage functions (pretrain, distill, evaluate) in-process with BUDGETS laid over params.yaml and writes
the table (--out) after every result; benchmarks/accuracy.md (written by hand) gathers the runs' tables. Rows that need other stages get them on the same reduced data:
  herding    stage select's herding (select.lof_inliers + select.herding per class) on the image features
             of stage embed's image encoder (`embed.image_encoder`), written as data/selections/herding-ipcK
  masked_*   foreground masks from `python -m mmdistill.stages.tag` and `python -m mmdistill.stages.ground` (offline backends
             of params.yaml) run in the scratch directory
  dsdm       the pool of stage pretrain with PRETRAIN laid over params.yaml
Caption variants are not rows here (another part of issue 6 builds them).
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mmdistill.core.config import load_params
from mmdistill.core.runtime import versions
from mmdistill.core.storage import save_text
from mmdistill.distill import methods as distill
from mmdistill.evaluate import classification as evaluate
from mmdistill.nn import pool as pretrain

REPO = Path(__file__).resolve().parents[1]
IPCS = (1, 10, 50)
METHODS = ("random", "herding", "dc", "dsa", "masked_dc", "dm", "masked_dm", "dsdm")
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 200, 10, 100
PAPER = {"random": (51.4, 73.8, 82.5), "herding": (67.0, 71.1, 71.9), "dc": (70.5, 82.3, 83.6),
         "dsa": (70.6, 84.6, 88.7), "dm": (70.7, 83.5, 88.1), "dsdm": (80.8, 87.3, 88.9)}  # DSDM paper, Table 1
GRADIENT_MATCHING = {1: {"iterations": 10, "batch_real": 16},
                     10: {"iterations": 2, "batch_real": 16, "outer_loop": 10, "inner_loop": 5},
                     50: {"iterations": 1, "batch_real": 16, "outer_loop": 10, "inner_loop": 2}}
BUDGETS = {(m, ipc): b for m in ("dc", "dsa", "masked_dc") for ipc, b in GRADIENT_MATCHING.items()}
BUDGETS |= {(m, None): {"iterations": 40, "batch_real": 16} for m in ("dm", "masked_dm", "dsdm")}
BUDGETS[("dsdm", 50)] = {"iterations": 10, "batch_real": 16}  # ~10 s an iteration on CPU: 2,000 decoded images
PRETRAIN = {"models": 3, "epochs": 1}
EVALUATE = {"epochs": 50, "repeats": 2}
NEEDS_MASKS, NEEDS_SELECTION = ("masked_dc", "masked_dm"), ("herding",)


def reduced_copy(source: Path, target: Path) -> None:
    """The first N images of each class of every split of `source`, written to `target` (same metadata)."""
    import pyarrow as pa

    from mmdistill.core.storage import (
        read_parquet,
        read_parquet_metadata,
        write_parquet,
    )
    shutil.rmtree(target, ignore_errors=True)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS), ("test", TEST_PER_CLASS)):
        table = read_parquet(source / split)
        labels = table["label"].to_numpy()
        keep = sorted(i for c in sorted(set(labels.tolist())) for i in np.flatnonzero(labels == c)[:per_class])
        write_parquet(table.take(pa.array(keep)), target / "data/prepared" / f"{split}-00000.parquet",
                      read_parquet_metadata(source / split))


def herding_selections(params: dict, ipcs: list[int]) -> None:
    """Stage select's herding coresets (LOF inliers, then herding per class) on embed's image features."""
    from mmdistill.core.config import param
    from mmdistill.core.storage import read_parquet, write_parquet
    from mmdistill.data.datasets import decode_images
    from mmdistill.embed.features import IMAGE_ENCODERS, build_encoder, encode_images
    from mmdistill.selection.coresets import SELECTIONS, herding, lof_inliers
    table = read_parquet(Path("data/prepared/train"), ["uid", "label", "image"])
    uids, labels = table["uid"].to_pylist(), table["label"].to_numpy()
    images = torch.from_numpy(decode_images(table["image"].to_pylist(), uids, channels=3))
    name, encoder = build_encoder(params, "embed.image_encoder", IMAGE_ENCODERS, torch.device("cpu"))
    vectors = encode_images(encoder, images, param(params, "embed.batch_size", int), "embed train images")
    for k in ipcs:
        rows = []
        for c in sorted(set(labels.tolist())):
            members = np.flatnonzero(labels == c)
            _, inlier = lof_inliers(vectors[members], param(params, "select.lof_neighbors", int),
                                    param(params, "select.lof_contamination", float), param(params, "seed", int))
            kept = members[inlier]
            rows += [{"label": int(c), "rank": r, "uid": uids[kept[i]]} for r, i in enumerate(herding(vectors[kept], k))]
        write_parquet({key: [row[key] for row in rows] for key in ("label", "rank", "uid")},
                      SELECTIONS / f"herding-ipc{k}.parquet", {"selection": {"method": "herding", "ipc": k,
                                                                              "features": name}})


def foreground_masks() -> None:
    """data/annotations/instances.parquet from stages tag and ground (params.yaml's backends) in cwd."""
    shutil.copy(REPO / "params.yaml", "params.yaml")
    for stage in ("tag", "ground"):
        subprocess.run([sys.executable, "-m", f"stages.{stage}"], check=True,
                       env=os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})


def budget(method: str, ipc: int) -> dict:
    return BUDGETS.get((method, ipc), BUDGETS.get((method, None), {}))


def provenance() -> str:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return f"commit {commit}, {os.cpu_count()} CPU cores, torch {versions()['torch']}"


def table(runs: list, results: dict, timings: dict, command: str, loads: list, started_at: str) -> str:
    lines = ["# Fashion-MNIST accuracy at reduced CPU budgets, beside the DSDM paper's Table 1", "",
             f"Command: `{command}` ({started_at}; load average (1 min) at the start and after each row: "
             f"{', '.join(f'{x:.1f}' for x in loads)}). Wall time so far: {sum(timings.values()) / 60:.1f} minutes.",
             "",
             f"Ours: ConvNet-3; data: the first {TRAIN_PER_CLASS} train, {VAL_PER_CLASS} val and {TEST_PER_CLASS} "
             f"test images per class of the prepared Fashion-MNIST; test accuracy (%) mean ± std over "
             f"{EVALUATE['repeats']} evaluation networks trained {EVALUATE['epochs']} epochs on the synthetic set "
             "(SGD momentum 0.9, lr 0.01 x0.1 at half, DSA). Budgets not listed are params.yaml's. "
             "Paper: 60k train images, 10k test, DC/DSA 1000 outer iterations with DC's loops, DM 20k and DSDM 10k "
             "iterations, 256 real images per class, pool of 10 nets x 20 epochs, 1000 evaluation epochs "
             "(DSDM: 1500).", "",
             "| method | IPC | ours (%) | paper (%) | our distillation budget | distill s | evaluate s |",
             "|---|---|---|---|---|---|---|"]
    for method, ipc in runs:
        if (method, ipc) not in results:
            continue
        r = results[(method, ipc)]
        b = ", ".join(f"{k} {v}" for k, v in budget(method, ipc).items()) or "-"
        if method == "dsdm":
            b += f"; pool of {PRETRAIN['models']} nets x {PRETRAIN['epochs']} epoch ({timings['pretrain']:.0f} s)"
        for extra in ("selection", "masks"):
            if extra in timings and method in (NEEDS_SELECTION if extra == "selection" else NEEDS_MASKS):
                b += f"; {extra} {timings[extra]:.0f} s"
        paper = PAPER[method][IPCS.index(ipc)] if method in PAPER else "-"
        lines.append(f"| {method} | {ipc} | {r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} | "
                     f"{paper} | {b} | {timings[(method, ipc, 'distill')]:.0f} | "
                     f"{timings[(method, ipc, 'evaluate')]:.0f} |")
    missing = [f"{m} IPC {k}" for m, k in runs if (m, k) not in results]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def parse_rows(text: str | None) -> list:
    if not text:
        return [(m, ipc) for ipc in IPCS for m in METHODS]
    rows = []
    for item in text.split(","):
        method, _, ipc = item.partition(":")
        if method not in METHODS or not ipc.isdigit() or int(ipc) not in IPCS:
            raise SystemExit(f"bad row {item!r}: expected METHOD:IPC with METHOD in {METHODS}, IPC in {IPCS}")
        rows.append((method, int(ipc)))
    return rows



def run_row(method: str, ipc: int, base: dict, method_budget: dict, results: dict, timings: dict) -> None:
    """Distill `method` at `ipc` with `method_budget` over params `base`, evaluate it, record result and times."""
    params = copy.deepcopy(base)
    params["distill"][method].update(method_budget)
    start = time.perf_counter()
    distill.distill(method, ipc, params)
    timings[(method, ipc, "distill")] = time.perf_counter() - start
    start = time.perf_counter()
    metrics, record = evaluate.evaluate(method, ipc, params)
    results[(method, ipc)] = metrics[record["net"]]
    timings[(method, ipc, "evaluate")] = time.perf_counter() - start
    r = results[(method, ipc)]
    print(f"{method} ipc{ipc}: {r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} "
          f"(distill {timings[(method, ipc, 'distill')]:.0f}s, evaluate "
          f"{timings[(method, ipc, 'evaluate')]:.0f}s)", flush=True)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", help="comma-separated METHOD:IPC (default: every method at every IPC)")
    parser.add_argument("--out", default="benchmarks/accuracy_run.md")  # accuracy.md is the hand-written summary
    parser.add_argument("--scratch", default="/tmp/accuracy-benchmark")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param laid over params.yaml for every row, e.g. distill.engine.precision=bf16")
    args = parser.parse_args()
    runs = parse_rows(args.rows)
    command = "python -m benchmarks.accuracy" + "".join(
        f" --{k} {v}" for k, v in vars(args).items() if v and k != "set") + "".join(f" --set {v}" for v in args.set)
    out = Path(args.out).resolve()
    base = load_params()
    base["pretrain"].update(PRETRAIN)
    base["evaluate"].update(EVALUATE)
    for item in args.set:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        section = base
        for name in path:
            section = section.get(name) if isinstance(section, dict) else None
        if not isinstance(section, dict) or last not in section or not value:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY a param of params.yaml")
        section[last] = yaml.safe_load(value)
    reduced_copy(Path("data/prepared").resolve(), Path(args.scratch))
    os.chdir(args.scratch)
    timings, results, loads = {}, {}, [os.getloadavg()[0]]
    started_at = provenance()  # the code that runs is the code at the start, whatever HEAD is later
    methods = {m for m, _ in runs}
    if "dsdm" in methods:
        start = time.perf_counter()
        pretrain.pretrain(base)
        timings["pretrain"] = time.perf_counter() - start
    if methods & set(NEEDS_SELECTION):
        start = time.perf_counter()
        herding_selections(base, sorted({k for m, k in runs if m in NEEDS_SELECTION}))
        timings["selection"] = time.perf_counter() - start
    if methods & set(NEEDS_MASKS):
        start = time.perf_counter()
        foreground_masks()
        timings["masks"] = time.perf_counter() - start
    for method, ipc in runs:
        run_row(method, ipc, base, budget(method, ipc), results, timings)
        loads.append(os.getloadavg()[0])
        save_text(table(runs, results, timings, command, loads, started_at), out)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    main()
