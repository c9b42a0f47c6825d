"""The pool of networks DSDM draws its feature extractors from.

The stage, its outputs and their schema: mmdistill.stages.pretrain.
"""
from __future__ import annotations

from pathlib import Path

from mmdistill.core.config import param, positive
from mmdistill.core.paths import POOL
from mmdistill.core.runtime import resolve_device, seed_everything, versions
from mmdistill.core.storage import check_writable, save_tensors
from mmdistill.data.datasets import load_split, resolve_flip
from mmdistill.nn.augment import from_params as augment_from_params
from mmdistill.nn.nets import make_net
from mmdistill.nn.train import accuracy, train_classifier


def pretrain(params: dict) -> Path:
    check_writable(POOL)
    seed = param(params, "seed", int)
    device = resolve_device(params)
    models = positive(params, "pretrain.models")
    epochs = positive(params, "pretrain.epochs")
    net_name = param(params, "pretrain.net", str)
    flip = resolve_flip(param(params, "pretrain.flip"), "pretrain.flip")
    augment = augment_from_params(params, flip) if param(params, "pretrain.augment", bool) else None
    train, val = load_split("train"), load_split("val")
    images, val_images = train.normalized(), val.normalized()
    channels, size, classes = images.shape[1], images.shape[2], len(train.class_names)
    states, val_accuracy = [], []
    for m in range(models):
        seed_everything(seed + m)
        net = make_net(net_name, channels, classes, size)
        train_classifier(net, images, train.labels, epochs, device, lr=param(params, "pretrain.lr", float),
                         batch_size=positive(params, "pretrain.batch_size"), augment=augment, seed=seed + m,
                         desc=f"pretrain {m + 1}/{models}")
        val_accuracy.append(round(100 * accuracy(net, val_images, val.labels, device), 2))
        states.append({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()})
        print(f"network {m + 1}/{models}: val accuracy {val_accuracy[-1]:.2f}%", flush=True)
    save_tensors({"net": net_name, "channels": channels, "classes": classes, "image_size": size, "states": states,
                  "val_accuracy": val_accuracy,
                  "info": {"seed": seed, "settings": {**param(params, "pretrain", dict), "flip": flip},
                           "device": str(device), "versions": versions()}}, POOL)
    return POOL
