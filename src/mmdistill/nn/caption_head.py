"""A differentiable image -> caption-embedding head (offline ConvNet or frozen BLIP-2 + linear map).

The stage, its outputs and their schema: mmdistill.stages.caption_head.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.core.config import param, positive
from mmdistill.core.hub import from_pretrained, model_source, torch_dtype
from mmdistill.core.paths import CAPTION_HEAD
from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.data.datasets import ImageSet
from mmdistill.embed.alignment import recall_at
from mmdistill.embed.features import FEATURES, load_features
from mmdistill.nn.nets import ConvNet, convnet_depth
from mmdistill.nn.pretrained import batched
from mmdistill.nn.train import adam_minibatches

HEADS = ("offline", "blip2")
TARGETS = ("instances", "image")


def image_caption_vectors(uids: list, target: str = "instances", root=FEATURES) -> torch.Tensor:
    """[len(uids), d] caption embedding of each image (see the module docstring); zero rows where none."""
    if target not in TARGETS:
        raise PipelineError(f"unknown caption target {target!r}; valid: {', '.join(TARGETS)}")
    index, vectors = load_features("caption", root)
    position = {u: i for i, u in enumerate(uids)}
    out = np.zeros((len(uids), vectors.shape[1]), np.float32)
    for u, instance_id, vector in zip(index["uid"].to_pylist(), index["instance_id"].to_pylist(), vectors):
        if u in position and (instance_id >= 0) == (target == "instances"):
            out[position[u]] += vector
    return F.normalize(torch.from_numpy(out), dim=1)


class CaptionHead(nn.Module):
    """Image (normalised pixels) -> L2-normalised caption embedding."""

    def __init__(self, channels: int, image_size: int, dim: int, width: int):
        super().__init__()
        self.net = ConvNet(channels, dim, image_size, width=width, depth=convnet_depth(image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class Projection(nn.Module):
    """A linear map into the caption space, L2-normalised (blip2's trained part)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x), dim=1)


class Blip2Features(nn.Module):
    """Frozen BLIP-2 from normalised dataset images to its averaged query outputs (language-projected),
    differentiable w.r.t. the pixels."""

    def __init__(self, model, image_processor, mean, std):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = (image_processor.size["height"], image_processor.size["width"])
        for name, values in (("mean", mean), ("std", std), ("blip_mean", image_processor.image_mean),
                             ("blip_std", image_processor.image_std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean
        pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
        pixels = F.interpolate(pixels, size=self.size, mode="bilinear", align_corners=False)
        pixels = (pixels - self.blip_mean) / self.blip_std
        dtype = next(self.model.parameters()).dtype
        return self.model.get_image_features(pixel_values=pixels.to(dtype)).pooler_output.mean(1).float()


def load_blip2(settings: dict, mean, std, device) -> Blip2Features:
    from transformers import Blip2ForConditionalGeneration, Blip2Processor
    params = {"caption_head": {"blip2": {"model": settings["model"], "revision": settings["revision"]}}}
    keys = ("caption_head.blip2.model", "caption_head.blip2.revision")
    processor = from_pretrained(Blip2Processor, params, *keys)
    model = from_pretrained(Blip2ForConditionalGeneration, params, *keys, dtype=torch_dtype(device))
    return Blip2Features(model, processor.image_processor, mean, std).to(device)


class Blip2Head(nn.Module):
    def __init__(self, features: Blip2Features, projection: Projection):
        super().__init__()
        self.features, self.projection = features, projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(x))


def _settings(params: dict) -> dict:
    head = param(params, "caption_head.head", str)
    if head not in HEADS:
        raise PipelineError(f"unknown caption head {head!r} (param 'caption_head.head'); valid: {', '.join(HEADS)}")
    settings = {"head": head, "target": param(params, "caption_head.target", str, choices=TARGETS),
                "width": positive(params, "caption_head.width"), "epochs": positive(params, "caption_head.epochs"),
                "batch_size": positive(params, "caption_head.batch_size"),
                "lr": positive(params, "caption_head.lr", float)}
    if head == "blip2":
        model_source(params, "caption_head.blip2.model")
        settings["blip2"] = {"model": param(params, "caption_head.blip2.model", str),
                             "revision": param(params, "caption_head.blip2.revision", str)}
    return settings


def _pairs(split: ImageSet, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    captions = image_caption_vectors(split.uids, target)
    keep = captions.norm(dim=1) > 0
    return split.normalized()[keep], captions[keep]


@torch.no_grad()
def blip2_features(features: Blip2Features, images: torch.Tensor, batch_size: int, desc: str) -> torch.Tensor:
    device = features.mean.device
    return torch.cat([features(images[sl].to(device)).cpu() for sl in batched(len(images), batch_size, desc)])


def train_head(head: nn.Module, inputs: torch.Tensor, captions: torch.Tensor, *, epochs: int, batch_size: int,
               lr: float, seed: int) -> tuple[nn.Module, list[float]]:
    """Adam on 1 - cosine(head(input), caption embedding)."""
    history = adam_minibatches(head.parameters(), len(inputs),
                               lambda idx: (1 - (head(inputs[idx]) * captions[idx]).sum(1)).mean(), epochs=epochs,
                               batch_size=batch_size, lr=lr, generator=torch.Generator().manual_seed(seed),
                               desc="caption_head")
    return head.eval(), history


@torch.no_grad()
def score_head(head: nn.Module, images: torch.Tensor, captions: torch.Tensor) -> dict:
    predicted = torch.cat([head(images[i:i + 512]) for i in range(0, len(images), 512)])
    similarity = (predicted @ captions.T).numpy()
    return {"cosine_mean": round(float((predicted * captions).sum(1).mean()), 4),
            "image_to_caption": recall_at(similarity),
            "chance": {f"R@{k}": round(100 * min(k, len(images)) / len(images), 2) for k in (1, 5, 10)},
            "pairs": len(images)}


def load_head(device, expected_dim: int) -> tuple[nn.Module, dict]:
    """The frozen head of stage caption_head (normalised images -> caption embeddings) and its saved record;
    `expected_dim` is the caption features' dimension."""
    if not CAPTION_HEAD.exists():
        raise PipelineError(f"{CAPTION_HEAD} is missing: run `dvc repro caption_head` (python -m mmdistill.stages.caption_head)")
    saved = load_tensors(CAPTION_HEAD)
    if saved["dim"] != expected_dim:
        raise PipelineError(f"{CAPTION_HEAD} maps to {saved['dim']}-d caption features, but the caption features are "
                            f"{expected_dim}-d; re-run `dvc repro caption_head`")
    if saved["head"] == "blip2":
        projection = Projection(saved["state_dict"]["linear.weight"].shape[1], saved["dim"])
        projection.load_state_dict(saved["state_dict"])
        head = Blip2Head(load_blip2(saved["settings"]["blip2"], saved["mean"], saved["std"], device), projection)
    else:
        head = CaptionHead(saved["channels"], saved["image_size"], saved["dim"], saved["width"])
        head.load_state_dict(saved["state_dict"])
    return head.to(device).eval().requires_grad_(False), saved
