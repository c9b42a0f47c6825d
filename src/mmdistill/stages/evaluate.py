"""evaluate: train fresh networks on one synthetic set -> outputs/metrics/{method}-ipc{K}.json

    python -m mmdistill.stages.evaluate --method dm --ipc 10 [--latent]   # --latent: dm-latent-ipc10
    python -m mmdistill.stages.evaluate --full          # upper bound: the whole prepared train split

For every architecture in `evaluate.nets` (names of stages.nets, e.g. convnet3, resnet18,
vgg11:instance), `repeats` networks (seeds seed+0, seed+1, ...) are trained from scratch on
the synthetic set only (SGD momentum 0.9, weight decay 5e-4, lr `evaluate.lr` x0.1 at half
the epochs as in DC's protocol, optional DSA augmentation), then scored on the validation and
the test split. No choice (epoch, learning rate, checkpoint) is made on either split: the
training budget is fixed in params, and test is read only to report.

`--full` trains the same networks the same way on the whole prepared train split (the
upper-bound row) with its own budget and augmentation switch `evaluate_full.{epochs,repeats,
augment}` and writes outputs/metrics/full.json.

caption_concat: each network becomes a CaptionConcat classifier (penultimate features ++ caption
embedding -> linear), trained on the synthetic images with their stored caption embeddings and scored
on val and test images with their OWN caption embeddings (mean of instance captions: val from
data/features/caption, test from stage annotate_test's data/features_test/caption, made without labels).
Its metrics add `test_images_without_caption` (those get a zero caption vector).

Metrics file (committed to git, declared as DVC metrics), accuracies in %, std over repeats
(population std):
  test_accuracy_mean, test_accuracy_std, val_accuracy_mean, test_accuracies: the first
      architecture of `evaluate.nets` (the default net, read by `report` and `dvc metrics`)
  net (that name), nets (all names), architectures: {name: {test_accuracy_mean,
      test_accuracy_std, val_accuracy_mean, val_accuracy_std, test_accuracies, val_accuracies}}
  method, ipc (null for --full), train_images, epochs, repeats, lr, batch_size, augment, seed,
  distill (the synthetic set's settings; empty for --full), versions
"""
from __future__ import annotations

import argparse

from mmdistill.core.config import load_params
from mmdistill.core.paths import FULL_METRICS, run_metrics, run_name
from mmdistill.core.storage import save_json
from mmdistill.evaluate.classification import evaluate, evaluate_full
from mmdistill.stages import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method")
    parser.add_argument("--ipc", type=int)
    parser.add_argument("--latent", action="store_true", help="the latent run {method}-latent-ipc{K}")
    parser.add_argument("--full", action="store_true", help="train on the whole train split (upper bound)")
    args = parser.parse_args()
    params = load_params()
    if args.full:
        metrics, path = evaluate_full(params), FULL_METRICS
    elif args.method and args.ipc:
        metrics = evaluate(args.method, args.ipc, args.latent, params)
        path = run_metrics(run_name(args.method, args.ipc, args.latent))
    else:
        parser.error("give --method and --ipc, or --full")
    save_json(metrics, path)
    for name, m in metrics["architectures"].items():
        print(f"{metrics['method']}{' (latent)' if args.latent else ''} IPC {metrics['ipc']} {name}: test accuracy "
              f"{m['test_accuracy_mean']:.2f} ± {m['test_accuracy_std']:.2f} % -> {path}")


if __name__ == "__main__":
    run_stage(main)
