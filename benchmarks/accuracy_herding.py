"""Herding at IPC 1 on two feature spaces -> benchmarks/accuracy_herding.md

    python -m mmdistill.data.sources && python -m benchmarks.accuracy_herding

benchmarks/accuracy.py's herding row runs stage select's herding on stage embed's features
(EfficientNet-Lite0, ImageNet weights). The DSDM paper's herding row (from DC) uses the features of a
ConvNet trained on the dataset. This runs the same herding code on both spaces, on the same reduced data
and evaluation as benchmarks/accuracy.py; the ConvNet-3 is trained by stage pretrain (one network,
EPOCHS epochs on the reduced train split) and its `embed` output is the feature.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.accuracy import EVALUATE, herding_selections, provenance, reduced_copy
from mmdistill.core.config import load_params, param
from mmdistill.core.storage import load_tensors, save_text, write_parquet
from mmdistill.data.datasets import load_split
from mmdistill.distill import methods as distill
from mmdistill.evaluate import classification as evaluate
from mmdistill.nn import pool as pretrain
from mmdistill.nn.nets import make_net
from mmdistill.selection.coresets import SELECTIONS, herding, lof_inliers

IPC, EPOCHS = 1, 5
SCRATCH = Path("/tmp/accuracy-herding")


def convnet_herding(params: dict) -> list:
    """Herding on the embeddings of a ConvNet-3 trained by stage pretrain -> selection file; val accuracies."""
    pretrain.pretrain(params)
    pool = load_tensors(distill.PRETRAINED)
    net = make_net(pool["net"], pool["channels"], pool["classes"], pool["image_size"])
    net.load_state_dict(pool["states"][0])
    train = load_split("train")
    with torch.no_grad():
        vectors = torch.cat([net.eval().embed(x) for x in train.normalized().split(256)]).numpy()
    labels, rows = train.labels.numpy(), []
    for c in range(len(train.class_names)):
        members = np.flatnonzero(labels == c)
        _, inlier = lof_inliers(vectors[members], param(params, "select.lof_neighbors", int),
                                param(params, "select.lof_contamination", float), param(params, "seed", int))
        kept = members[inlier]
        rows += [{"label": c, "rank": r, "uid": train.uids[kept[i]]} for r, i in enumerate(herding(vectors[kept], IPC))]
    write_parquet({k: [row[k] for row in rows] for k in ("label", "rank", "uid")}, SELECTIONS / f"herding-ipc{IPC}.parquet",
                  {"selection": {"method": "herding", "ipc": IPC, "features": "convnet3 (stage pretrain)"}})
    return pool["val_accuracy"]


def main() -> None:
    out = Path("benchmarks/accuracy_herding.md").resolve()
    params = load_params()
    params["pretrain"].update({"models": 1, "epochs": EPOCHS})
    params["evaluate"].update(EVALUATE)
    reduced_copy(Path("data/prepared").resolve(), SCRATCH)
    os.chdir(SCRATCH)
    rows, load = [], os.getloadavg()[0]
    for name, select in (("embed image features (EfficientNet-Lite0, ImageNet)", lambda: herding_selections(params, [IPC])),
                         (f"ConvNet-3 trained {EPOCHS} epochs on the reduced train split", lambda: convnet_herding(params))):
        start = time.perf_counter()
        extra = select()
        distill.distill("herding", IPC, copy.deepcopy(params))
        metrics, record = evaluate.evaluate("herding", IPC, params)
        r = metrics[record["net"]]
        rows.append(f"| {name}{f' (val. accuracy {extra[0]:.1f} %)' if extra else ''} | "
                    f"{r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} | {time.perf_counter() - start:.0f} |")
        print(rows[-1], flush=True)
    save_text("\n".join([f"# Herding at IPC {IPC}: which features", "",
                         f"Command: `python -m benchmarks.accuracy_herding` ({provenance()}; load average (1 min) at "
                         f"the start {load:.1f}, at the end {os.getloadavg()[0]:.1f}). Data and evaluation as "
                         f"benchmarks/accuracy.py (evaluation {EVALUATE}); the DSDM paper's herding at IPC 1: 67.0.",
                         "", "| herding features | test accuracy (%) | s |", "|---|---|---|", *rows]) + "\n", out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
