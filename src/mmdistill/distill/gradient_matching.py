"""The loop of the `gradient` family (dc, dsa, masked_dc, caption_match, caption_concat; masked_dm with
`full_term: dc`): Dataset Condensation's gradient matching (Zhao et al. 2021), with DSA's augmentation.

Each iteration (DC's outer iteration) starts a freshly initialised network (`net`); `outer_loop` times, the
synthetic pixels take one SGD step (`lr`, `momentum`) on the layer-wise gradient distance summed over classes
(real batch of `batch_real` per class vs the synthetic set; `class_gradients` loop | vmap), and between those
steps the network trains `inner_loop` epochs on the (detached) synthetic set (SGD, lr `net_lr`, batch
`net_batch`, with the same DSA augmentation when `augment` is on, as in DSA). `outer_loop`/`inner_loop` `auto`
is DC's schedule by IPC (DC_LOOPS). KEYS is the schema of `distill.gradient`.
"""
from __future__ import annotations

from functools import partial

import torch

from mmdistill.core.config import AUTO_BOOL, BOOL, Float, Int, Spec, Str
from mmdistill.core.storage import PipelineError
from mmdistill.distill import distributed
from mmdistill.distill.engine import Engine, Run
from mmdistill.distill.losses import CLASS_GRADIENTS, MaskedTerm, gradient_match, weighted_sum
from mmdistill.nn.nets import make_net
from mmdistill.nn.train import train_classifier

KEYS = {
    "iterations": Int(low=1),
    "batch_real": Int(low=1),
    "outer_loop": Spec((int, str)),  # a positive integer or "auto" (checked with the IPC, in loops())
    "inner_loop": Spec((int, str)),
    "lr": Float(above=0),
    "momentum": Float(low=0, high=1),
    "net_lr": Float(above=0),
    "net_batch": Int(low=1),
    "net": Str(empty=False),
    "class_gradients": Str(*CLASS_GRADIENTS),
    "augment": BOOL,
    "siamese": BOOL,                  # DSA per class: one transform for a class's real and synthetic images
    "flip": AUTO_BOOL,                # auto: the prepared dataset's default (resolved by the distill run)
}

DC_LOOPS = {1: (1, 1), 10: (10, 50), 50: (50, 10)}  # DC's (outer_loop, inner_loop) by IPC


def loops(run: Run) -> tuple[int, int]:
    """(outer_loop, inner_loop) of `run`, `auto` resolved by its IPC."""
    values = []
    for key, position in (("outer_loop", 0), ("inner_loop", 1)):
        value = run.settings[key]
        if value == "auto":
            if run.ipc not in DC_LOOPS:
                raise PipelineError(f"param '{run.where[key]}' is 'auto', which DC defines only for IPC "
                                    f"{', '.join(map(str, DC_LOOPS))}; set it to an integer for IPC {run.ipc}")
            value = DC_LOOPS[run.ipc][position]
        elif isinstance(value, str) or value <= 0:
            raise PipelineError(f"param '{run.where[key]}' must be 'auto' or a positive integer, got {value!r}")
        values.append(value)
    return values[0], values[1]


def gradient_matching(run: Run, init: list[int], full_weight: float, masked: MaskedTerm | None, extra_terms=(),
                      inputs: dict | None = None):
    """Gradient matching from the train images `init`: `full_weight` x the gradient distance of the images, plus
    `masked`'s term (its `match`, or the gradient distance, on foreground-masked images), plus `extra_terms`,
    (weight, term(syn)) pairs (caption_match's caption term), in every matching step -> the engine's (images,
    loss history, extra outputs). `inputs`: what the extra terms read, for the checkpoint fingerprint (Engine)."""
    settings, device = run.settings, run.device
    net_name, net_lr, net_batch = settings["net"], settings["net_lr"], settings["net_batch"]
    how = settings["class_gradients"]
    augment = run.augmentation()
    batches = run.real_batches()
    classes, (channels, size) = batches.classes, run.train.images.shape[1:3]
    outer_loop, inner_loop = loops(run)
    if masked is not None:
        masks = masked.checked(run.train.images)
        syn_masks = masks[init].to(device)
        masked_match = masked.match or partial(gradient_match, how=how)
    engine = Engine(run, batches.images[init], {**({"masks": masks} if masked is not None else {}), **(inputs or {})})
    engine.refuse_compile("gradient matching differentiates through network gradients (double backward), "
                          "which torch.compile does not support")
    syn_labels = torch.arange(classes, device=device).repeat_interleave(run.ipc)
    shared = distributed.world()[1] > 1  # torchrun: each process matches its share of the classes
    if shared and (masked is not None or extra_terms):
        raise PipelineError(f"distill {run.name} under torchrun: only dsa and dc (no masked or caption term) split "
                            "their classes across processes; run it as one process")
    own = distributed.own_classes(classes)

    def matched(batch):  # this process's class blocks of the augmented class-major `batch`
        return distributed.own_blocks(batch, classes) if shared else batch

    def step(it):
        net = make_net(net_name, channels, classes, size).to(device)
        for outer in range(outer_loop):
            idx = batches.sample(engine.gen)
            real = batches.images[idx].to(device)
            aug = augment.draw(engine.gen, classes)
            syn = engine.images()
            terms = [(full_weight, lambda: gradient_match(net, matched(aug(real)), matched(aug(syn)), len(own), how,
                                                          labels=own))]
            if masked is not None:
                terms.append((masked.weight, lambda: masked_match(
                    net, aug(real * masks[idx].to(device)), aug(syn * syn_masks), classes)))
            terms += [(weight, lambda term=term: term(syn)) for weight, term in extra_terms]
            with engine.autocast():
                loss = weighted_sum(terms, device)
            engine.update(loss, shared)
            if outer == outer_loop - 1:
                break
            # DC's network update: plain SGD on the synthetic set, shuffled and augmented from engine.gen
            train_classifier(net, engine.images(detach=True), syn_labels, inner_loop, device, lr=net_lr,
                             batch_size=net_batch, momentum=0.0, weight_decay=0.0, decay=False, augment=augment,
                             generator=engine.gen, autocast=engine.autocast, progress=False)

    return engine.run(settings["iterations"], step)
