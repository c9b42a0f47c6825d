"""Data-parallel distillation under torchrun: `torchrun --nproc_per_node N -m mmdistill.stages.distill --method M
--ipc K`, M in the distribution family (dm) or the gradient family (dsa, dc): N CPU processes (gloo), or with
device cuda one process per GPU of the node (NCCL, the GPU of LOCAL_RANK).

Every rank holds the same synthetic set and draws the same real batch, network and augmentation (the engine's
seeds); the ranks split the work and all-reduce so that each takes the same update as one process, up to float
summation order:
- dm (distribution_matching): each rank embeds its share of each class's real images (images rank, rank + N, ...
  of the class's `batch_real`); the per-class sums of the real embeddings are all-reduced into the class means.
- dsa, dc (gradient_matching): the classes are split (classes rank, rank + N, ...); each rank computes the
  gradient distance of its classes only, and the pixel gradients (each synthetic image's comes from its own class
  alone) and the loss are all-reduced. The network training between matching steps (DC's inner loop) is repeated
  on every rank.
Rank 0 alone writes (the distilled set, its figure, loss curve, grids and checkpoints). Without torchrun
(WORLD_SIZE unset or 1) nothing here changes a run.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from mmdistill.core.storage import PipelineError


def start(device: torch.device) -> torch.device:
    """Join torchrun's process group when launched with more than one process -> the device this process computes
    on: `device` itself on the CPU (gloo); on CUDA the GPU of its LOCAL_RANK (NCCL), one process per GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cpu":
        dist.init_process_group("gloo")
        return device
    if device.type != "cuda":
        raise PipelineError(f"torchrun with device {device}: distributed distillation runs on CPU (gloo) or CUDA "
                            "(NCCL) only")
    local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= gpus:
        raise PipelineError(f"torchrun process with LOCAL_RANK {local_rank} but this node has {gpus} GPU(s): use "
                            f"--nproc_per_node {gpus} at most")
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    return torch.device("cuda", local_rank)


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


def own_classes(classes: int) -> list[int]:
    """The classes this rank matches (gradient family): rank, rank + N, ... (all of them without torchrun)."""
    rank, size = world()
    if classes < size:
        raise PipelineError(f"{classes} classes do not split into the {size} torchrun processes: use at most "
                            f"{classes} processes")
    return list(range(rank, classes, size))


def own_blocks(x: torch.Tensor, classes: int) -> torch.Tensor:
    """The blocks of own_classes(classes) of the class-major `x` (equal blocks per class), still class-major."""
    rank, size = world()
    return x.view(classes, -1, *x.shape[1:])[rank::size].reshape(-1, *x.shape[1:])


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the processes, in place (itself without torchrun)."""
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def check_divisible(batch_real: int, where: str) -> None:
    size = world()[1]
    if batch_real % size:
        raise PipelineError(f"param '{where}' = {batch_real} does not split into the {size} torchrun processes: "
                            f"use a multiple of {size}")
