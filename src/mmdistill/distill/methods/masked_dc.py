"""masked_dc: the multi-modal paper's masked gradient matching ("Masked DC (DC)", §3.3): dsa's gradient-matching
term on full images (`full_weight`, DC's layer-wise cosine distance) plus gradient matching on foreground-masked
images (`masked_weight`; masks as in masked_dm) with the distance `masked_distance`:
  l2      (default) Eq. 2: the squared L2 distance between the per-class gradients of the masked real and
          synthetic images, over every parameter (mmdistill.distill.losses.squared_distance)
  cosine  DC's per-unit 1 - cosine distance (the earlier form)
The paper writes Eq. 2 for the masked term only; the full-image term is its DC backbone's gradient matching.
The method `masked_dc_cosine` is masked_dc under another name with `masked_distance: cosine` in its params block
(`distill.masked_dc_cosine`), for a side-by-side comparison.
"""
from __future__ import annotations

from functools import partial

from mmdistill.core.config import Float, Str
from mmdistill.data.datasets import load_foreground_masks
from mmdistill.distill.engine import Run
from mmdistill.distill.gradient_matching import gradient_matching
from mmdistill.distill.initial import random_selection
from mmdistill.distill.losses import GRADIENT_DISTANCES, MaskedTerm, gradient_match
from mmdistill.distill.methods import Method, Synthetic


def run(run: Run) -> Synthetic:
    init = random_selection(run.train, run.ipc, run.seed)
    masks = load_foreground_masks(run.train.uids, *run.train.images.shape[2:])
    match = partial(gradient_match, how=run.settings["class_gradients"], distance=run.settings["masked_distance"])
    images, history, outputs = gradient_matching(run, init, run.settings["full_weight"],
                                                 MaskedTerm(masks, run.settings["masked_weight"], match))
    return Synthetic(images, init, history, outputs)


# masked_dc_cosine: the same method under a second name, whose params block holds the earlier form (masked_distance
# cosine), so that both forms can run side by side
METHODS = {name: Method(name, group="masked", family="gradient", run=run, engine=True,
                        keys={"full_weight": Float(low=0), "masked_weight": Float(low=0),
                              "masked_distance": Str(*GRADIENT_DISTANCES)})
           for name in ("masked_dc", "masked_dc_cosine")}
