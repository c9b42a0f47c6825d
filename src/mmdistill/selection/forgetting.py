"""Forgetting events of every train image under the shared ConvNet.

The stage, its outputs and their schema: mmdistill.stages.forgetting.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from mmdistill.core.runtime import seed_everything
from mmdistill.nn.nets import make_net
from mmdistill.nn.train import train_classifier


class ForgettingCounter:
    """Per-example forgetting statistics, updated with the correctness of each presentation."""

    def __init__(self, n: int):
        self.previous = np.zeros(n, bool)
        self.events = np.zeros(n, np.int32)
        self.learned = np.zeros(n, bool)
        self.misclassified = np.zeros(n, np.int32)

    def update(self, index: np.ndarray, correct: np.ndarray) -> None:
        self.events[index] += self.previous[index] & ~correct
        self.learned[index] |= correct
        self.misclassified[index] += ~correct
        self.previous[index] = correct


def count_forgetting(images: torch.Tensor, labels: torch.Tensor, classes: int, *, net: str, epochs: int,
                     batch_size: int, lr: float, device, seed: int,
                     autocast=contextlib.nullcontext) -> ForgettingCounter:
    """Train `net` on normalised images with the shared loop and count forgetting events of every example
    (`autocast`: a factory of the forward passes' autocast context, as runtime.autocast_of)."""
    seed_everything(seed)
    model = make_net(net, images.shape[1], classes, images.shape[2])
    counter = ForgettingCounter(len(labels))

    def record(idx, logits, targets):
        counter.update(idx.cpu().numpy(), (logits.argmax(1) == targets).cpu().numpy())

    train_classifier(model, images, labels, epochs, device, lr=lr, batch_size=batch_size, seed=seed,
                     desc="forgetting", decay=False, on_batch=record, autocast=autocast)
    return counter
