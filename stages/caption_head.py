"""caption_head: a differentiable image -> caption-embedding head for caption_match -> data/caption_head/

    python -m stages.caption_head

Caption matching (multi-modal DD paper, Sec. 3.2) needs caption features of the synthetic images at
every distillation step, so it needs a differentiable map from pixels to the caption-embedding space
of `data/features/caption`. `caption_head.head` picks it:

  offline  a small ConvNet (`caption_head.width` channels, depth by image size, as stages/nets.py's
           ConvNet) whose linear layer outputs the caption dimension, L2-normalised. Trained with Adam on
           the train split's (normalised image, caption embedding) pairs to maximise their cosine; scored
           on the val split's pairs.
  blip2    BLIP-2's vision encoder + Q-Former + language projection mapped to the caption space: not
           implemented (a PipelineError says so).

An image's caption embedding (`image_caption_vectors`) is the L2-normalised mean of the embeddings of its
instance captions (`instance_id` >= 0: the paper captions object instances), or, with
`caption_head.target: image`, its whole-image caption (`instance_id` -1). Images without such a
caption get a zero vector (they are left out of the head's training and scoring).

Outputs:
  data/caption_head/head.pt      `state_dict`, `head`, `width`, `channels`, `image_size`, `dim` (caption
                                 dimension), `target`, `settings`, `loss` curve, `space` (the caption
                                 features' encoder settings), seed, versions
  outputs/metrics/caption_head.json   val mean cosine of head(image) and its caption embedding, val
                                 retrieval R@1/5/10 image->caption (ties do not count against), chance,
                                 pairs, settings, final train loss
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from stages.align import recall_at
from stages.data import ImageSet, load_split
from stages.embed import FEATURES, feature_metadata, load_features
from stages.io import PipelineError, load_tensors, save_json, save_tensors
from stages.nets import ConvNet, convnet_depth
from stages.params import load_params, param, positive, seed_everything, versions

HEAD = Path("data/caption_head/head.pt")
METRICS = Path("outputs/metrics/caption_head.json")
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


def _settings(params: dict) -> dict:
    head = param(params, "caption_head.head", str)
    if head not in HEADS:
        raise PipelineError(f"unknown caption head {head!r} (param 'caption_head.head'); valid: {', '.join(HEADS)}")
    if head == "blip2":
        raise PipelineError("param 'caption_head.head' = blip2: mapping BLIP-2's query outputs into the caption "
                            "space is not implemented; use 'offline'")
    return {"head": head, "target": param(params, "caption_head.target", str, choices=TARGETS),
            "width": positive(params, "caption_head.width"), "epochs": positive(params, "caption_head.epochs"),
            "batch_size": positive(params, "caption_head.batch_size"),
            "lr": positive(params, "caption_head.lr", float)}


def _pairs(split: ImageSet, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    captions = image_caption_vectors(split.uids, target)
    keep = captions.norm(dim=1) > 0
    return split.normalized()[keep], captions[keep]


def train_head(images: torch.Tensor, captions: torch.Tensor, *, width: int, epochs: int, batch_size: int,
               lr: float, seed: int) -> tuple[CaptionHead, list[float]]:
    """Adam on 1 - cosine(head(image), caption embedding)."""
    seed_everything(seed)
    head = CaptionHead(images.shape[1], images.shape[2], captions.shape[1], width)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in tqdm(range(epochs), desc="caption_head", mininterval=2):
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = (1 - (head(images[idx]) * captions[idx]).sum(1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / len(order))
    return head.eval(), history


@torch.no_grad()
def score_head(head: CaptionHead, images: torch.Tensor, captions: torch.Tensor) -> dict:
    predicted = torch.cat([head(images[i:i + 512]) for i in range(0, len(images), 512)])
    similarity = (predicted @ captions.T).numpy()
    return {"cosine_mean": round(float((predicted * captions).sum(1).mean()), 4),
            "image_to_caption": recall_at(similarity),
            "chance": {f"R@{k}": round(100 * min(k, len(images)) / len(images), 2) for k in (1, 5, 10)},
            "pairs": len(images)}


def load_head(device) -> tuple[CaptionHead, dict]:
    """The frozen head of stage caption_head and its saved record."""
    if not HEAD.exists():
        raise PipelineError(f"{HEAD} is missing: run `dvc repro caption_head` (python -m stages.caption_head)")
    saved = load_tensors(HEAD)
    head = CaptionHead(saved["channels"], saved["image_size"], saved["dim"], saved["width"])
    head.load_state_dict(saved["state_dict"])
    return head.to(device).eval().requires_grad_(False), saved


def main() -> None:
    params = load_params()
    seed = param(params, "seed", int)
    settings = _settings(params)
    train_images, train_captions = _pairs(load_split("train"), settings["target"])
    val_images, val_captions = _pairs(load_split("val"), settings["target"])
    if not len(train_images) or not len(val_images):
        raise PipelineError(f"no train or val image has a caption of target {settings['target']!r} in "
                            f"{FEATURES}/caption")
    torch.manual_seed(seed)
    head, history = train_head(train_images, train_captions, seed=seed,
                               **{k: settings[k] for k in ("width", "epochs", "batch_size", "lr")})
    metrics = {"val": score_head(head, val_images, val_captions), "train_pairs": len(train_images),
               "final_train_loss": round(history[-1], 4), "settings": settings, "seed": seed}
    save_tensors({"state_dict": head.state_dict(), "head": settings["head"], "width": settings["width"],
                  "channels": int(train_images.shape[1]), "image_size": int(train_images.shape[2]),
                  "dim": int(train_captions.shape[1]), "target": settings["target"], "settings": settings,
                  "loss": torch.tensor(history), "space": feature_metadata("caption"), "seed": seed,
                  "versions": versions()}, HEAD)
    save_json(metrics, METRICS)
    print(f"caption_head: val cosine {metrics['val']['cosine_mean']}, R@1 {metrics['val']['image_to_caption']['R@1']}"
          f" (chance {metrics['val']['chance']['R@1']}) over {len(val_images)} pairs -> {HEAD}")


if __name__ == "__main__":
    main()
