"""Data-parallel distillation under torchrun: `torchrun --nproc_per_node N -m mmdistill.stages.distill --method dm
--ipc K` (gloo, CPU).

Every rank holds the same synthetic set, draws the same real batch, network and augmentation (the engine's seeds),
and embeds only its share of each class's real images (images rank, rank + N, ... of the class's `batch_real`).
The per-class sums of those real embeddings are all-reduced, so each rank computes the same class means, the same
loss and the same update as one process, up to float summation order. Rank 0 alone writes (the distilled set, its
figure, loss curve, grids and checkpoints). Without torchrun (WORLD_SIZE unset or 1) nothing here changes a run.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from mmdistill.core.storage import PipelineError


def start(device: torch.device) -> None:
    """Join torchrun's process group (gloo) when launched with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type != "cpu":
            raise PipelineError(f"torchrun with device {device}: distributed distillation runs on the CPU (gloo) "
                                "only; set param 'device' to cpu")
        dist.init_process_group("gloo")


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) without torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def writes() -> bool:
    """Whether this process writes outputs: rank 0 (or the only process)."""
    return world()[0] == 0


def shard(idx: torch.Tensor, classes: int) -> torch.Tensor:
    """This rank's share of class-major batch indices `idx` (equal blocks per class), still class-major."""
    rank, size = world()
    return idx.view(classes, -1)[:, rank::size].reshape(-1)


def class_means_across_ranks(features: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-class means of the class-major `features` of every rank's shard (equal shard sizes)."""
    per_class = features.view(classes, -1, features.shape[1])
    sums = per_class.sum(1)
    dist.all_reduce(sums)
    return sums / (per_class.shape[1] * world()[1])


def check_divisible(batch_real: int, where: str) -> None:
    size = world()[1]
    if batch_real % size:
        raise PipelineError(f"param '{where}' = {batch_real} does not split into the {size} torchrun processes: "
                            f"use a multiple of {size}")
