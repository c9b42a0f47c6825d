"""Train fresh networks on one synthetic set.

The stage, its outputs and their schema: mmdistill.stages.evaluate.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmdistill.core.config import param, positive
from mmdistill.core.paths import FEATURES_HELDOUT, distilled_set, run_name
from mmdistill.core.runtime import autocast_of, compile_backend_of, resolve_device, seed_everything, versions
from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.data.datasets import ImageSet, denormalize, load_split, normalize, resolve_flip
from mmdistill.nn.augment import from_params as augment_from_params
from mmdistill.nn.caption_head import image_caption_vectors
from mmdistill.nn.nets import make_net
from mmdistill.nn.train import accuracy, train_classifier


def net_names(params: dict, channels: int, classes: int, size: int) -> list[str]:
    """`evaluate.nets`, each checked by building it for this input before any training."""
    names = param(params, "evaluate.nets", list)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise PipelineError(f"param 'evaluate.nets' must be a non-empty list of distinct network names, got {names!r}")
    for name in names:
        try:
            make_net(name, channels, classes, size)
        except PipelineError as exc:
            raise PipelineError(f"param 'evaluate.nets': {exc}") from exc
    return names


class CaptionConcat(nn.Module):
    """caption_concat's classifier: a network's penultimate features concatenated with the image's caption
    embedding, then one linear layer (the network's own classifier is not used)."""

    def __init__(self, net: nn.Module, caption_dim: int, classes: int):
        super().__init__()
        if not isinstance(getattr(net, "classifier", None), nn.Linear):
            raise PipelineError(f"caption_concat needs a network whose last layer is a linear `classifier`; "
                                f"{type(net).__name__} has none")
        self.net = net
        self.classifier = nn.Linear(net.classifier.in_features + caption_dim, classes)
        del net.classifier

    def forward(self, x: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.net.embed(x), captions], 1))


def train_and_score(images: torch.Tensor, labels: torch.Tensor, val: ImageSet, test: ImageSet, params: dict,
                    epochs: int, repeats: int, augment: bool, desc: str,
                    captions: tuple | None = None) -> tuple[dict, dict]:
    """Train `repeats` fresh networks per architecture on (images, labels); score them on val and test ->
    (metrics, record) as in the outputs above, the record without method, ipc and distill.
    With `captions` = (train, val, test) caption embeddings, the networks are CaptionConcat classifiers."""
    seed = param(params, "seed", int)
    device = resolve_device(params)
    lr = param(params, "evaluate.lr", float)
    batch_size = positive(params, "evaluate.batch_size")
    precision, _, autocast = autocast_of(params, "evaluate.precision", device)
    backend = compile_backend_of(params, "evaluate.compile", device)
    flip = resolve_flip(param(params, "evaluate.flip"), "evaluate.flip")
    augment = augment_from_params(params, flip) if augment else None
    channels, size = images.shape[1], images.shape[2]
    names = net_names(params, channels, len(test.class_names), size)
    val_x, test_x = val.normalized(), test.normalized()
    metrics, accuracies = {}, {}
    for name in names:
        test_acc, val_acc = [], []
        for r in range(repeats):
            seed_everything(seed + r)
            net = make_net(name, channels, len(test.class_names), size)
            train_c, val_c, test_c = captions or (None, None, None)
            if captions is not None:
                net = CaptionConcat(net, train_c.shape[1], len(test.class_names))
            if backend:  # the compiled module shares the network's parameters
                net = torch.compile(net, backend=backend)
            train_classifier(net, images, labels, epochs, device, lr=lr, batch_size=batch_size, augment=augment,
                             seed=seed + r, desc=f"{desc} {name} #{r + 1}/{repeats}", captions=train_c,
                             autocast=autocast)
            val_acc.append(100 * accuracy(net, val_x, val.labels, device, captions=val_c, autocast=autocast))
            test_acc.append(100 * accuracy(net, test_x, test.labels, device, captions=test_c, autocast=autocast))
        metrics[name] = {
            "test_accuracy_mean": round(float(np.mean(test_acc)), 2),
            "test_accuracy_std": round(float(np.std(test_acc)), 2),
            "val_accuracy_mean": round(float(np.mean(val_acc)), 2),
            "val_accuracy_std": round(float(np.std(val_acc)), 2),
        }
        accuracies[name] = {"test_accuracies": [round(a, 2) for a in test_acc],
                            "val_accuracies": [round(a, 2) for a in val_acc]}
    record = {"net": names[0], "nets": names, "accuracies": accuracies, "train_images": int(len(labels)),
              "epochs": epochs, "repeats": repeats, "lr": lr, "batch_size": batch_size, "precision": precision,
              "compile": backend or None,
              "augment": augment is not None,
              "flip": augment is not None and flip,
              "dsa": dict(param(params, "dsa")) if augment is not None else None, "seed": seed, "versions": versions()}
    return metrics, record


