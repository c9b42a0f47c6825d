"""dm: Distribution Matching (Zhao & Bilen). Pixels initialised from the `random` images, optimised so that the
mean embedding of each class under a freshly initialised ConvNet-3 (new weights every iteration) matches that of
a batch of real images of the class, both under the same DSA augmentation (mmdistill.distill.distribution_matching).
"""
from __future__ import annotations

from mmdistill.distill.distribution_matching import distribution_matching
from mmdistill.distill.engine import Run
from mmdistill.distill.initial import random_selection
from mmdistill.distill.methods import Method, Synthetic


def run(run: Run) -> Synthetic:
    init = random_selection(run.train, run.ipc, run.seed)
    images, history, outputs = distribution_matching(run, init, full_weight=1.0, masked=None)
    return Synthetic(images, init, history, outputs)


METHOD = Method("dm", group="distribution", family="distribution", keys={}, run=run, engine=True)
