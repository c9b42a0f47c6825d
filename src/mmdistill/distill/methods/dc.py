"""dc: Dataset Condensation (Zhao et al. 2021): per outer iteration a fresh ConvNet-3; `outer_loop` pixel steps on
DC's layer-wise gradient distance (per class, real vs synthetic), with `inner_loop` epochs of training the network
on the synthetic set between them (mmdistill.distill.gradient_matching). No augmentation (params: augment false).
"""
from __future__ import annotations

from mmdistill.distill.engine import Run
from mmdistill.distill.gradient_matching import gradient_matching
from mmdistill.distill.initial import random_selection
from mmdistill.distill.methods import Method, Synthetic


def run(run: Run) -> Synthetic:
    init = random_selection(run.train, run.ipc, run.seed)
    images, history, outputs = gradient_matching(run, init, full_weight=1.0, masked=None)
    return Synthetic(images, init, history, outputs)


METHOD = Method("dc", group="gradient", family="gradient", keys={}, run=run, engine=True)
