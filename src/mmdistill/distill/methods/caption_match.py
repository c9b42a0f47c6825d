"""caption_match: the multi-modal paper's caption matching: lambda_1 (`full_weight`) x dsa's gradient matching +
lambda_2 (`caption_weight`) x the squared distance, summed over classes, between the mean caption feature of a
class's synthetic images (through the frozen differentiable head of stage caption_head) and the mean caption
embedding of the class's real train images. The paper names neither the distance nor the target; this is our
reading (a DM-style class-mean match in caption space), added to every matching step of the outer loop.
"""
from __future__ import annotations

import torch

from mmdistill.core.config import Float
from mmdistill.core.storage import PipelineError
from mmdistill.distill.engine import Run
from mmdistill.distill.gradient_matching import gradient_matching
from mmdistill.distill.initial import random_selection
from mmdistill.distill.losses import caption_gap
from mmdistill.distill.methods import Method, Synthetic
from mmdistill.embed.features import feature_metadata
from mmdistill.nn.caption_head import image_caption_vectors, load_head


def run(run: Run) -> Synthetic:
    train = run.train
    init = random_selection(train, run.ipc, run.seed)
    head, saved = load_head(run.device, feature_metadata("caption").get("dim"))
    real = image_caption_vectors(train.uids, saved["target"])
    classes = run.classes
    has_caption = real.norm(dim=1) > 0
    targets = torch.stack([real[(train.labels == c) & has_caption].mean(0) for c in range(classes)]).to(run.device)
    if torch.isnan(targets).any():
        raise PipelineError("caption_match: some class has no train image with a caption in data/features/caption")
    caption_term = (run.settings["caption_weight"], lambda syn: caption_gap(head(syn), targets, classes))
    images, history, outputs = gradient_matching(run, init, run.settings["full_weight"], None, [caption_term],
                                                 {"caption_targets": targets, "caption_head": head.state_dict()})
    return Synthetic(images, init, history, outputs)


METHOD = Method("caption_match", group="caption_match", family="gradient", run=run, engine=True,
                keys={"full_weight": Float(low=0), "caption_weight": Float(low=0)})
