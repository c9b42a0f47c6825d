"""evaluate: train fresh networks on one synthetic set -> outputs/metrics/{run}.json, outputs/evaluate/{run}.json

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
Its record adds `test_images_without_caption` (those get a zero caption vector).

Outputs, both committed to git (accuracies in %, std over repeats, population std):
  outputs/metrics/{run}.json     DVC metrics, measured numbers only, one object per architecture of
      `evaluate.nets`: {name: {test_accuracy_mean, test_accuracy_std, val_accuracy_mean, val_accuracy_std}}
  outputs/evaluate/{run}.json    what produced them: method, ipc (null for --full), net (the first of
      `evaluate.nets`, the default net of the report), nets, accuracies ({name: {test_accuracies,
      val_accuracies}}, one per repeat), train_images, epochs, repeats, lr, batch_size, augment, flip (whether
      DSA flipped: `evaluate.flip`, auto = the prepared dataset's default; false without augment), seed,
      distill (the synthetic set's settings; empty for --full), versions; caption_concat adds
      test_images_without_caption
"""
from __future__ import annotations

from mmdistill.core.config import load_params
from mmdistill.core.paths import EVALUATIONS, METRICS, run_name
from mmdistill.core.schema import method_name
from mmdistill.core.storage import PipelineError, check_writable, save_json
from mmdistill.evaluate.classification import evaluate, evaluate_full
from mmdistill.stages import ArgumentParser, run_stage


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method")
    parser.add_argument("--ipc", type=int)
    parser.add_argument("--latent", action="store_true", help="the latent run {method}-latent-ipc{K}")
    parser.add_argument("--full", action="store_true", help="train on the whole train split (upper bound)")
    args = parser.parse_args()
    params = load_params()
    if args.full:
        run = "full"
    elif args.method and args.ipc:
        if args.ipc <= 0:
            raise PipelineError(f"--ipc must be a positive integer, got {args.ipc}")
        run = run_name(method_name(args.method), args.ipc, args.latent)
    else:
        parser.error("give --method and --ipc, or --full")
    path, record_path = METRICS / f"{run}.json", EVALUATIONS / f"{run}.json"
    check_writable(path, record_path)
    if args.full:
        metrics, record = evaluate_full(params)
    else:
        metrics, record = evaluate(args.method, args.ipc, args.latent, params)
    save_json(record, record_path)
    save_json(metrics, path)
    for name, m in metrics.items():
        print(f"{run} {name}: test accuracy {m['test_accuracy_mean']:.2f} ± {m['test_accuracy_std']:.2f} % -> {path}")

if __name__ == "__main__":
    run_stage(main)
