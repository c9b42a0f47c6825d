"""One distillation run, method-independent: resolve the settings, run the registered method, write the set.

The output `data/distilled/{run}.pt` ({run} = {method}-ipc{K}, or {method}-latent-ipc{K} for a latent run) is a
tensor file (mmdistill.core.storage.load_tensors) with:
  images       float32 [N, channels, H, W], normalised with the dataset mean/std; N = C*K, except
               dsdm with factor l: N = C*K*l^2 decoded images (what evaluation trains on)
  labels       int64   [N], class-major (the images of class 0, then class 1, ...)
  source_uids  list of the real train images each image started from (one per entry of `images`)
  mean, std    the normalisation, to turn images back into pixels
  loss         float32 [iterations] loss curve (empty for selection methods)
  info         method, ipc, seed, settings (the resolved settings: mmdistill.distill.methods.resolve, with `flip`
               the value the run used, true or false, where params say auto; plus those a run took from its
               inputs, Synthetic.settings: kcenter_start, forgetting_order of a selection), engine
               (distill.engine, optimising methods), latent (distill.latent for a latent run, else {}), device,
               library versions
  ...          the method's further entries (methods/: dsdm's encoded/factor/pool_net, caption_concat's captions/
               caption_space; a latent run's latents and vae: the optimised latents, dsdm: of the encoded images,
               and the VAE's source, revision, subfolder, scaling_factor and weight digest)
plus a PNG grid `outputs/figures/distilled/{run}.png` (one row per class; dsdm: encoded).
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmdistill.core.config import param
from mmdistill.core.paths import LOSS_CURVES, checkpoint, distill_log, distilled_figure, distilled_set, run_name
from mmdistill.core.runtime import resolve_device, seed_everything, versions
from mmdistill.core.storage import PipelineError, check_writable, save_tensors
from mmdistill.data.datasets import load_split, resolve_flip
from mmdistill.distill import distributed, methods
from mmdistill.distill.engine import Run, save_grid

SELECTION_PARAMS = {"kcenter": ("kcenter_start", "select.kcenter_start"),  # the select param a selection follows
                    "forgetting": ("forgetting_order", "select.forgetting_order")}
FIXED_SELECTION = {"forgetting_most": {"forgetting_order": "most"}}  # the variants whose choice is their name


def recorded_settings(params: dict, name: str, info: dict) -> dict:
    """The `info.settings` a run of method `name` made now with `params` records, for a check that a record is
    current (the report): resolve()'s settings with an `auto` flip as the prepared dataset's default (`info`: its
    metadata, data.datasets.dataset_info), plus for kcenter / forgetting the select param their selection
    follows (forgetting_most: always "most"; the set itself records the choice from the selection's metadata)."""
    settings, where = methods.resolve(params, name)
    if "flip" in settings:
        settings["flip"] = resolve_flip(settings["flip"], where["flip"], info)
    if name in SELECTION_PARAMS:
        key, source = SELECTION_PARAMS[name]
        settings[key] = param(params, source, str)
    return {**settings, **FIXED_SELECTION.get(name, {})}


def distill(name: str, ipc: int, latent: bool, params: dict, resume: bool) -> Path:
    """Run method `name` at `ipc` images per class (in the latent parameterisation if `latent`) -> its output."""
    method = methods.get(name)
    if ipc <= 0:
        raise PipelineError(f"IPC must be a positive integer, got {ipc}")
    if latent and not method.engine:
        raise PipelineError(f"--latent: method {name!r} selects real images and optimises nothing; latent runs are "
                            f"for optimising methods")
    settings, where = methods.resolve(params, name)
    if "flip" in settings:  # `auto`: the prepared dataset's default; the run records the value it used
        settings["flip"] = resolve_flip(settings["flip"], where["flip"])
    seed = param(params, "seed", int)
    seed_everything(seed)
    device = distributed.start(resolve_device(params))
    if distributed.world()[1] > 1 and method.family not in ("distribution", "gradient"):
        raise PipelineError(f"distill {name} under torchrun: only the distribution (dm) and gradient (dsa, dc) "
                            "families split their work across processes; run it as one process")
    run_id = run_name(name, ipc, latent)
    out = distilled_set(run_id)
    check_writable(out, distilled_figure(run_id), *((checkpoint(run_id), LOSS_CURVES / f"{run_id}.tsv",
                                                     distill_log(run_id) / "metrics.json") if method.engine else ()))
    train = load_split("train")
    run = Run(name, ipc, latent, settings, where, params, train, device, seed, resume)
    result = method.run(run)
    images, init = result.images, result.init
    if not bool(torch.isfinite(images).all()):
        raise PipelineError(f"distill {run.name}: the synthetic images hold NaN or inf; the set is not written")
    info = {"method": name, "ipc": ipc, "seed": seed, "settings": {**settings, **result.settings},
            "engine": dict(param(params, "distill.engine", dict)) if method.engine else {},
            "latent": dict(param(params, "distill.latent", dict)) if latent else {},
            "device": str(device), "versions": versions()}
    if not distributed.writes():
        return out
    save_tensors({"images": images.contiguous(), "labels": train.labels[init],
                  "source_uids": [train.uids[i] for i in init], "mean": train.mean, "std": train.std,
                  "loss": torch.tensor(result.loss, dtype=torch.float32), **result.extra, "info": info}, out)
    shown = result.extra.get("encoded", images)
    classes = len(train.class_names)
    save_grid(shown, torch.arange(classes).repeat_interleave(len(shown) // classes), train.class_names, train.mean,
              train.std, distilled_figure(run.name), f"{name}{' (latent)' if latent else ''}, IPC {ipc}")
    return out
