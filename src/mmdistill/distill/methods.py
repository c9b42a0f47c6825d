"""distill: build a synthetic set for one (method, IPC) -> data/distilled/{method}-ipc{K}.pt

    python -m mmdistill.stages.distill --method dm --ipc 10 [--resume]

The output is a tensor file (mmdistill.core.storage.load_tensors) with:
  images       float32 [N, channels, H, W], normalised with the dataset mean/std; N = C*K, except
               dsdm with factor l: N = C*K*l^2 decoded images (what evaluation trains on)
  labels       int64   [N], class-major (the images of class 0, then class 1, ...)
  source_uids  list of the real train images each image started from (one per entry of `images`)
  mean, std    the normalisation, to turn images back into pixels
  loss         float32 [iterations] loss curve (empty for selection methods)
  info         method, ipc, seed, settings, engine settings and library versions
  encoded, factor, pool_net   dsdm only: the stored C*K images (l x l tiles each) and l
  captions     caption_concat only: float32 [N, d], the caption embedding of each synthetic image
               (stages/caption_head.py image_caption_vectors: mean of instance-caption embeddings)
  caption_space  caption_concat only: the caption features' encoder metadata
  latents, vae  `distill.engine.parameterisation: latent` only: the optimised latents (dsdm: of the
               encoded images) and the VAE (source, revision, subfolder, scaling_factor, weight digest);
               `images` are then the latents decoded by that VAE, clamped to valid pixels
plus a PNG grid `outputs/figures/distilled/{method}-ipc{K}.png` (one row per class; dsdm: encoded).
Optimising methods also write a DVCLive loss curve and periodic grids under
`outputs/distill/{method}-ipc{K}/` and checkpoints `data/checkpoints/{method}-ipc{K}.pt` that
`--resume` continues from (stages/engine.py); the result is byte-identical to an uninterrupted run.

Methods (the optimising ones run on stages/engine.py with the losses of stages/matching.py):
  random     K seeded random real train images per class
  kmeans     the real image nearest to each per-class k-means centre (stage `select`)
  herding    per-class herding coreset of image features (stage `select`)
  kcenter    per-class greedy k-center coreset of image features (stage `select`)
  forgetting per-class most-forgotten train images (stages `forgetting` and `select`)
  dm         Distribution Matching (Zhao & Bilen): pixels initialised from the `random`
             images, optimised so that the mean embedding of each class under a freshly
             initialised ConvNet-3 (new weights every iteration) matches that of a batch
             of real images of the class, both under the same DSA augmentation.
  masked_dm  dm's full-image term plus the same term on foreground-masked images
             (masks from stage `ground`). A synthetic image keeps the mask of the real
             image it was initialised from: the paper does not say how synthetic
             images are masked, and this keeps the object region where it started.
             `full_term: dc` pairs the masked DM term with full-image gradient matching
             instead (the paper's pairing; then the dc keys apply: lr, net_lr, loops).
  dc         Dataset Condensation (Zhao et al. 2021): per outer iteration a fresh ConvNet-3;
             `outer_loop` pixel steps on DC's layer-wise gradient distance (per class, real
             vs synthetic), with `inner_loop` epochs of training the network on the synthetic
             set between them. No augmentation.
  dsa        dc with differentiable siamese augmentation (stages/augment.py) on real and
             synthetic images and in the network updates.
  masked_dc  dsa's gradient-matching term on full images plus the same term on
             foreground-masked images (masks as in masked_dm), weights in params.
  dsdm       Diversified Semantic Distribution Matching: a network drawn each iteration from
             the pool of stage `pretrain`; prototype + covariance + historical-prototype
             (EMA memory per pool network) losses; IDC factor l (l^2 tiles per stored image).
  caption_match   the multi-modal paper's caption matching: lambda_1 (`full_weight`) x dsa's gradient
             matching + lambda_2 (`caption_weight`) x the squared distance, summed over classes, between the
             mean caption feature of a class's synthetic images (through the frozen differentiable head of
             stage caption_head) and the mean caption embedding of the class's real train images. The
             paper names neither the distance nor the target; this is our reading (a DM-style class-mean
             match in caption space), added to every matching step of the outer loop.
  caption_concat  the paper's caption concatenation: images distilled by dsa's gradient matching (its
             own keys), plus a caption embedding per synthetic image (`captions: source` = its source real
             image's, `cluster` = the mean over its k-means cluster, images initialised from the clusters'
             nearest images of stage select). stages/evaluate.py then trains a classifier on
             concat(penultimate features, caption embedding). Captions are instance captions only (label
             free; a template naming the class is refused); test images use their own (stage annotate_test).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmdistill.annotate.cache import annotation_backend
from mmdistill.core.config import param, positive
from mmdistill.core.paths import DISTILLED, DISTILLED_FIGURES, POOL, SELECTIONS
from mmdistill.core.runtime import resolve_device, seed_everything, versions
from mmdistill.core.storage import (
    PipelineError,
    load_tensors,
    read_parquet,
    save_tensors,
)
from mmdistill.data.datasets import ImageSet, load_foreground_masks, load_split
from mmdistill.distill.engine import Engine, RealBatches, draw_seed, save_grid
from mmdistill.distill.losses import (
    CLASS_GRADIENTS,
    caption_gap,
    class_means,
    distribution_gap,
    dsdm_terms,
    factor_decode,
    factor_encode,
    gradient_match,
)
from mmdistill.embed.features import feature_metadata, load_features
from mmdistill.nn.augment import DifferentiableAugment
from mmdistill.nn.caption_head import image_caption_vectors, load_head
from mmdistill.nn.nets import make_net
from mmdistill.nn.train import train_classifier


def random_selection(train: ImageSet, ipc: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    labels = train.labels.numpy()
    picked = []
    for c, name in enumerate(train.class_names):
        members = np.flatnonzero(labels == c)
        if ipc > len(members):
            raise PipelineError(f"IPC {ipc} is larger than class '{name}', which has {len(members)} train images")
        picked += sorted(rng.choice(members, size=ipc, replace=False).tolist())
    return picked


def selection(train: ImageSet, method: str, ipc: int) -> list[int]:
    """The real images stage `select` chose for `method` (kmeans, herding, kcenter, forgetting), class-major."""
    path = SELECTIONS / f"{method}-ipc{ipc}.parquet"
    if not path.exists():
        raise PipelineError(f"{path} is missing: IPC {ipc} must be listed in 'distill.ipcs' and `select` run")
    order = "cluster" if method == "kmeans" else "rank"
    table = read_parquet(path, ["label", order, "uid"])
    position = {u: i for i, u in enumerate(train.uids)}
    rows = sorted(zip(table["label"].to_pylist(), table[order].to_pylist(), table["uid"].to_pylist()))
    return [position[u] for _, _, u in rows]


def _show(train: ImageSet, name: str):
    """The engine's grid callback: synthetic images (one row per class) at an iteration."""
    classes = len(train.class_names)

    def show(images, path):
        labels = torch.arange(classes).repeat_interleave(len(images) // classes)
        save_grid(images, labels, train.class_names, train.mean, train.std, path, f"{name}, {path.stem}")
    return show


def _augmentation(params: dict, section: str):
    if param(params, f"{section}.augment", bool):
        return DifferentiableAugment(flip=param(params, f"{section}.flip", bool))
    return lambda x, seed: x


def _checked_masks(masks: torch.Tensor, train: ImageSet) -> torch.Tensor:
    expected = (len(train), 1, *train.images.shape[2:])
    if tuple(masks.shape) != expected:
        raise PipelineError(f"foreground masks have shape {tuple(masks.shape)}, expected {expected} "
                            f"(one 1-channel mask per train image)")
    return masks


def weighted_sum(terms, device) -> torch.Tensor:
    """Sum of weight * term() over (weight, term) pairs; a term whose weight is 0 is not computed."""
    loss = torch.zeros((), device=device)
    for weight, term in terms:
        if weight:
            loss = loss + weight * term()
    return loss


def distribution_matching(train: ImageSet, init: list[int], params: dict, section: str, device, seed: int,
                          masks: torch.Tensor | None = None, resume: bool = False):
    """DM (and masked DM with `masks`): optimise synthetic pixels so that the class-mean embeddings
    under a freshly initialised network (new weights every iteration) match those of real batches.
    The masked term is added with weight `masked_weight`, the full-image term has `full_weight`."""
    iterations = positive(params, f"{section}.iterations")
    net_name = param(params, f"{section}.net", str)
    full_weight = param(params, f"{section}.full_weight", float, 1.0)
    masked_weight = param(params, f"{section}.masked_weight", float, 0.0)
    augment = _augmentation(params, section)
    batches = RealBatches(train, positive(params, f"{section}.batch_real"), f"{section}.batch_real")
    classes, (channels, size) = batches.classes, train.images.shape[1:3]
    name = f"{section.split('.')[-1]}-ipc{len(init) // classes}"
    engine = Engine(name, batches.images[init], params, section, device, seed, resume, _show(train, name))
    if masks is not None:
        masks = _checked_masks(masks, train)
        syn_masks = masks[init].to(device)

    def step(it):
        net = engine.compiled(make_net(net_name, channels, classes, size).to(device))
        net.requires_grad_(False)
        idx = batches.sample(engine.gen)
        real = batches.images[idx].to(device)
        aug_seed = draw_seed(engine.gen)
        syn = engine.images()
        with engine.autocast():
            loss = weighted_sum([
                (full_weight, lambda: distribution_gap(net, augment(real, aug_seed), augment(syn, aug_seed), classes)),
                (masked_weight if masks is not None else 0.0, lambda: distribution_gap(
                    net, augment(real * masks[idx].to(device), aug_seed), augment(syn * syn_masks, aug_seed),
                    classes))], device)
        engine.update(loss)

    return engine.run(iterations, step)


DC_LOOPS = {1: (1, 1), 10: (10, 50), 50: (50, 10)}  # DC's (outer_loop, inner_loop) by IPC


def _loops(params: dict, section: str, ipc: int) -> tuple[int, int]:
    loops = []
    for key, position in (("outer_loop", 0), ("inner_loop", 1)):
        value = param(params, f"{section}.{key}", (int, str), "auto")
        if value == "auto":
            if ipc not in DC_LOOPS:
                raise PipelineError(f"param '{section}.{key}' is 'auto', which DC defines only for IPC "
                                    f"{', '.join(map(str, DC_LOOPS))}; set it to an integer for IPC {ipc}")
            value = DC_LOOPS[ipc][position]
        elif isinstance(value, str) or value <= 0:
            raise PipelineError(f"param '{section}.{key}' must be 'auto' or a positive integer, got {value!r}")
        loops.append(value)
    return loops[0], loops[1]


def gradient_matching(train: ImageSet, init: list[int], params: dict, section: str, device, seed: int,
                      masks: torch.Tensor | None = None, resume: bool = False, masked_term: str = "dc",
                      extra_terms=()):
    """DC / DSA (and masked DC with `masks`). Each iteration (DC's outer iteration) starts a freshly
    initialised network; `outer_loop` times, the synthetic pixels take one step on the layer-wise
    gradient distance summed over classes, and between those steps the network trains `inner_loop`
    epochs on the (detached) synthetic set (SGD, lr `net_lr`, batch `net_batch`, with the same DSA
    augmentation when `augment` is on, as in DSA). With `masks`, the masked term is gradient matching
    (`masked_term` "dc": masked DC) or DM's distribution gap under the same network ("dm": masked DM
    as the multi-modal paper pairs it, with full-image gradient matching). `extra_terms` are further
    (weight, term(syn)) pairs added to every matching step's loss (caption_match's caption term)."""
    iterations = positive(params, f"{section}.iterations")
    net_name = param(params, f"{section}.net", str)
    net_lr = param(params, f"{section}.net_lr", float)
    net_batch = positive(params, f"{section}.net_batch", int, 256)
    full_weight = param(params, f"{section}.full_weight", float, 1.0)
    masked_weight = param(params, f"{section}.masked_weight", float, 0.0)
    how = param(params, f"{section}.class_gradients", str, "loop", choices=CLASS_GRADIENTS)
    augment = _augmentation(params, section)
    batches = RealBatches(train, positive(params, f"{section}.batch_real"), f"{section}.batch_real")
    classes, (channels, size) = batches.classes, train.images.shape[1:3]
    ipc = len(init) // classes
    outer_loop, inner_loop = _loops(params, section, ipc)
    name = f"{section.split('.')[-1]}-ipc{ipc}"
    engine = Engine(name, batches.images[init], params, section, device, seed, resume, _show(train, name))
    engine.refuse_compile("gradient matching differentiates through network gradients (double backward), "
                          "which torch.compile does not support")
    syn_labels = torch.arange(classes, device=device).repeat_interleave(ipc)
    if masks is not None:
        masks = _checked_masks(masks, train)
        syn_masks = masks[init].to(device)

    def step(it):
        net = make_net(net_name, channels, classes, size).to(device)
        for outer in range(outer_loop):
            idx = batches.sample(engine.gen)
            real = batches.images[idx].to(device)
            aug_seed = draw_seed(engine.gen)
            syn = engine.images()
            with engine.autocast():
                masked_match = partial(gradient_match, how=how) if masked_term == "dc" else distribution_gap
                loss = weighted_sum([
                    (full_weight, lambda: gradient_match(net, augment(real, aug_seed), augment(syn, aug_seed),
                                                         classes, how)),
                    (masked_weight if masks is not None else 0.0, lambda: masked_match(
                        net, augment(real * masks[idx].to(device), aug_seed), augment(syn * syn_masks, aug_seed),
                        classes))] + [(weight, lambda term=term: term(syn)) for weight, term in extra_terms], device)
            engine.update(loss)
            if outer == outer_loop - 1:
                break
            # DC's network update: plain SGD on the synthetic set, shuffled and augmented from engine.gen
            train_classifier(net, engine.images(detach=True), syn_labels, inner_loop, device, lr=net_lr,
                             batch_size=net_batch, momentum=0.0, weight_decay=0.0, decay=False, augment=augment,
                             generator=engine.gen, autocast=engine.autocast, progress=False)

    return engine.run(iterations, step)


def load_pool(device) -> tuple[str, list]:
    """The pre-trained networks of stage `pretrain` (frozen, eval mode)."""
    pool = load_tensors(POOL)
    nets = []
    for state in pool["states"]:
        net = make_net(pool["net"], pool["channels"], pool["classes"], pool["image_size"])
        net.load_state_dict(state)
        nets.append(net.to(device).eval().requires_grad_(False))
    return pool["net"], nets


def dsdm(train: ImageSet, init: list[int], params: dict, section: str, device, seed: int, resume: bool = False):
    """DSDM: prototype + lambda_diversity * covariance + lambda_history * historical-prototype matching
    under a network drawn each iteration from the pre-trained pool, with IDC's factor: `init` holds
    factor^2 real images per synthetic slot, packed as tiles; the loss sees the decoded (upsampled)
    tiles. Each pool network keeps its own EMA memory of synthetic prototypes (rate `ema`); its
    historical term is 0 until that network has been used once (the paper's h^(1) = 0)."""
    iterations = positive(params, f"{section}.iterations")
    factor = positive(params, f"{section}.factor")
    lambda_div = param(params, f"{section}.lambda_diversity", float)
    lambda_hist = param(params, f"{section}.lambda_history", float)
    ema = param(params, f"{section}.ema", float)
    augment = _augmentation(params, section)
    batches = RealBatches(train, positive(params, f"{section}.batch_real"), f"{section}.batch_real")
    classes = batches.classes
    net_name, pool = load_pool(device)
    name = f"dsdm-ipc{len(init) // classes // factor**2}"
    engine = Engine(name, factor_encode(batches.images[init], factor), params, section, device, seed, resume,
                    _show(train, name))
    dim = pool[0].embed(batches.images[:1].to(device)).shape[1]
    pool = [engine.compiled(net) for net in pool]
    engine.state = {"memory": torch.zeros(len(pool), classes, dim, device=device),
                    "used": torch.zeros(len(pool), dtype=torch.bool, device=device)}

    def step(it):
        m = int(torch.randint(len(pool), (1,), generator=engine.gen))
        net, memory, used = pool[m], engine.state["memory"], engine.state["used"]
        idx = batches.sample(engine.gen)
        real = batches.images[idx].to(device)
        aug_seed = draw_seed(engine.gen)
        with engine.autocast():
            with torch.no_grad():
                real_features = net.embed(augment(real, aug_seed))
            syn_features = net.embed(augment(factor_decode(engine.images(), factor), aug_seed))
            proto, diversity, hist = dsdm_terms(real_features, syn_features, memory[m] if used[m] else None, classes)
            loss = proto + lambda_div * diversity + lambda_hist * hist
        engine.update(loss)
        with torch.no_grad(), engine.autocast():
            prototypes = class_means(net.embed(factor_decode(engine.images(), factor)), classes).float()
        memory[m] = ema * memory[m] + (1 - ema) * prototypes if used[m] else prototypes
        used[m] = True

    return (*engine.run(iterations, step), net_name)


def caption_match(train: ImageSet, init: list[int], params: dict, section: str, device, seed: int,
                  resume: bool = False):
    """Caption matching: lambda_1 (`full_weight`) x dsa/dc gradient matching + lambda_2 (`caption_weight`) x
    caption_gap between the caption features of the synthetic images (through the frozen head of stage
    caption_head) and the mean caption embedding of all real train images of each class."""
    head, saved = load_head(device, feature_metadata("caption").get("dim"))
    real = image_caption_vectors(train.uids, saved["target"])
    classes = len(train.class_names)
    has_caption = real.norm(dim=1) > 0
    targets = torch.stack([real[(train.labels == c) & has_caption].mean(0) for c in range(classes)]).to(device)
    if torch.isnan(targets).any():
        raise PipelineError("caption_match: some class has no train image with a caption in data/features/caption")
    caption_weight = param(params, f"{section}.caption_weight", float)
    return gradient_matching(train, init, params, section, device, seed, resume=resume,
                             extra_terms=[(caption_weight, lambda syn: caption_gap(head(syn), targets, classes))])


def label_free_captions() -> None:
    """caption_concat uses instance captions only; refuse a caption template that names the class."""
    meta = annotation_backend("captions")
    template = meta.get("settings", {}).get("instance_template", "")
    if meta.get("backend") == "offline_template" and "{class_name}" in template:
        raise PipelineError(f"param 'caption.instance_template' = {template!r} names the class: caption_concat "
                            "would leak the label through the test images' captions")


def concat_captions(train: ImageSet, init: list[int], params: dict, section: str, ipc: int) -> torch.Tensor:
    """caption_concat: a caption embedding per synthetic image, from its source image (`captions: source`) or
    the mean over the members of its k-means cluster (`captions: cluster`; members = the class's train
    images nearest to that centre in data/features/image; `init` holds the clusters' nearest images)."""
    label_free_captions()
    real = image_caption_vectors(train.uids, "instances")
    if param(params, f"{section}.captions", str, choices=("source", "cluster")) == "source":
        return real[init]
    clusters = read_parquet(SELECTIONS / f"kmeans-ipc{ipc}.parquet", ["label", "cluster", "center"]).to_pylist()
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


def optimise(method: str, train: ImageSet, ipc: int, params: dict, device, seed: int, resume: bool):
    """Run an optimising method -> (images, label/source indices into train, loss history, extra outputs).
    The engine decodes the optimised tensor (pixels, or latents) into the final images."""
    section = f"distill.{method}"
    if method == "dsdm":
        factor = positive(params, f"{section}.factor")
        init = random_selection(train, ipc * factor**2, seed)
        encoded, history, outputs, net_name = dsdm(train, init, params, section, device, seed, resume)
        return factor_decode(encoded, factor), init, history, {"encoded": encoded.contiguous(), "factor": factor,
                                                               "pool_net": net_name, **outputs}
    if method == "caption_concat":
        cluster = param(params, f"{section}.captions", str, choices=("source", "cluster")) == "cluster"
        init = selection(train, "kmeans", ipc) if cluster else random_selection(train, ipc, seed)
        captions = concat_captions(train, init, params, section, ipc)
        images, history, outputs = gradient_matching(train, init, params, section, device, seed, resume=resume)
        return images, init, history, {"captions": captions.contiguous(),
                                       "caption_space": feature_metadata("caption"), **outputs}
    init = random_selection(train, ipc, seed)
    masks = load_foreground_masks(train.uids, *train.images.shape[2:]) if method.startswith("masked_") else None
    if method == "caption_match":
        images, history, outputs = caption_match(train, init, params, section, device, seed, resume)
    elif method == "masked_dm" and param(params, f"{section}.full_term", str, "dm", choices=("dm", "dc")) == "dc":
        images, history, outputs = gradient_matching(train, init, params, section, device, seed, masks, resume, "dm")
    elif method in ("dm", "masked_dm"):
        images, history, outputs = distribution_matching(train, init, params, section, device, seed, masks, resume)
    else:
        images, history, outputs = gradient_matching(train, init, params, section, device, seed, masks, resume)
    return images, init, history, outputs


SELECTED = ("kmeans", "herding", "kcenter", "forgetting")  # real images chosen by stage `select`
METHODS = ("random", "kmeans", "herding", "kcenter", "forgetting", "dm", "masked_dm", "dc", "dsa", "masked_dc",
           "dsdm", "caption_match", "caption_concat")
OPTIMISED = ("dm", "masked_dm", "dc", "dsa", "masked_dc", "dsdm", "caption_match", "caption_concat")


def distill(method: str, ipc: int, params: dict, resume: bool = False) -> Path:
    if method not in METHODS:
        raise PipelineError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if ipc <= 0:
        raise PipelineError(f"IPC must be a positive integer, got {ipc}")
    seed = param(params, "seed", int)
    seed_everything(seed)
    device = resolve_device(params)
    train = load_split("train")
    extra = {}
    if method in OPTIMISED:
        images, init, history, extra = optimise(method, train, ipc, params, device, seed, resume)
    else:
        init = selection(train, method, ipc) if method in SELECTED else random_selection(train, ipc, seed)
        images, history = train.normalized()[init], []
    labels = train.labels[init]
    settings = param(params, f"distill.{method}", dict, {})
    out = DISTILLED / f"{method}-ipc{ipc}.pt"
    save_tensors({"images": images.contiguous(), "labels": labels, "source_uids": [train.uids[i] for i in init],
                  "mean": train.mean, "std": train.std, "loss": torch.tensor(history, dtype=torch.float32),
                  **extra, "info": {"method": method, "ipc": ipc, "seed": seed, "settings": settings,
                                    "engine": param(params, "distill.engine", dict, {}) if method in OPTIMISED else {},
                                    "device": str(device), "versions": versions()}}, out)
    shown = extra.get("encoded", images)
    save_grid(shown, torch.arange(len(train.class_names)).repeat_interleave(len(shown) // len(train.class_names)),
              train.class_names, train.mean, train.std, DISTILLED_FIGURES / f"{method}-ipc{ipc}.png", f"{method}, IPC {ipc}")
    return out
