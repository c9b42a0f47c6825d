"""forgetting: forgetting events of every train image under the shared ConvNet -> data/forgetting/events.parquet

    python -m mmdistill.stages.forgetting

Forgetting events (Toneva et al., 2019; a coreset baseline of MTT-VL): a network is trained on the
train split, and every time an image is presented in a mini-batch its correctness is read off that same
forward pass (before the update). A forgetting event is a presentation at which an image that was
classified correctly at its previous presentation is misclassified. Images never classified correctly
are the most forgotten of all. Training is its own cached stage; stage `select` turns the counts into the
`forgetting-ipc{K}` selections (per class, the K most forgotten images).

`data/forgetting/events.parquet`, one row per train image:

| column            | type   | meaning                                                     |
|-------------------|--------|-------------------------------------------------------------|
| uid               | string | train image                                                 |
| label             | int64  |                                                             |
| forgetting_events | int32  | correct -> incorrect transitions over all presentations     |
| learned           | bool   | classified correctly at least once                          |
| misclassified     | int32  | presentations at which it was misclassified                 |

Metadata `forgetting`: the settings (`select.forgetting`), seed, device and library versions.
Network and optimiser are those of evaluation (`select.forgetting.net`, SGD momentum 0.9, weight decay
5e-4), without augmentation, at a constant learning rate.
"""
from __future__ import annotations

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
                     batch_size: int, lr: float, device, seed: int) -> ForgettingCounter:
    """Train `net` on normalised images with the shared loop and count forgetting events of every example."""
    seed_everything(seed)
    model = make_net(net, images.shape[1], classes, images.shape[2])
    counter = ForgettingCounter(len(labels))

    def record(idx, logits, targets):
        counter.update(idx.cpu().numpy(), (logits.argmax(1) == targets).cpu().numpy())

    train_classifier(model, images, labels, epochs, device, lr=lr, batch_size=batch_size, seed=seed,
                     desc="forgetting", decay=False, on_batch=record)
    return counter
