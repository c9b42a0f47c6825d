"""Expert trajectories of the pair model (MTT-VL's buffer): the targets of bi-trajectory matching.

`experts` pair models (mmdistill.nn.contrastive, `imagetext.model`), expert e initialised and shuffled from seed
`seed + e`, are trained `expert_epochs` epochs on the train pairs (SGD on the InfoNCE loss, `imagetext.buffer`).
Their trainable state (the image encoder's parameters, or only its LoRA adapters, its batch-norm statistics, and
both projections; mmdistill.nn.contrastive.trainable_state) is saved before training and after every epoch:

    data/buffer/expert-EEE/epoch-TTT.pt    one tensor shard per expert and epoch, TTT = 000 (initial) .. expert_epochs
    data/buffer/record.json                settings, counts, versions (the same bytes on every run)

The seconds per expert epoch (measured) are returned with the record; stage buffer writes them to
outputs/timings/buffer.json, outside the cached output.

Resume (`--resume`): after every epoch the whole training state (model, optimizer momentum, shuffling generator)
is checkpointed to data/checkpoints/buffer/expert-EEE.pt, with the settings it was made under; a resumed run
continues each expert from its last finished epoch and writes the same bytes as an uninterrupted one. A checkpoint
made under other settings is an error (run without --resume to start over).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch

from mmdistill.core.config import param, positive
from mmdistill.core.runtime import versions
from mmdistill.core.storage import PipelineError, load_tensors, save_json, save_tensors
from mmdistill.nn.contrastive import build_pair_model, train_pairs, trainable_state

BUFFER = Path("data/buffer")
BUFFER_CHECKPOINTS = Path("data/checkpoints/buffer")


def shard_path(root: Path, expert: int, epoch: int) -> Path:
    return Path(root) / f"expert-{expert:03d}" / f"epoch-{epoch:03d}.pt"


def buffer_settings(params: dict, pairs: dict) -> dict:
    return {"seed": param(params, "seed", int), "model": params["imagetext"]["model"],
            "buffer": params["imagetext"]["buffer"], "train_images": len(pairs["images"]),
            "train_texts": len(pairs["texts"])}


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def train_experts(params: dict, pairs: dict, device, *, resume: bool, root=BUFFER, checkpoints=BUFFER_CHECKPOINTS,
                  on_epoch=None) -> dict:
    """Train every expert, writing its trajectory under `root`; -> the record, with the measured
    `seconds_per_expert_epoch` added (not saved: it differs on every run). `on_epoch(expert, epoch)` is called
    after each epoch's shard and checkpoint are written (tests interrupt the run there)."""
    experts, epochs = positive(params, "imagetext.buffer.experts"), positive(params, "imagetext.buffer.expert_epochs")
    lr = param(params, "imagetext.buffer.lr", float)
    momentum = param(params, "imagetext.buffer.momentum", float)
    batch_size = positive(params, "imagetext.buffer.batch_size")
    settings = buffer_settings(params, pairs)
    key = fingerprint(settings)
    root, checkpoints = Path(root), Path(checkpoints)
    if not resume:
        for path in (root, checkpoints):
            if path.exists():
                shutil.rmtree(path)
    seconds = []
    for e in range(experts):
        ckpt_path = checkpoints / f"expert-{e:03d}.pt"
        model = build_pair_model(params, pairs["channels"], pairs["image_size"], pairs["mean"], pairs["std"],
                                 pairs["texts"].shape[1], param(params, "seed", int) + e).to(device)
        gen = torch.Generator().manual_seed(param(params, "seed", int) + e)
        # on the device before the optimiser exists: a resumed momentum buffer is loaded next to its parameter
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum)
        start = 0
        if resume and ckpt_path.exists():
            ckpt = load_tensors(ckpt_path)
            if ckpt["fingerprint"] != key:
                raise PipelineError(f"{ckpt_path} was made under other settings; run without --resume to start over")
            model.load_state_dict(ckpt["model"])  # copies into the device tensors
            opt.load_state_dict(ckpt["optimizer"])
            gen.set_state(ckpt["generator"])
            start = ckpt["epoch"]
        else:
            save_tensors(trainable_state(model), shard_path(root, e, 0))
        if start >= epochs:
            continue

        def after_epoch(epoch, net, optimizer, e=e, ckpt_path=ckpt_path, gen=gen):
            save_tensors(trainable_state(net), shard_path(root, e, epoch))
            save_tensors({"fingerprint": key, "epoch": epoch, "model": net.state_dict(),
                          "optimizer": optimizer.state_dict(), "generator": gen.get_state()}, ckpt_path)
            seconds.append(time.perf_counter() - clock[0])
            clock[0] = time.perf_counter()
            if on_epoch is not None:
                on_epoch(e, epoch)

        clock = [time.perf_counter()]
        train_pairs(model, pairs["images"], pairs["texts"], pairs["image_of_text"], epochs, device, lr=lr,
                    momentum=momentum, batch_size=batch_size, generator=gen, optimizer=opt, on_epoch=after_epoch,
                    start_epoch=start)
        model.cpu()
    record = {**settings, "experts": experts, "expert_epochs": epochs, "shards": (epochs + 1) * experts,
              "versions": versions()}
    save_json(record, root / "record.json")
    return {**record, "seconds_per_expert_epoch": sum(seconds) / len(seconds) if seconds else None}


def load_trajectory(expert: int, root=BUFFER) -> list[dict]:
    """Every saved state of one expert, epoch 0 first."""
    folder = Path(root) / f"expert-{expert:03d}"
    files = sorted(folder.glob("epoch-*.pt"))
    if not files:
        raise PipelineError(f"no expert trajectory in {folder}: run stage buffer first")
    return [load_tensors(f) for f in files]
