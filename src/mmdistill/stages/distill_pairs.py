"""distill_pairs: MTT-VL bi-trajectory matching over image-text pairs -> data/distilled_pairs/{run}.pt

    python -m mmdistill.stages.distill_pairs --pairs mttvl-100 [--resume]

run = `mttvl-N`: N synthetic pairs (pixels + text embeddings) and a learned student learning rate alpha, distilled
for `imagetext.mttvl.iterations` steps against the expert trajectories of stage buffer (data/buffer) with the pair
model of `imagetext.model` (mmdistill.distill.trajectory_matching). Initialised from the images of the `random-N`
pair set (same seed), one caption each.

Outputs:
  data/distilled_pairs/{run}.pt   {images: float N x C x H x W (normalised), texts: float N x D, lr: alpha,
                                   init_uids, loss (per iteration)}
  outputs/plots/loss/{run}.tsv    the loss curve (as the engine's: mmdistill.distill.engine.LossLog)
Checkpoint every `imagetext.mttvl.checkpoint_every` iterations to data/checkpoints/{run}.pt; `--resume` continues
from it and writes the same bytes as an uninterrupted run (a checkpoint made under other settings or data is
refused).
"""
from __future__ import annotations

import hashlib
import json

import torch

from mmdistill.core.config import load_params, param, positive
from mmdistill.core.paths import checkpoint, distill_log
from mmdistill.core.runtime import resolve_device
from mmdistill.core.storage import PipelineError, check_writable, load_tensors, save_tensors
from mmdistill.data.pairs import check_set_lists, distilled_pairs_path, load_pairs, parse_pair_set
from mmdistill.distill.engine import LossLog, digest
from mmdistill.distill.experts import BUFFER, load_trajectory
from mmdistill.distill.trajectory_matching import PairDistiller, initial_pairs
from mmdistill.nn.contrastive import build_pair_model
from mmdistill.stages import ArgumentParser, run_stage


def distill_pairs(run: str, params: dict, resume: bool, on_iteration=None, buffer=BUFFER) -> dict:
    """The mttvl run `run` (mttvl-N) -> what it wrote. `on_iteration(done)` runs after each iteration's checkpoint
    (tests interrupt there)."""
    block = "imagetext.mttvl"
    check_set_lists(params)
    train = load_pairs("train")
    kind, n = parse_pair_set(run, len(train["images"]))
    if kind != "mttvl":
        raise PipelineError(f"--pairs {run!r}: distill_pairs makes mttvl-N sets")
    seed, device = param(params, "seed", int), resolve_device(params)
    experts = positive(params, "imagetext.buffer.experts")
    trajectories = [load_trajectory(e, buffer) for e in range(experts)]
    settings = {"max_start_epoch": param(params, f"{block}.max_start_epoch", int),
                "expert_epochs": positive(params, f"{block}.expert_epochs"),
                "syn_steps": positive(params, f"{block}.syn_steps"),
                "batch_size": min(positive(params, f"{block}.batch_syn"), n)}
    if settings["max_start_epoch"] + settings["expert_epochs"] > len(trajectories[0]) - 1:
        raise PipelineError(f"params '{block}.max_start_epoch' + '{block}.expert_epochs' = "
                            f"{settings['max_start_epoch'] + settings['expert_epochs']} exceed the buffer's "
                            f"{len(trajectories[0]) - 1} expert epochs (imagetext.buffer.expert_epochs)")
    iterations = positive(params, f"{block}.iterations")
    init = initial_pairs(train, n, seed)
    model = build_pair_model(params, train["channels"], train["image_size"], train["mean"], train["std"],
                             train["texts"].shape[1], seed).to(device)
    distiller = PairDistiller(init, alpha0=param(params, f"{block}.alpha0", float),
                              lr_images=param(params, f"{block}.lr_images", float),
                              lr_texts=param(params, f"{block}.lr_texts", float),
                              lr_alpha=param(params, f"{block}.lr_alpha", float),
                              momentum=param(params, f"{block}.momentum", float), seed=seed, device=device)
    fingerprint = hashlib.sha256(json.dumps(
        {"run": run, "seed": seed, "model": params["imagetext"]["model"], "buffer": params["imagetext"]["buffer"],
         "mttvl": {k: v for k, v in params["imagetext"]["mttvl"].items()
                   if k not in ("iterations", "checkpoint_every")},  # a resumed run may be extended
         "inputs": digest([init["images"], init["texts"], [(t[0], t[-1]) for t in trajectories]])},
        sort_keys=True).encode()).hexdigest()
    ckpt_path, every = checkpoint(run), positive(params, f"{block}.checkpoint_every")
    start = 0
    if resume and ckpt_path.exists():
        ckpt = load_tensors(ckpt_path)
        if ckpt.get("fingerprint") != fingerprint:
            raise PipelineError(f"{ckpt_path} was made under other settings or data: delete it or run without "
                                "--resume")
        if ckpt["iteration"] > iterations:
            raise PipelineError(f"{ckpt_path} is at iteration {ckpt['iteration']}, beyond the {iterations} in params")
        distiller.load_state_dict(ckpt["distiller"])
        start = ckpt["iteration"]
    log = LossLog(distill_log(run), start)
    for it in range(start, iterations):
        torch.manual_seed(seed * 100003 + it)
        log.log(it, distiller.step(model, trajectories, **settings))
        done = it + 1
        if done % every == 0 or done == iterations:
            save_tensors({"iteration": done, "distiller": distiller.state_dict(), "fingerprint": fingerprint},
                         ckpt_path)
        if on_iteration is not None:
            on_iteration(done)
    state = distiller.state_dict()
    out = {"images": state["images"], "texts": state["texts"], "lr": state["alpha"], "init_uids": init["uids"],
           "loss": state["history"]}
    save_tensors(out, distilled_pairs_path(run))
    return out


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="mttvl-N")
    parser.add_argument("--resume", action="store_true", help="continue from data/checkpoints/{run}.pt")
    args = parser.parse_args()
    parse_pair_set(args.pairs, 2**62)
    params = load_params()
    check_writable(distilled_pairs_path(args.pairs), checkpoint(args.pairs))
    out = distill_pairs(args.pairs, params, args.resume)
    print(f"distill_pairs {args.pairs}: loss {out['loss'][0]:.4f} -> {out['loss'][-1]:.4f}, alpha "
          f"{float(out['lr']):.4g} -> {distilled_pairs_path(args.pairs)}")


if __name__ == "__main__":
    run_stage(main)
