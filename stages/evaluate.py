"""evaluate: train fresh networks on one synthetic set -> outputs/metrics/{method}-ipc{K}.json

    python -m stages.evaluate --method dm --ipc 10

`evaluate.repeats` networks (seeds seed+0, seed+1, ...) are trained from scratch
on the synthetic set only, then scored on the validation and the test split.
No choice (epoch, learning rate, checkpoint) is made on either split: the
training budget is fixed in params, and test is read only to report.

Metrics file (committed to git, declared as DVC metrics):
  test_accuracy_mean, test_accuracy_std (in %, population std over repeats),
  val_accuracy_mean, test_accuracies (per repeat), plus method, ipc, net,
  epochs, repeats, seed and versions.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from stages.augment import DifferentiableAugment
from stages.data import load_split, normalize
from stages.io import PipelineError, load_tensors, save_json
from stages.distill import DISTILLED
from stages.nets import make_net
from stages.params import load_params, param, positive, resolve_device, seed_everything, versions
from stages.train import accuracy, train_classifier

METRICS = Path("outputs/metrics")


def evaluate(method: str, ipc: int, params: dict) -> dict:
    seed = param(params, "seed", int)
    device = resolve_device(params)
    repeats = positive(params, "evaluate.repeats")
    epochs = positive(params, "evaluate.epochs")
    net_name = param(params, "evaluate.net", str)
    lr = param(params, "evaluate.lr", float)
    batch_size = positive(params, "evaluate.batch_size")
    augment = DifferentiableAugment(flip=param(params, "evaluate.flip", bool)) \
        if param(params, "evaluate.augment", bool) else None

    synthetic = load_tensors(DISTILLED / f"{method}-ipc{ipc}.pt")
    images, labels = synthetic["images"].float(), synthetic["labels"].long()
    val, test = load_split("val"), load_split("test")
    if list(images.shape[1:]) != list(test.images.shape[1:]):
        raise PipelineError(f"synthetic images {tuple(images.shape[1:])} do not match the dataset's "
                            f"{tuple(test.images.shape[1:])}")
    if synthetic["mean"] != test.mean:
        images = normalize(((images * torch.tensor(synthetic["std"]).view(1, -1, 1, 1) +
                             torch.tensor(synthetic["mean"]).view(1, -1, 1, 1)).clamp(0, 1) * 255), test.mean, test.std)
    val_x, test_x = val.normalized(), test.normalized()
    channels, size = images.shape[1], images.shape[2]
    test_acc, val_acc = [], []
    for r in range(repeats):
        seed_everything(seed + r)
        net = make_net(net_name, channels, len(test.class_names), size)
        train_classifier(net, images, labels, epochs, device, lr=lr, batch_size=batch_size, augment=augment,
                         seed=seed + r, desc=f"evaluate {method} ipc{ipc} #{r + 1}/{repeats}")
        val_acc.append(100 * accuracy(net, val_x, val.labels, device))
        test_acc.append(100 * accuracy(net, test_x, test.labels, device))
    return {
        "method": method, "ipc": ipc, "net": net_name, "epochs": epochs, "repeats": repeats, "lr": lr,
        "augment": augment is not None, "seed": seed,
        "test_accuracy_mean": round(float(np.mean(test_acc)), 2),
        "test_accuracy_std": round(float(np.std(test_acc)), 2),
        "val_accuracy_mean": round(float(np.mean(val_acc)), 2),
        "test_accuracies": [round(a, 2) for a in test_acc],
        "distill": synthetic["info"].get("settings", {}),
        "versions": versions(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--ipc", required=True, type=int)
    args = parser.parse_args()
    metrics = evaluate(args.method, args.ipc, load_params())
    path = save_json(metrics, METRICS / f"{args.method}-ipc{args.ipc}.json")
    print(f"{args.method} IPC {args.ipc}: test accuracy {metrics['test_accuracy_mean']:.2f} ± "
          f"{metrics['test_accuracy_std']:.2f} % -> {path}")


if __name__ == "__main__":
    main()
