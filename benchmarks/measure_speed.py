"""Iterations per second of the matching losses: the engine's vs the per-class reference loop.

    python -m benchmarks.measure_speed --spec SPEC.json --out RESULT.json

Not a runner: `python -m benchmarks.run CONFIG` runs it, in its copy of the project after `dvc repro
prepare`, for configurations of kind `speed`, and renders RESULT.json into the result file.

One iteration = a fresh network (seeded by the iteration), the same DSA augmentation on real and synthetic
batches, the loss, backward and one SGD step on the synthetic pixels (DC: one matching step; DC's outer
iteration adds network training, which is ordinary training). Each measurement starts with one untimed
iteration (for a compiled variant it includes compilation). Rounds alternate between the implementations,
so that all see similar background load, and every measurement records the 1-minute load average before
and after it.

SPEC keys (all required):
  rounds       measurements per implementation
  iterations   {DM: n, DC: n}: timed iterations per measurement
  images       [prepared | colour32]: the prepared train split (class-major, needs stage prepare), or random
               normal 32x32 colour images (the time does not depend on pixel values)
  losses       {DM: [impl...], DC: [impl...]}; DM: loop, engine, engine_bf16, engine_compiled,
               engine_compiled_bf16; DC: loop, engine, engine_bf16, engine_vmap
  classes, ipc, batch_real, net   the setting (papers: 10 classes, IPC 10, 256 real images per class, convnet3)
  compile      the torch.compile backend of the *_compiled implementations (e.g. inductor)
  ceiling      {size: n, dtypes: [fp32, bf16, ...]}: the matmul ceiling, GFLOPS of an n x n x n matmul per dtype

Each loss's work per iteration is counted once (torch.utils.flop_counter, eager fp32: the same arithmetic for every
implementation of it), so that the result holds each implementation's achieved GFLOPS beside the ceiling.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmdistill.data.datasets import load_split
from mmdistill.distill.losses import distribution_gap, gradient_match
from mmdistill.distill.reference import distribution_gap_loop, gradient_match_loop
from mmdistill.nn.augment import DifferentiableAugment
from mmdistill.nn.nets import make_net

KEYS = ("rounds", "iterations", "images", "losses", "classes", "ipc", "batch_real", "net", "compile", "ceiling")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class CompiledEmbedding(torch.nn.Module):
    """`net` whose `embed` is torch.compile(net.embed): a wrapper, the network itself is left alone."""

    def __init__(self, net, backend: str):
        super().__init__()
        self.net = net
        self.embed = torch.compile(net.embed, backend=backend)

    def forward(self, x):
        return self.net(x)


def bf16(loss_fn):
    def loss(net, real, syn, classes):
        with torch.autocast("cpu" if real.device.type == "cpu" else real.device.type, dtype=torch.bfloat16):
            return loss_fn(net, real, syn, classes)
    return loss


def compiled(loss_fn, backend: str):
    def loss(net, real, syn, classes):
        return loss_fn(CompiledEmbedding(net, backend), real, syn, classes)
    return loss


def implementations(backend: str) -> dict:
    return {"DM": {"loop": distribution_gap_loop, "engine": distribution_gap, "engine_bf16": bf16(distribution_gap),
                   "engine_compiled": compiled(distribution_gap, backend),
                   "engine_compiled_bf16": bf16(compiled(distribution_gap, backend))},
            "DC": {"loop": gradient_match_loop, "engine": gradient_match, "engine_bf16": bf16(gradient_match),
                   "engine_vmap": partial(gradient_match, how="vmap")}}


def iterations_per_second(loss_fn, net_name: str, classes: int, real, syn0, iterations: int, augment,
                          frozen: bool) -> float:
    syn = syn0.clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    for it in range(iterations + 1):
        if it == 1:
            start = time.perf_counter()
        one_iteration(loss_fn, net_name, classes, real, syn, opt, it, augment, frozen)
    return iterations / (time.perf_counter() - start)


def one_iteration(loss_fn, net_name, classes, real, syn, opt, it, augment, frozen):
    """A fresh network, DSA as the distillation loops apply it (per class, one transform for the class's real and
    synthetic images), the loss, backward, one SGD step."""
    torch.manual_seed(it)
    net = make_net(net_name, real.shape[1], classes, real.shape[2]).requires_grad_(not frozen)
    seeds = [it * classes + c for c in range(classes)]
    loss = loss_fn(net, augment.per_class(real, seeds), augment.per_class(syn, seeds), classes)
    opt.zero_grad()
    loss.backward()
    opt.step()


def gflop_per_iteration(loss_fn, net_name, classes, real, syn0, augment, frozen) -> float:
    syn = syn0.clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    with FlopCounterMode(display=False) as counter:
        one_iteration(loss_fn, net_name, classes, real, syn, opt, 0, augment, frozen)
    return counter.get_total_flops() / 1e9


def matmul_gflops(size: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOPS of an n x n by n x n matmul in `dtype` (median of `repeats`, after one untimed)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    times = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return 2 * size**3 / times[len(times) // 2] / 1e9


def image_sets(spec: dict) -> dict:
    """Class-major real batches (batch_real per class) and synthetic sets (ipc per class)."""
    classes, ipc, batch = spec["classes"], spec["ipc"], spec["batch_real"]
    out = {}
    for name in spec["images"]:
        if name == "prepared":
            train = load_split("train")
            images = train.normalized()
            order = torch.argsort(train.labels, stable=True)
            per_class = len(order) // classes
            if per_class < batch + ipc:
                raise SystemExit(f"the prepared train split has {per_class} images per class; "
                                 f"batch_real + ipc = {batch + ipc} needed")
            real = torch.cat([images[order[c * per_class:c * per_class + batch]] for c in range(classes)])
            syn = torch.cat([images[order[c * per_class + batch:c * per_class + batch + ipc]]
                             for c in range(classes)])
            shape = "x".join(map(str, images.shape[1:]))
            out[f"prepared {shape}"] = (real, syn)
        elif name == "colour32":
            gen = torch.Generator().manual_seed(0)
            out["random colour 3x32x32"] = (torch.randn(classes * batch, 3, 32, 32, generator=gen),
                                            torch.randn(classes * ipc, 3, 32, 32, generator=gen))
        else:
            raise SystemExit(f"images {name!r}: valid: prepared, colour32")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    missing, unknown = set(KEYS) - set(spec), set(spec) - set(KEYS)
    if missing or unknown:
        raise SystemExit(f"speed spec: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    impls = implementations(spec["compile"])
    for loss, names in spec["losses"].items():
        if loss not in impls or set(names) - set(impls[loss]):
            raise SystemExit(f"speed spec losses.{loss}: valid losses {sorted(impls)}, "
                             f"implementations {sorted(impls.get(loss, {}))}")
    augment = DifferentiableAugment()
    unknown = set(spec["ceiling"]["dtypes"]) - set(DTYPES)
    if unknown:
        raise SystemExit(f"speed spec ceiling.dtypes: {sorted(unknown)}; valid: {sorted(DTYPES)}")
    ceiling = {name: matmul_gflops(spec["ceiling"]["size"], DTYPES[name]) for name in spec["ceiling"]["dtypes"]}
    print("matmul ceiling (GFLOPS): " + ", ".join(f"{k} {v:.0f}" for k, v in ceiling.items()), flush=True)
    measurements, work = [], {}
    for images, (real, syn) in image_sets(spec).items():
        for loss, names in spec["losses"].items():
            work[f"{images} {loss}"] = gflop_per_iteration(impls[loss]["engine"], spec["net"], spec["classes"], real,
                                                           syn, augment, frozen=loss == "DM")
            for _ in range(spec["rounds"]):
                for impl in names:
                    before = os.getloadavg()[0]
                    rate = iterations_per_second(impls[loss][impl], spec["net"], spec["classes"], real, syn,
                                                 spec["iterations"][loss], augment, frozen=loss == "DM")
                    measurements.append({"images": images, "loss": loss, "impl": impl, "rate": rate,
                                         "load_before": before, "load_after": os.getloadavg()[0]})
                    print(f"{images} {loss} {impl}: {rate:.3f} it/s", flush=True)
    args.out.write_text(json.dumps({"rounds": spec["rounds"], "threads": torch.get_num_threads(),
                                    "ceiling_gflops": ceiling, "gflop_per_iteration": work,
                                    "measurements": measurements}, indent=1))


if __name__ == "__main__":
    main()
