"""masked_dc: dsa's gradient-matching term on full images (`full_weight`) plus the same term on foreground-masked
images (`masked_weight`; masks as in masked_dm)."""
from __future__ import annotations

from mmdistill.core.config import Float
from mmdistill.data.datasets import load_foreground_masks
from mmdistill.distill.engine import Run
from mmdistill.distill.gradient_matching import gradient_matching
from mmdistill.distill.initial import random_selection
from mmdistill.distill.losses import MaskedTerm
from mmdistill.distill.methods import Method, Synthetic


def run(run: Run) -> Synthetic:
    init = random_selection(run.train, run.ipc, run.seed)
    masks = load_foreground_masks(run.train.uids, *run.train.images.shape[2:])
    images, history, outputs = gradient_matching(run, init, run.settings["full_weight"],
                                                 MaskedTerm(masks, run.settings["masked_weight"], None))
    return Synthetic(images, init, history, outputs)


METHOD = Method("masked_dc", group="masked", family="gradient", run=run, engine=True,
                keys={"full_weight": Float(low=0), "masked_weight": Float(low=0)})
