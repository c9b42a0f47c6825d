"""Loading real models from a Hugging Face hub id or a local folder, with errors that name the param."""
from __future__ import annotations

import importlib
from pathlib import Path

from mmdistill.core.config import param
from mmdistill.core.storage import PipelineError


def model_source(params: dict, key: str) -> str:
    """A hub id or local directory/file from `key`; a missing local path is an error naming the param."""
    source = param(params, key, str)
    if not source:
        raise PipelineError(f"param '{key}' is empty: set it to a Hugging Face model id or a local directory "
                            "with the weights")
    if source.startswith((".", "/", "~")) and not Path(source).expanduser().exists():
        raise PipelineError(f"param '{key}': no weights at {source!r}; download the model there or set "
                            f"'{key}' to a Hugging Face model id")
    return source


def from_pretrained(loader, params: dict, key: str, revision_key: str, **kwargs):
    """`loader.from_pretrained(params[key], revision=params[revision_key])`; missing weights -> PipelineError."""
    source = model_source(params, key)
    revision = param(params, revision_key, str) or None
    try:
        return loader.from_pretrained(source, revision=revision, **kwargs)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot load {getattr(loader, '__name__', loader)} from {source!r} "
                            f"(param '{key}', revision {revision!r}): {exc}. Set '{key}' to a local directory "
                            "with the weights, or a Hugging Face id that is in the local hub cache or "
                            "downloadable") from exc


def pil_images(arrays) -> list:
    """uint8 HxWx3 arrays as PIL images: processors guess the channel axis of arrays, wrongly for tiny crops."""
    from PIL import Image
    return [Image.fromarray(a) for a in arrays]


def torch_dtype(device):
    import torch
    return torch.float16 if device.type == "cuda" else torch.float32


def import_object(path: str, key: str):
    """`package.module:Name` -> the object; errors name the param."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise PipelineError(f"param '{key}' must look like 'package.module:ClassName', got {path!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PipelineError(f"param '{key}': cannot import {path!r} ({exc})") from exc


def load_model(loader, params: dict, key: str, revision_key: str, device, **kwargs):
    """`from_pretrained` in the device's dtype (fp16 on CUDA, fp32 on CPU), moved to `device`, in eval mode."""
    return from_pretrained(loader, params, key, revision_key, dtype=torch_dtype(device), **kwargs).to(device).eval()
