"""A learned joint space for the offline image and text features.

The stage, its outputs and their schema: mmdistill.stages.align.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.core.paths import PREPARED
from mmdistill.core.runtime import seed_everything
from mmdistill.core.storage import PipelineError, read_parquet
from mmdistill.evaluate.ranking import ranks
from mmdistill.nn.infonce import bidirectional_cross_entropy
from mmdistill.nn.train import adam_minibatches
from mmdistill.selection.forgetting import ForgettingCounter

RECALL_AT = (1, 5, 10)


class Heads(nn.Module):
    """One linear projection per modality into a shared, L2-normalised space, and a learned temperature."""

    def __init__(self, image_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.image = nn.Linear(image_dim, dim)
        self.text = nn.Linear(text_dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def project_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x), dim=1)

    def project_text(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(x), dim=1)

    def logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100) * self.project_image(image) @ self.project_text(text).T

    def loss(self, image: torch.Tensor, text: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        return bidirectional_cross_entropy(self.logits(image, text) if logits is None else logits)


def train_heads(image: torch.Tensor, text: torch.Tensor, *, dim: int, epochs: int, batch_size: int, lr: float,
                seed: int, counter: ForgettingCounter | None = None) -> tuple[Heads, list[float]]:
    """Contrastive training; with `counter`, a pair counts as correct at a presentation when, within its
    mini-batch, its image retrieves its caption and its caption retrieves its image (pair forgetting events)."""
    seed_everything(seed)
    heads = Heads(image.shape[1], text.shape[1], dim)

    def batch_loss(idx):
        logits = heads.logits(image[idx], text[idx])
        if counter is not None:
            with torch.no_grad():
                diagonal = torch.arange(len(idx))
                correct = (logits.argmax(1) == diagonal) & (logits.argmax(0) == diagonal)
            counter.update(idx.numpy(), correct.numpy())
        return heads.loss(image[idx], text[idx], logits)

    history = adam_minibatches(heads.parameters(), len(image), batch_loss, epochs=epochs, batch_size=batch_size,
                               lr=lr, generator=torch.Generator().manual_seed(seed), desc="align")
    return heads, history


def recall_at(similarity: np.ndarray, ks=RECALL_AT) -> dict:
    """Recall@K of row i retrieving column i (%), ties never hits (the rule of mmdistill.evaluate.retrieval)."""
    rank = ranks(torch.from_numpy(np.ascontiguousarray(similarity)), torch.arange(len(similarity)))[0]
    return {f"R@{k}": round(float(100 * (rank <= k).float().mean()), 2) for k in ks}


def retrieval(image: np.ndarray, text: np.ndarray) -> dict:
    similarity = image @ text.T
    return {"image_to_text": recall_at(similarity), "text_to_image": recall_at(similarity.T)}


def image_caption_pairs(split: str, image_index, image_vectors, caption_index, caption_vectors):
    """Row-aligned (uids, image features, whole-image caption features) of one split."""
    uids = set(read_parquet(PREPARED / split, ["uid"])["uid"].to_pylist())
    caption_row = {u: r for r, (u, i) in enumerate(zip(caption_index["uid"].to_pylist(),
                                                        caption_index["instance_id"].to_pylist())) if i == -1}
    rows = [(u, r) for r, u in enumerate(image_index["uid"].to_pylist()) if u in uids and u in caption_row]
    if not rows:
        raise PipelineError(f"no {split} images with a whole-image caption (instance_id -1) in data/features")
    return ([u for u, _ in rows], image_vectors[[r for _, r in rows]],
            caption_vectors[[caption_row[u] for u, _ in rows]])
