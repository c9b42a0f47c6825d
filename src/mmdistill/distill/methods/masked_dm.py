"""masked_dm: dm's full-image term (`full_weight`) plus the same term on foreground-masked images
(`masked_weight`; masks from stage `ground`). A synthetic image keeps the mask of the real image it was
initialised from: the paper does not say how synthetic images are masked, and this keeps the object region where
it started. `full_term: dc` pairs the masked DM term with full-image gradient matching instead (the multi-modal
paper's pairing): the run then overlays the `gradient` family block (lr, net_lr, loops, ...) instead of
`distribution`.
"""
from __future__ import annotations

from mmdistill.core.config import Float, Str
from mmdistill.data.datasets import load_foreground_masks
from mmdistill.distill.distribution_matching import distribution_matching
from mmdistill.distill.engine import Run
from mmdistill.distill.gradient_matching import gradient_matching
from mmdistill.distill.initial import random_selection
from mmdistill.distill.losses import MaskedTerm, distribution_gap
from mmdistill.distill.methods import Method, Synthetic


def run(run: Run) -> Synthetic:
    init = random_selection(run.train, run.ipc, run.seed)
    masks = load_foreground_masks(run.train.uids, *run.train.images.shape[2:])
    full_weight, masked_weight = run.settings["full_weight"], run.settings["masked_weight"]
    if run.settings["full_term"] == "dc":
        images, history, outputs = gradient_matching(run, init, full_weight,
                                                     MaskedTerm(masks, masked_weight, distribution_gap))
    else:
        images, history, outputs = distribution_matching(run, init, full_weight, MaskedTerm(masks, masked_weight, None))
    return Synthetic(images, init, history, outputs)


METHOD = Method("masked_dm", group="masked", family="distribution", run=run, engine=True,
                keys={"full_weight": Float(low=0), "masked_weight": Float(low=0), "full_term": Str("dm", "dc")},
                switch=("full_term", {"dm": "distribution", "dc": "gradient"}))
