"""Pessimistic retrieval ranks: the one ranking rule of every recall in the project (rule in
mmdistill.evaluate.retrieval's docstring: ties with a wrong candidate never count as hits)."""
from __future__ import annotations

import math

import torch

from mmdistill.core.storage import PipelineError


def _check(scores: torch.Tensor, image_of_text: torch.Tensor, text_id: torch.Tensor) -> None:
    if scores.dim() != 2 or scores.shape[1] != len(image_of_text):
        raise PipelineError(f"retrieval: scores {tuple(scores.shape)} do not match {len(image_of_text)} captions")
    if not bool(torch.isfinite(scores).all()):
        raise PipelineError("retrieval: the similarity matrix holds NaN or inf (a diverged student?)")
    if len(image_of_text) and (int(image_of_text.min()) < 0 or int(image_of_text.max()) >= scores.shape[0]):
        raise PipelineError("retrieval: a caption points to no image")
    counts = torch.bincount(image_of_text, minlength=scores.shape[0])
    if bool((counts == 0).any()):
        raise PipelineError(f"retrieval: image {int((counts == 0).nonzero()[0, 0])} has no caption")
    if len(text_id) != len(image_of_text):
        raise PipelineError(f"retrieval: {len(text_id)} text ids for {len(image_of_text)} captions")


def relevance(image_of_text, n_images: int, text_id=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first caption of each distinct text, images x distinct texts bool: the image has that text, the distinct
    text of each caption 0..U-1). `text_id` None: every caption is its own text."""
    image_of_text = torch.as_tensor(image_of_text, dtype=torch.long)
    if text_id is None:
        text_id = torch.arange(len(image_of_text))
    distinct, inverse = torch.unique(torch.as_tensor(text_id, dtype=torch.long), return_inverse=True)
    first = torch.full((len(distinct),), len(inverse), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(inverse)), reduce="amin")
    own = torch.zeros(n_images, len(distinct), dtype=torch.bool)
    own[image_of_text, inverse] = True
    return first, own, inverse


def ranks(scores: torch.Tensor, image_of_text, text_id=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pessimistic 1-based ranks: (of each image's best own text among the distinct texts, of each caption's best
    image having its text among the images). `scores[i, t]` is the similarity of image i and caption t."""
    image_of_text = torch.as_tensor(image_of_text, dtype=torch.long)
    _check(scores, image_of_text, image_of_text if text_id is None else torch.as_tensor(text_id))
    first, own, inverse = relevance(image_of_text, scores.shape[0], text_id)
    scores = scores[:, first]                                    # one column per distinct text
    best_own = scores.masked_fill(~own, -math.inf).max(dim=1, keepdim=True).values
    tr = 1 + ((scores >= best_own) & ~own).sum(dim=1)
    best_image = scores.masked_fill(~own, -math.inf).max(dim=0, keepdim=True).values
    ir = 1 + ((scores >= best_image) & ~own).sum(dim=0)
    return tr, ir[inverse]
