"""The matching losses of the distillation methods, over class-major batches.

Every function takes real and synthetic batches that are class-major with equal counts per class
(`classes` blocks) and returns a scalar summed over classes; each equals a per-class loop
(tests/test_engine.py checks it against the loops in distill/reference.py). DM embeds all classes in
one forward pass (masked DM's pair term, Eq. 3 of the multi-modal paper, too); DC's per-class
gradients are one backward pass per class ("loop", the default) or one torch.func.vmap call over
classes ("vmap", the earlier default: slower on CPU and not bit-identical to "loop").
`python -m benchmarks.run speed` measures their speed. `weighted_sum` and `MaskedTerm` combine terms into a
loop's loss (mmdistill.distill.distribution_matching, gradient_matching).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from mmdistill.core.storage import PipelineError


def class_means(features: torch.Tensor, classes: int) -> torch.Tensor:
    return features.view(classes, -1, features.shape[1]).mean(1)


def distribution_gap(net, real: torch.Tensor, syn: torch.Tensor, classes: int, real_means=class_means) -> torch.Tensor:
    """DM: sum over classes of the squared distance between mean real and mean synthetic embeddings
    (in float32 when the embeddings come out of bf16/fp16 autocast). `real_means`: how the real class means are
    taken (distributed.class_means_across_ranks: over every torchrun process's share of the real batch)."""
    with torch.no_grad():
        real_mean = real_means(net.embed(real).float(), classes)
    return ((real_mean - class_means(net.embed(syn).float(), classes)) ** 2).sum()


def pairwise_feature_mse(net, real: torch.Tensor, syn: torch.Tensor, classes: int) -> torch.Tensor:
    """The multi-modal paper's masked distribution matching term (Eq. 3): per class, the squared distance between
    the embeddings of every (real, synthetic) pair of the class, summed over pairs and divided by the class's real
    batch size N_B; summed over classes (float32 also under autocast).

    Computed as sum_c [K ||mu_r - mu_s||^2 + (K / N_B) sum_i ||f_i - mu_r||^2 + sum_j ||g_j - mu_s||^2] (K synthetic,
    N_B real images of class c), which equals the pair sum exactly and needs no [N_B, K, d] tensor. Unlike
    distribution_gap (class means only) it also penalises the spread of a class's synthetic embeddings: each
    synthetic image is pulled toward the real class mean."""
    with torch.no_grad():
        f = net.embed(real).float()
        f = f.view(classes, -1, f.shape[1])
    g = net.embed(syn).float()
    g = g.view(classes, -1, g.shape[1])
    n_real, n_syn = f.shape[1], g.shape[1]
    mu_r, mu_s = f.mean(1), g.mean(1)
    real_spread = ((f - mu_r[:, None]) ** 2).sum()
    syn_spread = ((g - mu_s[:, None]) ** 2).sum()
    return n_syn * ((mu_r - mu_s) ** 2).sum() + real_spread * n_syn / n_real + syn_spread


MASKED_DM_TERMS = {"pairs": pairwise_feature_mse, "class_means": distribution_gap}  # distill.masked_dm.masked_term


def caption_gap(syn_features: torch.Tensor, real_means: torch.Tensor, classes: int) -> torch.Tensor:
    """Caption matching: sum over classes of the squared distance between the mean caption feature of the
    synthetic images (class-major) and the mean caption embedding of the real images of the class."""
    if syn_features.shape[1] != real_means.shape[1] or len(real_means) != classes:
        raise PipelineError(f"caption features of the synthetic images are {tuple(syn_features.shape[1:])}-d but "
                            f"the real class means are {tuple(real_means.shape)} (expected ({classes}, d))")
    return ((class_means(syn_features, classes) - real_means) ** 2).sum()


CLASS_GRADIENTS = ("loop", "vmap")


def class_gradients(net, images: torch.Tensor, classes: int, how: str = "loop", create_graph: bool = True,
                    labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Per class, the gradient of the mean cross-entropy of that class's images w.r.t. each parameter
    (a dict of [classes, *param.shape]); differentiable w.r.t. `images` if `create_graph`.
    `how`: "loop" (a backward pass per class) or "vmap" (torch.func over classes). `labels`: the class of each of
    the `classes` blocks (default 0, 1, ...; a torchrun process's own classes, distributed.own_classes)."""
    x = images.view(classes, -1, *images.shape[1:])
    y = torch.tensor(labels) if labels is not None else torch.arange(classes)
    y = y.to(images.device).view(classes, 1).expand(classes, x.shape[1])
    if how == "loop":
        names, params = zip(*net.named_parameters())
        per_class = [torch.autograd.grad(F.cross_entropy(net(xc), yc), params, create_graph=create_graph)
                     for xc, yc in zip(x, y)]
        return {name: torch.stack([g[i] for g in per_class]) for i, name in enumerate(names)}
    if how != "vmap":
        raise PipelineError(f"unknown class-gradient method {how!r}; valid: {', '.join(CLASS_GRADIENTS)}")
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p, xc, yc):
        return F.cross_entropy(functional_call(net, p, (xc,)), yc)

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def layerwise_distance(a: dict, b: dict) -> torch.Tensor:
    """DC's distance: per layer, per output unit, 1 - cosine of the two gradients, summed over units,
    layers and classes. Parameters with one value per unit (biases, norm scales) are skipped, as in DC.
    Written (|a||b| - a.b) / (|a||b| + eps) rather than DC's 1 - a.b / (|a||b| + eps): the same up to
    eps, but units with (near-)zero gradients add 0 instead of up to 1, so identical sets give 0."""
    total = 0.0
    for name, ga in a.items():
        if ga.dim() <= 2:  # [classes, units]
            continue
        ga, gb = ga.flatten(2), b[name].flatten(2)
        norms = ga.norm(dim=-1) * gb.norm(dim=-1)
        total = total + ((norms - (ga * gb).sum(-1)) / (norms + 1e-6)).sum()
    return total


def squared_distance(a: dict, b: dict) -> torch.Tensor:
    """The multi-modal paper's masked gradient matching distance (Eq. 2): the squared L2 distance between the two
    gradients over every parameter (biases and norm scales included), summed over classes."""
    total = 0.0
    for name, ga in a.items():
        total = total + ((ga - b[name]) ** 2).sum()
    return total


GRADIENT_DISTANCES = {"cosine": layerwise_distance, "l2": squared_distance}


def gradient_match(net, real: torch.Tensor, syn: torch.Tensor, classes: int, how: str = "loop",
                   distance: str = "cosine", labels: list[int] | None = None) -> torch.Tensor:
    """DC: the distance between the per-class gradients of real and synthetic images (`how`, `labels`: see
    class_gradients); `distance` "cosine" is DC's layer-wise distance, "l2" the squared L2 distance."""
    if distance not in GRADIENT_DISTANCES:
        raise PipelineError(f"unknown gradient distance {distance!r}; valid: {', '.join(GRADIENT_DISTANCES)}")
    real_grads = {k: v.detach() for k, v in class_gradients(net, real, classes, how, False, labels).items()}
    return GRADIENT_DISTANCES[distance](real_grads, class_gradients(net, syn, classes, how, True, labels))


def covariance(features: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-class (biased) covariance matrices [classes, d, d] of class-major features."""
    f = features.view(classes, -1, features.shape[1])
    f = f - f.mean(1, keepdim=True)
    return f.transpose(1, 2) @ f / f.shape[1]


def dsdm_terms(real_features: torch.Tensor, syn_features: torch.Tensor, history: torch.Tensor | None,
               classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DSDM's prototype loss, semantic-diversity (covariance) loss and historical-prototype loss.

    `history` is the [classes, d] EMA memory of synthetic prototypes under the current network
    (None before that network's first use, when the historical term is 0). Computed in float32, also
    under bf16/fp16 autocast."""
    with torch.autocast(real_features.device.type, enabled=False):
        real_features, syn_features = real_features.float(), syn_features.float()
        d = real_features.shape[1]
        syn_mean = class_means(syn_features, classes)
        proto = ((class_means(real_features, classes) - syn_mean) ** 2).sum()
        diversity = ((covariance(real_features, classes) - covariance(syn_features, classes)) ** 2).sum() / d
        hist = ((syn_mean - history) ** 2).sum() if history is not None else syn_mean.new_zeros(())
    return proto, diversity, hist


def factor_encode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """IDC's partition: every `factor`^2 consecutive images become one image of `factor` x `factor`
    tiles, each the image downsampled by `factor` (tile j at row j // factor, column j % factor)."""
    n, c, h, w = images.shape
    if h % factor or w % factor:
        raise PipelineError(f"image size {h}x{w} is not divisible by the factor {factor}")
    small = F.interpolate(images, size=(h // factor, w // factor), mode="area")
    small = small.view(n // factor**2, factor, factor, c, h // factor, w // factor)
    return small.permute(0, 3, 1, 4, 2, 5).reshape(n // factor**2, c, h, w)


def factor_decode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse layout of factor_encode: each tile upsampled (bilinear) to the full size, in tile order."""
    n, c, h, w = images.shape
    if factor == 1:
        return images
    tiles = images.view(n, c, factor, h // factor, factor, w // factor).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * factor**2, c, h // factor, w // factor)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)



def weighted_sum(terms, device) -> torch.Tensor:
    """Sum of weight * term() over (weight, term) pairs; a term whose weight is 0 is not computed."""
    loss = torch.zeros((), device=device)
    for weight, term in terms:
        if weight:
            loss = loss + weight * term()
    return loss


@dataclass(frozen=True)
class MaskedTerm:
    """A matching term on foreground-masked images (masked_dm, masked_dc), added with `weight` to a loop's loss:
    the real batch times its images' masks against the synthetic images times theirs (a synthetic image keeps the
    mask of the real image it started from). `masks`: one [1, H, W] mask per train image; `match(net, real, syn,
    classes)`: its loss, or None for the loop's own (distribution_gap in DM, gradient_match in DC)."""
    masks: torch.Tensor
    weight: float
    match: Callable | None

    def checked(self, images: torch.Tensor) -> torch.Tensor:
        """The masks, checked against the train images [N, C, H, W]."""
        expected = (len(images), 1, *images.shape[2:])
        if tuple(self.masks.shape) != expected:
            raise PipelineError(f"foreground masks have shape {tuple(self.masks.shape)}, expected {expected} "
                                f"(one 1-channel mask per train image)")
        return self.masks
