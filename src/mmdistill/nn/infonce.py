"""The bidirectional InfoNCE loss of every contrastive model in the project (MTT-VL's pair model, the alignment
heads)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Bidirectional InfoNCE: row i of both is a matching pair, every other row of the batch a negative."""
    return bidirectional_cross_entropy(image_emb @ text_emb.T / temperature)


def bidirectional_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """InfoNCE over a square logit matrix whose diagonal holds the matching pairs, image->text and text->image."""
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
