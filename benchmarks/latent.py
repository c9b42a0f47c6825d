"""DM at IPC 10 on Fashion-MNIST, pixels vs the offline VAE's latents, at a reduced CPU budget -> benchmarks/latent.md

    python -m mmdistill.data.sources && python -m mmdistill.nn.vae && python -m benchmarks.latent

Runs in a scratch directory (SCRATCH) holding copies of data/prepared and data/vae (stage vae's
AutoencoderKL; its val reconstruction is read from outputs/metrics/vae.json). There it distils
dm at IPC 10 with DM_BUDGET in both parameterisations, and evaluates each set, the random real
init images and those init images passed through the VAE (encode the mean, decode: what the latent
run starts from) with the pipeline's evaluation (ConvNet-3, EVALUATE laid over params.yaml).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import torch

from mmdistill.core.config import load_params, param
from mmdistill.core.runtime import versions
from mmdistill.core.storage import load_tensors, save_text
from mmdistill.data.datasets import load_split
from mmdistill.distill import methods as distill
from mmdistill.evaluate.classification import train_and_score
from mmdistill.nn.vae import parameterisation

SCRATCH = Path("/tmp/latent-benchmark")
IPC = 10
DM_BUDGET = {"iterations": 40, "batch_real": 16}
EVALUATE = {"nets": ["convnet3"], "epochs": 50, "repeats": 2}


def score(images, labels, params, desc) -> dict:
    val, test = load_split("val"), load_split("test")
    metrics, record = train_and_score(images, labels, val, test, params, params["evaluate"]["epochs"],
                                      params["evaluate"]["repeats"], param(params, "evaluate.augment", bool), desc)
    return metrics[record["net"]]


def main() -> None:
    out = Path("benchmarks/latent.md").resolve()
    vae_metrics = {**json.loads(Path("data/vae/record.json").read_text()),
                   **json.loads(Path("outputs/metrics/vae.json").read_text())}
    shutil.rmtree(SCRATCH, ignore_errors=True)
    for name in ("prepared", "vae"):
        shutil.copytree(Path("data") / name, SCRATCH / "data" / name)
    os.chdir(SCRATCH)
    base = load_params(Path(out).parents[1] / "params.yaml")
    base["device"] = "cpu"
    base["evaluate"].update(EVALUATE)
    base["distill"]["dm"].update(DM_BUDGET)
    rows, start = [], time.perf_counter()
    for space in ("pixels", "latent"):
        params = copy.deepcopy(base)
        params["distill"]["engine"]["parameterisation"] = space
        t = time.perf_counter()
        synthetic = load_tensors(distill.distill("dm", IPC, params))
        distill_s = time.perf_counter() - t
        shutil.move(f"data/distilled/dm-ipc{IPC}.pt", f"data/distilled/dm-{space}-ipc{IPC}.pt")
        if space == "latent":  # the latent run's starting point: the random init images through the VAE
            train = load_split("train")
            init = [train.uids.index(u) for u in synthetic["source_uids"]]
            real = train.normalized()[init]
            vae = parameterisation(params, torch.device("cpu"))
            t = time.perf_counter()
            rows.append(("random, through the VAE", "-", score(vae.final(vae.encode(real)), synthetic["labels"],
                                                               params, "random via vae"), 0, time.perf_counter() - t))
            t = time.perf_counter()
            rows.insert(0, ("random (init)", "-", score(real, synthetic["labels"], params, "random"), 0,
                            time.perf_counter() - t))
        t = time.perf_counter()
        result = score(synthetic["images"], synthetic["labels"], params, f"dm {space}")
        rows.append((f"dm, {space}", f"loss {synthetic['loss'][0]:.1f} -> {synthetic['loss'][-5:].mean():.1f} "
                     "(last 5)", result, distill_s, time.perf_counter() - t))
        print(rows[-1][0], f"{result['test_accuracy_mean']:.2f}", flush=True)
    lines = ["# DM at IPC 10: pixels vs latents of the offline VAE (Fashion-MNIST, reduced CPU budget)", "",
             "Command: `python -m mmdistill.data.sources && python -m mmdistill.nn.vae && python -m benchmarks.latent` "
             f"({os.cpu_count()} CPU cores shared with other agents' jobs; torch {versions()['torch']}). "
             f"Benchmark wall time: {(time.perf_counter() - start) / 60:.1f} minutes.", "",
             f"Data: the prepared Fashion-MNIST ({vae_metrics['train_images']} train images, the full 10,000 test "
             f"split). DM budget: {', '.join(f'{k} {v}' for k, v in DM_BUDGET.items())}, other dm settings from "
             "params.yaml (lr 1.0, momentum 0.5, DSA) in both parameterisations. Evaluation: ConvNet-3, "
             f"{EVALUATE['repeats']} networks x {EVALUATE['epochs']} epochs on the 100 synthetic images (SGD momentum "
             "0.9, lr 0.01 x0.1 at half, DSA); test accuracy mean ± std.", "",
             f"VAE (stage vae, params.yaml `vae`: {vae_metrics['settings']}): latents "
             f"{vae_metrics['latent_shape']}, val reconstruction MSE {vae_metrics['val_mse']} (pixels in [0, 1]), "
             f"PSNR {vae_metrics['val_psnr']} dB, scaling_factor {vae_metrics['scaling_factor']}.", "",
             "| synthetic set | DM loss | test acc (%) | val acc (%) | distill s | evaluate s |", "|---|---|---|---|---|---|"]
    for name, loss, r, distill_s, eval_s in rows:
        lines.append(f"| {name} | {loss} | {r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} | "
                     f"{r['val_accuracy_mean']:.2f} | {distill_s:.0f} | {eval_s:.0f} |")
    save_text("\n".join(lines) + "\n", out)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
