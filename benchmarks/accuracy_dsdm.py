"""Why dsdm < dm at IPC 10 in benchmarks/accuracy.md: one change at a time -> benchmarks/accuracy_dsdm.md

    python -m mmdistill.data.sources && python -m benchmarks.accuracy_dsdm [--variants 5,2,...] [--out FILE]

Same reduced data, seed, evaluation and base budgets as benchmarks/accuracy.py (its IPC 10 dm and dsdm
rows); every variant below changes one setting of that dsdm row (or of the evaluation). Besides the
accuracy, each row gives how far distillation moved the stored images from their real initialisation:
||S - S0|| / ||S0|| over the stored (for dsdm: factor-encoded) normalised pixels.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import time
from pathlib import Path

import torch

from benchmarks.accuracy import BUDGETS, EVALUATE, PRETRAIN, provenance, reduced_copy
from mmdistill.core.config import load_params
from mmdistill.core.storage import load_tensors, save_text
from mmdistill.data.datasets import load_split
from mmdistill.distill import methods as distill
from mmdistill.distill.losses import factor_encode
from mmdistill.evaluate import classification as evaluate
from mmdistill.nn import pool as pretrain

IPC = 10
SCRATCH = Path("/tmp/accuracy-dsdm")
# (label, method, distill overrides, pretrain overrides, evaluate overrides, evaluate the previous set only)
VARIANTS = [
    ("dm (benchmark row)", "dm", {}, {}, {}, False),
    ("dm (benchmark row), evaluation epochs 150", "dm", {}, {}, {"epochs": 150}, True),
    ("dsdm (benchmark row)", "dsdm", {}, {}, {}, False),
    ("dsdm, iterations 1 (≈ its initialisation)", "dsdm", {"iterations": 1}, {}, {}, False),
    ("dsdm, lr 1.0 (DM's)", "dsdm", {"lr": 1.0}, {}, {}, False),
    ("dsdm, factor 1", "dsdm", {"factor": 1}, {}, {}, False),
    ("dsdm, pool epochs 5", "dsdm", {}, {"epochs": 5}, {}, False),
    ("dsdm, lambda_diversity 0", "dsdm", {"lambda_diversity": 0.0}, {}, {}, False),
    ("dsdm, iterations 200", "dsdm", {"iterations": 200}, {}, {}, False),
    ("dsdm (benchmark row), evaluation epochs 150", "dsdm", {}, {}, {"epochs": 150}, False),
    ("dsdm, lambda_history 0", "dsdm", {"lambda_history": 0.0}, {}, {}, False),
]


def moved(path: Path, train) -> float:
    """||S - S0|| / ||S0|| of the stored images against the real images they started from."""
    out = load_tensors(path)
    position = {u: i for i, u in enumerate(train.uids)}
    init = train.normalized()[[position[u] for u in out["source_uids"]]]
    stored = out.get("encoded", out["images"])
    if "encoded" in out:
        init = factor_encode(init, out["factor"])
    return float((stored - init).norm() / init.norm())


def table(rows: list, loads: list, command: str) -> str:
    lines = ["# dsdm vs dm at IPC 10: one change at a time", "",
             f"Command: `{command}` ({provenance()}; load average (1 min) at the start "
             f"and after each row: {', '.join(f'{x:.1f}' for x in loads)}).", "",
             "Base settings: those of benchmarks/accuracy.py's IPC 10 rows (first 200 train images per class, "
             f"distill {BUDGETS[('dsdm', None)]}, pool {PRETRAIN}, evaluation {EVALUATE} on 100 test images per "
             "class, seed 0). `moved` = ||S - S0|| / ||S0||, the relative change of the stored (dsdm: "
             "factor-encoded) normalised pixels from their real initialisation.", "",
             "| variant | test accuracy (%) | moved | pool val. accuracy (%) | pretrain s | distill s | evaluate s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['mean']:.2f} ± {r['std']:.2f} | {r['moved']:.3f} | {r['pool']} | "
                     f"{r['pretrain_s']:.0f} | {r['distill_s']:.0f} | {r['evaluate_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", help="comma-separated indices into VARIANTS, in the order to run them "
                                           "(default: all, in order)")
    parser.add_argument("--out", default="benchmarks/accuracy_dsdm.md")
    args = parser.parse_args()
    order = [int(i) for i in args.variants.split(",")] if args.variants else range(len(VARIANTS))
    command = "python -m benchmarks.accuracy_dsdm" + "".join(f" --{k} {v}" for k, v in vars(args).items() if v)
    out = Path(args.out).resolve()
    base = load_params()
    base["pretrain"].update(PRETRAIN)
    base["evaluate"].update(EVALUATE)
    reduced_copy(Path("data/prepared").resolve(), SCRATCH)
    os.chdir(SCRATCH)
    train = load_split("train")
    pools, rows, loads, path = {}, [], [os.getloadavg()[0]], None
    for label, method, distill_over, pretrain_over, evaluate_over, reuse in (VARIANTS[i] for i in order):
        params = copy.deepcopy(base)
        params["distill"][method].update(BUDGETS.get((method, None), {}) | distill_over)
        params["pretrain"].update(pretrain_over)
        params["evaluate"].update(evaluate_over)
        pretrain_s = distill_s = 0.0
        pool_key = repr(sorted(params["pretrain"].items()))
        if method == "dsdm":
            if pool_key not in pools:
                start = time.perf_counter()
                pretrain.pretrain(params)
                pretrain_s = time.perf_counter() - start
                pools[pool_key] = Path(f"pools/pool-{len(pools)}.pt")
                pools[pool_key].parent.mkdir(exist_ok=True)
                shutil.copy(distill.PRETRAINED, pools[pool_key])
            shutil.copy(pools[pool_key], distill.PRETRAINED)
        if reuse and path is None:
            raise SystemExit(f"variant {label!r} evaluates the previous variant's set: run it right after one")
        if not reuse:
            start = time.perf_counter()
            path = distill.distill(method, IPC, params)
            distill_s = time.perf_counter() - start
        start = time.perf_counter()
        metrics, record = evaluate.evaluate(method, IPC, params)
        result = metrics[record["net"]]
        evaluate_s = time.perf_counter() - start
        pool = load_tensors(distill.PRETRAINED)["val_accuracy"] if method == "dsdm" else "-"
        rows.append({"label": label, "mean": result["test_accuracy_mean"], "std": result["test_accuracy_std"],
                     "moved": moved(path, train), "pool": pool, "pretrain_s": pretrain_s, "distill_s": distill_s,
                     "evaluate_s": evaluate_s})
        loads.append(os.getloadavg()[0])
        print(f"{label}: {rows[-1]['mean']:.2f} ± {rows[-1]['std']:.2f}, moved {rows[-1]['moved']:.3f}", flush=True)
        save_text(table(rows, loads, command), out)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    main()
