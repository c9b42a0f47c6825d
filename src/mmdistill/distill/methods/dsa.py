"""dsa: dc with differentiable siamese augmentation (mmdistill.nn.augment) on real and synthetic images and in the
network updates (the `gradient` family's loop with augment on)."""
from __future__ import annotations

from mmdistill.distill.methods import Method
from mmdistill.distill.methods.dc import run

METHOD = Method("dsa", group="gradient", family="gradient", keys={}, run=run, engine=True)
