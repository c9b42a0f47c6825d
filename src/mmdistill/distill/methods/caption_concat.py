"""caption_concat: the multi-modal paper's caption concatenation: images distilled by dsa's gradient matching,
plus a caption embedding per synthetic image (`captions: source` = its source real image's, `cluster` = the mean
over its k-means cluster, images initialised from the clusters' nearest images of stage select). Stage evaluate
then trains a classifier on concat(penultimate features, caption embedding). Captions are instance captions only
(label free; a template naming the class is refused); test images use their own (stage annotate_test).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmdistill.annotate.cache import annotation_backend
from mmdistill.core.config import Str
from mmdistill.core.paths import selection
from mmdistill.core.storage import PipelineError, read_parquet
from mmdistill.data.datasets import ImageSet
from mmdistill.distill.engine import Run
from mmdistill.distill.gradient_matching import gradient_matching
from mmdistill.distill.initial import random_selection, selected
from mmdistill.distill.methods import Method, Synthetic
from mmdistill.embed.features import feature_metadata, load_features
from mmdistill.nn.caption_head import image_caption_vectors


def label_free_captions() -> None:
    """caption_concat uses instance captions only; refuse a caption template that names the class."""
    meta = annotation_backend("captions")
    template = meta.get("settings", {}).get("instance_template", "")
    if meta.get("backend") == "offline_template" and "{class_name}" in template:
        raise PipelineError(f"param 'caption.instance_template' = {template!r} names the class: caption_concat "
                            "would leak the label through the test images' captions")


def concat_captions(train: ImageSet, init: list[int], how: str, ipc: int) -> torch.Tensor:
    """A caption embedding per synthetic image, from its source image (`how` source) or the mean over the members
    of its k-means cluster (cluster; members = the class's train images nearest to that centre in
    data/features/image; `init` holds the clusters' nearest images)."""
    label_free_captions()
    real = image_caption_vectors(train.uids, "instances")
    if how == "source":
        return real[init]
    clusters = read_parquet(selection("kmeans", ipc), ["label", "cluster", "center"]).to_pylist()
    index, vectors = load_features("image")
    row = {u: r for r, u in enumerate(index["uid"].to_pylist())}
    features = torch.from_numpy(vectors[[row[u] for u in train.uids]])
    out = []
    for c in range(len(train.class_names)):
        centres = torch.tensor([r["center"] for r in sorted(clusters, key=lambda r: r["cluster"]) if r["label"] == c])
        members = torch.nonzero(train.labels == c).flatten()
        nearest = torch.cdist(features[members], centres).argmin(1)
        out += [F.normalize(real[members[nearest == k]].sum(0), dim=0) for k in range(len(centres))]
    return torch.stack(out)


def run(run: Run) -> Synthetic:
    how = run.settings["captions"]
    if how == "cluster":
        init = selected(run.train, "kmeans", run.ipc)
    else:
        init = random_selection(run.train, run.ipc, run.seed)
    captions = concat_captions(run.train, init, how, run.ipc)
    images, history, outputs = gradient_matching(run, init, full_weight=1.0, masked=None)
    return Synthetic(images, init, history, {"captions": captions.contiguous(),
                                             "caption_space": feature_metadata("caption"), **outputs})


METHOD = Method("caption_concat", group="caption_concat", family="gradient", run=run, engine=True,
                keys={"captions": Str("source", "cluster")})
