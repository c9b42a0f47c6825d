"""Pessimistic retrieval ranks: the one ranking rule of every recall in the project (rule in
mmdistill.evaluate.retrieval's docstring: ties with a wrong candidate never count as hits)."""
from __future__ import annotations

import math

import torch

from mmdistill.core.storage import PipelineError


def _check(scores: torch.Tensor, image_of_text: torch.Tensor) -> None:
    if scores.dim() != 2 or scores.shape[1] != len(image_of_text):
        raise PipelineError(f"retrieval: scores {tuple(scores.shape)} do not match {len(image_of_text)} captions")
    if not bool(torch.isfinite(scores).all()):
        raise PipelineError("retrieval: the similarity matrix holds NaN or inf (a diverged student?)")
    if len(image_of_text) and (int(image_of_text.min()) < 0 or int(image_of_text.max()) >= scores.shape[0]):
        raise PipelineError("retrieval: a caption points to no image")
    counts = torch.bincount(image_of_text, minlength=scores.shape[0])
    if bool((counts == 0).any()):
        raise PipelineError(f"retrieval: image {int((counts == 0).nonzero()[0, 0])} has no caption")


def ranks(scores: torch.Tensor, image_of_text) -> tuple[torch.Tensor, torch.Tensor]:
    """Pessimistic 1-based ranks: (of each image's best own caption among the captions, of each caption's own
    image among the images). `scores[i, t]` is the similarity of image i and caption t."""
    image_of_text = torch.as_tensor(image_of_text, dtype=torch.long)
    _check(scores, image_of_text)
    n_images, n_texts = scores.shape
    own = torch.zeros(n_images, n_texts, dtype=torch.bool)
    own[image_of_text, torch.arange(n_texts)] = True
    best_own = scores.masked_fill(~own, -math.inf).max(dim=1, keepdim=True).values
    tr = 1 + ((scores >= best_own) & ~own).sum(dim=1)
    own_score = scores[image_of_text, torch.arange(n_texts)]
    ir = 1 + ((scores >= own_score.unsqueeze(0)) & ~own).sum(dim=0)
    return tr, ir
