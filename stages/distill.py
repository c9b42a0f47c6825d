"""distill: build a synthetic set for one (method, IPC) -> data/distilled/{method}-ipc{K}.pt

    python -m stages.distill --method dm --ipc 10

The output is a tensor file (stages.io.load_tensors) with:
  images       float32 [C*K, channels, H, W], normalised with the dataset mean/std
  labels       int64   [C*K], class-major (K images of class 0, then class 1, ...)
  source_uids  list of the real train images each synthetic image started from
  mean, std    the normalisation, to turn images back into pixels
  loss         float32 [iterations] loss curve (empty for selection methods)
  info         method, ipc, seed, settings and library versions
plus a PNG grid `outputs/figures/distilled/{method}-ipc{K}.png` (one row per class).

Methods:
  random     K seeded random real train images per class
  kmeans     the real image nearest to each per-class k-means centre (stage `select`)
  herding    per-class herding coreset of image features (stage `select`)
  kcenter    per-class greedy k-center coreset of image features (stage `select`)
  dm         Distribution Matching (Zhao & Bilen): pixels initialised from the `random`
             images, optimised so that the mean embedding of each class under a freshly
             initialised ConvNet-3 (new weights every iteration) matches that of a batch
             of real images of the class, both under the same DSA augmentation.
  masked_dm  dm's full-image term plus the same term on foreground-masked images
             (masks from stage `ground`). A synthetic image keeps the mask of the real
             image it was initialised from: the paper does not say how synthetic
             images are masked, and this keeps the object region where it started.
             The paper pairs the masked term with full-image gradient matching (DC);
             here the full-image term is DM's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stages.augment import DifferentiableAugment
from stages.data import ImageSet, denormalize, load_foreground_masks, load_split
from stages.io import PipelineError, read_parquet, save_figure, save_tensors
from stages.nets import make_net
from stages.params import load_params, param, positive, resolve_device, seed_everything, versions

DISTILLED = Path("data/distilled")
GRIDS = Path("outputs/figures/distilled")
SELECTIONS = Path("data/selections")


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
    """The real images stage `select` chose for `method` (kmeans, herding, kcenter), class-major."""
    path = SELECTIONS / f"{method}-ipc{ipc}.parquet"
    if not path.exists():
        raise PipelineError(f"{path} is missing: IPC {ipc} must be listed in 'distill.ipcs' and `select` run")
    order = "cluster" if method == "kmeans" else "rank"
    table = read_parquet(path, ["label", order, "uid"])
    position = {u: i for i, u in enumerate(train.uids)}
    rows = sorted(zip(table["label"].to_pylist(), table[order].to_pylist(), table["uid"].to_pylist()))
    return [position[u] for _, _, u in rows]


def class_means(features: torch.Tensor, classes: int) -> torch.Tensor:
    return features.view(classes, -1, features.shape[1]).mean(1)


def distribution_matching(train: ImageSet, init: list[int], params: dict, section: str, device, seed: int,
                          masks: torch.Tensor | None = None):
    """Optimise synthetic pixels so that class-mean embeddings of random ConvNets match the real ones.

    All classes go through the network in one batch (instance norm is per-sample, so this equals
    a per-class loop). With `masks`, the masked term is added with weight `masked_weight`.
    """
    iterations = positive(params, f"{section}.iterations")
    batch_real = positive(params, f"{section}.batch_real")
    lr = param(params, f"{section}.lr", float)
    momentum = param(params, f"{section}.momentum", float)
    net_name = param(params, f"{section}.net", str)
    full_weight = param(params, f"{section}.full_weight", float, 1.0)
    masked_weight = param(params, f"{section}.masked_weight", float, 0.0)
    augment = DifferentiableAugment(flip=param(params, f"{section}.flip", bool)) \
        if param(params, f"{section}.augment", bool) else (lambda x, seed: x)
    classes = len(train.class_names)
    ipc = len(init) // classes
    _, channels, height, width = train.images.shape

    real_all = train.normalized()
    labels = train.labels.numpy()
    by_class = [torch.from_numpy(np.flatnonzero(labels == c)) for c in range(classes)]
    for c, members in enumerate(by_class):
        if len(members) < batch_real:
            raise PipelineError(f"param '{section}.batch_real' = {batch_real} is larger than class "
                                f"'{train.class_names[c]}' ({len(members)} train images)")
    syn = real_all[init].clone().to(device).requires_grad_(True)
    syn_masks = masks[init].to(device) if masks is not None else None
    opt = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for it in tqdm(range(iterations), desc=f"{section} ipc{ipc}", mininterval=2):
        torch.manual_seed(seed * 100003 + it)
        net = make_net(net_name, channels, classes, height).to(device)
        for p in net.parameters():
            p.requires_grad_(False)
        idx = torch.cat([m[torch.randperm(len(m), generator=gen)[:batch_real]] for m in by_class])
        real = real_all[idx].to(device)
        aug_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))

        def term(real_x, syn_x):
            with torch.no_grad():
                real_mean = class_means(net.embed(augment(real_x, aug_seed)), classes)
            syn_mean = class_means(net.embed(augment(syn_x, aug_seed)), classes)
            return ((real_mean - syn_mean) ** 2).sum()

        loss = full_weight * term(real, syn) if full_weight else torch.zeros((), device=device)
        if masks is not None and masked_weight:
            loss = loss + masked_weight * term(real * masks[idx].to(device), syn * syn_masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
    return syn.detach().cpu(), history


def masked_dm(train, init, params, device, seed):
    masks = load_foreground_masks(train.uids, *train.images.shape[2:])
    return distribution_matching(train, init, params, "distill.masked_dm", device, seed, masks)


SELECTED = ("kmeans", "herding", "kcenter")  # real images chosen by stage `select`
METHODS = {
    "random": None,
    "kmeans": None,
    "herding": None,
    "kcenter": None,
    "dm": lambda train, init, params, device, seed: distribution_matching(train, init, params, "distill.dm",
                                                                          device, seed),
    "masked_dm": masked_dm,
}


def save_grid(images: torch.Tensor, labels: torch.Tensor, class_names, mean, std, path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    classes = len(class_names)
    ipc = len(labels) // classes
    cols = min(ipc, 10)
    pixels = denormalize(images, mean, std).permute(0, 2, 3, 1).numpy()
    fig, axes = plt.subplots(classes, cols, figsize=(cols * 0.9 + 1.5, classes * 0.9), squeeze=False)
    for c in range(classes):
        for j in range(cols):
            ax = axes[c, j]
            img = pixels[c * ipc + j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c, 0].set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    plt.close(fig)


def distill(method: str, ipc: int, params: dict) -> Path:
    if method not in METHODS:
        raise PipelineError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if ipc <= 0:
        raise PipelineError(f"IPC must be a positive integer, got {ipc}")
    seed = param(params, "seed", int)
    seed_everything(seed)
    device = resolve_device(params)
    train = load_split("train")
    init = selection(train, method, ipc) if method in SELECTED else random_selection(train, ipc, seed)
    if METHODS[method] is None:
        images, history = train.normalized()[init], []
    else:
        images, history = METHODS[method](train, init, params, device, seed)
    labels = train.labels[init]
    settings = param(params, f"distill.{method}", dict, {})
    out = DISTILLED / f"{method}-ipc{ipc}.pt"
    save_tensors({"images": images.contiguous(), "labels": labels, "source_uids": [train.uids[i] for i in init],
                  "mean": train.mean, "std": train.std, "loss": torch.tensor(history, dtype=torch.float32),
                  "info": {"method": method, "ipc": ipc, "seed": seed, "settings": settings,
                           "device": str(device), "versions": versions()}}, out)
    save_grid(images, labels, train.class_names, train.mean, train.std, GRIDS / f"{method}-ipc{ipc}.png",
              f"{method}, IPC {ipc}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--ipc", required=True, type=int)
    args = parser.parse_args()
    out = distill(args.method, args.ipc, load_params())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