def load_synthetic(path, test: ImageSet) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A distilled set's images in the dataset's normalisation, its labels and its info."""
    synthetic = load_tensors(path)
    images, labels = synthetic["images"].float(), synthetic["labels"].long()
    if list(images.shape[1:]) != list(test.images.shape[1:]):
        raise PipelineError(f"{path}: synthetic images {tuple(images.shape[1:])} do not match the dataset's "
                            f"{tuple(test.images.shape[1:])}")
    if len(labels) != len(images):
        raise PipelineError(f"{path}: {len(images)} images but {len(labels)} labels")
    if synthetic["mean"] != test.mean or synthetic["std"] != test.std:
        images = normalize(denormalize(images, synthetic["mean"], synthetic["std"]) * 255, test.mean, test.std)
    return images, labels, synthetic["info"]


def concat_captions(path: Path, n: int, val: ImageSet, test: ImageSet) -> tuple:
    """(synthetic, val, test) caption embeddings for caption_concat; val from data/features, test from stage
    annotate_test's data/features_test (each image its own captions)."""
    synthetic = load_tensors(path)
    if "captions" not in synthetic:
        raise PipelineError(f"{path} has no 'captions': it was not distilled by caption_concat")
    train_c = synthetic["captions"].float()
    if not (FEATURES_HELDOUT / "caption" / "index.parquet").exists():
        raise PipelineError(f"{FEATURES_HELDOUT}/caption is missing: run `dvc repro annotate_test`")
    val_c = image_caption_vectors(val.uids, "instances")
    test_c = image_caption_vectors(test.uids, "instances", root=FEATURES_HELDOUT)
    for name, c, rows in (("synthetic", train_c, n), ("val", val_c, len(val)), ("test", test_c, len(test))):
        if c.shape != (rows, train_c.shape[1]):
            raise PipelineError(f"caption_concat: {name} caption embeddings have shape {tuple(c.shape)}, expected "
                                f"({rows}, {train_c.shape[1]}) (one per image, the synthetic set's dimension)")
    return train_c, val_c, test_c


def evaluate(method: str, ipc: int, latent: bool, params: dict) -> tuple[dict, dict]:
    """-> (metrics, record) of the run (method, ipc, latent)."""
    val, test = load_split("val"), load_split("test")
    run = run_name(method, ipc, latent)
    path = distilled_set(run)
    images, labels, info = load_synthetic(path, test)
    captions = concat_captions(path, len(images), val, test) if method == "caption_concat" else None
    metrics, record = train_and_score(images, labels, val, test, params, positive(params, "evaluate.epochs"),
                                      positive(params, "evaluate.repeats"), param(params, "evaluate.augment", bool),
                                      f"evaluate {run}", captions)
    extra = {"test_images_without_caption": int((captions[2].norm(dim=1) == 0).sum())} if captions else {}
    return metrics, {"method": method, "ipc": ipc, **({"latent": True} if latent else {}), **record, **extra,
                     "distill": info.get("settings", {})}


def evaluate_full(params: dict) -> tuple[dict, dict]:
    """-> (metrics, record) of the whole prepared train split (the upper bound)."""
    train, val, test = load_split("train"), load_split("val"), load_split("test")
    metrics, record = train_and_score(train.normalized(), train.labels, val, test, params,
                                      positive(params, "evaluate_full.epochs"),
                                      positive(params, "evaluate_full.repeats"),
                                      param(params, "evaluate_full.augment", bool), "evaluate full train split")
    return metrics, {"method": "full", "ipc": None, **record, "distill": {}}
