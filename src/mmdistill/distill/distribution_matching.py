"""The loop of the `distribution` family (dm, masked_dm): Distribution Matching (Zhao & Bilen).

Synthetic pixels (or latents) are optimised so that the class-mean embeddings under a freshly initialised network
(new weights every iteration, `net`) match those of a class-balanced batch of real images (`batch_real` per
class), both under the same DSA augmentation (`augment`, `flip`; `siamese`: per class, one transform shared by the
class's real batch and its synthetic images, as DSA); SGD with `lr`, `momentum` for `iterations`.
KEYS is the schema of `distill.distribution` (the family block a method's block overlays).
"""
from __future__ import annotations

from mmdistill.core.config import AUTO_BOOL, BOOL, Float, Int, Str
from mmdistill.core.storage import PipelineError
from mmdistill.distill import distributed
from mmdistill.distill.engine import Engine, Run
from mmdistill.distill.losses import MaskedTerm, class_means, distribution_gap, weighted_sum
from mmdistill.nn.nets import make_net

KEYS = {
    "iterations": Int(low=1),
    "batch_real": Int(low=1),
    "lr": Float(above=0),
    "momentum": Float(low=0, high=1),
    "net": Str(empty=False),
    "augment": BOOL,
    "siamese": BOOL,                  # DSA per class: one transform for a class's real and synthetic images
    "flip": AUTO_BOOL,                # auto: the prepared dataset's default (resolved by the distill run)
}


def distribution_matching(run: Run, init: list[int], full_weight: float, masked: MaskedTerm | None):
    """DM from the train images `init`: `full_weight` x the distribution gap of the images, plus `masked`'s term
    (its `match`, or the distribution gap, on foreground-masked images) -> the engine's (images, loss history,
    extra outputs)."""
    settings, device = run.settings, run.device
    net_name = settings["net"]
    augment = run.augmentation()
    batches = run.real_batches()
    classes, (channels, size) = batches.classes, run.train.images.shape[1:3]
    if masked is not None:
        masks = masked.checked(run.train.images)
        syn_masks = masks[init].to(device)
        masked_match = masked.match or distribution_gap
    engine = Engine(run, batches.images[init], {"masks": masks} if masked is not None else None)
    shared = distributed.world()[1] > 1  # torchrun: each process embeds its share of the real batch
    if shared:
        if masked is not None or (settings["augment"] and not settings["siamese"]):
            raise PipelineError(f"distill {run.name} under torchrun: only dm with siamese DSA (or augment false) "
                                "splits its real batch across processes; run it as one process")
        distributed.check_divisible(settings["batch_real"], run.where["batch_real"])
    real_means = distributed.class_means_across_ranks if shared else class_means

    def step(it):
        net = engine.compiled(make_net(net_name, channels, classes, size).to(device))
        net.requires_grad_(False)
        idx = batches.sample(engine.gen)
        if shared:
            idx = distributed.shard(idx, classes)
        real = batches.images[idx].to(device)
        aug = augment.draw(engine.gen, classes)
        syn = engine.images()
        terms = [(full_weight, lambda: distribution_gap(net, aug(real), aug(syn), classes, real_means))]
        if masked is not None:
            terms.append((masked.weight, lambda: masked_match(
                net, aug(real * masks[idx].to(device)), aug(syn * syn_masks), classes)))
        with engine.autocast():
            loss = weighted_sum(terms, device)
        engine.update(loss)

    return engine.run(settings["iterations"], step)
