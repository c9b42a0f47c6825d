"""evaluate_retrieval: train fresh students on a pair set, score image-text retrieval -> outputs/metrics/{run}.json

    python -m mmdistill.stages.evaluate_retrieval --pairs full        # upper bound: every train pair
    python -m mmdistill.stages.evaluate_retrieval --pairs random-100  # 100 train images (seeded) with their captions
    python -m mmdistill.stages.evaluate_retrieval --pairs mttvl-100   # stage distill_pairs' 100 synthetic pairs
    python -m mmdistill.stages.evaluate_retrieval --pairs herding-100 # stage select_pairs' 100 train images
                                                                      # (also kcenter-N, forgetting-N, pds-N)
    python -m mmdistill.stages.evaluate_retrieval --pairs pds_unclip-100  # stage synthesize_pairs' 100 pairs

run = `retrieval-{pairs}`. `imagetext.evaluate.repeats` students (the pair model of `imagetext.model`, seeds seed,
seed+1, ...) are trained `imagetext.evaluate.epochs` epochs on the pair set only (SGD on InfoNCE; a distilled set
is trained at its learned learning rate alpha, as MTT-VL, instead of `imagetext.evaluate.lr`; a generated set at
`imagetext.evaluate.lr`), then scored on
val and test with recall@1/5/10 both ways (rule: mmdistill.evaluate.retrieval). The budget is fixed: no early
stopping, no choice on val or test.

Outputs (recall in %, std over repeats, population std):
  outputs/metrics/{run}.json    measured numbers only: {image_encoder: {test_tr_r1_mean, test_tr_r1_std, ...,
      test_ir_r10_std, val_tr_r1_mean, ...}}
  outputs/evaluate/{run}.json   what produced them: pairs, train_images, train_texts, per-repeat recalls,
      chance (the random-ranking lower bound of val and test), settings, versions
"""
from __future__ import annotations

from mmdistill.core.config import load_params, param, positive
from mmdistill.core.paths import EVALUATIONS, METRICS
from mmdistill.core.runtime import resolve_device, seed_everything, versions
from mmdistill.core.storage import PipelineError, check_writable, save_json
from mmdistill.data.pairs import (
    CORESET_KINDS,
    SYNTHESIS_KINDS,
    check_set_lists,
    load_distilled_pairs,
    load_pairs,
    parse_pair_set,
    read_coreset,
    subset,
    take,
)
from mmdistill.evaluate.retrieval import chance_recall, evaluate_pair_set
from mmdistill.nn.contrastive import build_pair_model
from mmdistill.stages import ArgumentParser, run_stage


def evaluate_retrieval(pairs_name: str, params: dict) -> tuple[dict, dict]:
    parse_pair_set(pairs_name, 2**62)  # the name's form, before any data loads
    check_set_lists(params)
    seed = param(params, "seed", int)
    seed_everything(seed)
    device = resolve_device(params)
    train = load_pairs("train")
    kind, n = parse_pair_set(pairs_name, len(train["images"]))
    lr = param(params, "imagetext.evaluate.lr", float)
    if kind in ("mttvl", *SYNTHESIS_KINDS):
        distilled = load_distilled_pairs(pairs_name)
        learned = distilled.pop("lr")
        lr = lr if learned is None else learned
        train = {**train, **distilled}
    elif kind in CORESET_KINDS:
        chosen = read_coreset(pairs_name, list(train["uids"]))
        if len(chosen) != n:
            raise PipelineError(f"pair set {pairs_name!r}: its coreset file holds {len(chosen)} images; re-run "
                                f"stage select_pairs@{pairs_name}")
        train = take(train, chosen)
    else:
        train = subset(train, n, seed)
    splits = {s: load_pairs(s) for s in ("val", "test")}
    block = "imagetext.evaluate"
    encoder = param(params, "imagetext.model.image_encoder", str)

    def make_model(s):
        return build_pair_model(params, train["channels"], train["image_size"], train["mean"], train["std"],
                                train["texts"].shape[1], s)

    summary, per_repeat = evaluate_pair_set(
        make_model, train, splits, repeats=positive(params, f"{block}.repeats"), seed=seed,
        epochs=positive(params, f"{block}.epochs"), lr=lr,
        momentum=param(params, f"{block}.momentum", float), batch_size=positive(params, f"{block}.batch_size"),
        device=device)
    metrics = {encoder: {f"{split}_{k}": v for split in ("test", "val") for k, v in summary[split].items()}}
    record = {"pairs": pairs_name, "train_images": len(train["images"]), "train_texts": len(train["texts"]),
              "recalls": per_repeat, "student_lr": lr, "chance": {s: chance_recall(d["image_of_text"], len(d["images"]),
                                                                          text_id=d["text_id"])
                                                for s, d in splits.items()},
              "model": params["imagetext"]["model"], "evaluate": params["imagetext"]["evaluate"], "seed": seed,
              "dataset": param(params, "prepare.dataset", str), "versions": versions()}
    return metrics, record


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="full | random-N | mttvl-N | herding/kcenter/forgetting/pds-N | pds_unclip-N")
    args = parser.parse_args()
    params = load_params()
    run = f"retrieval-{args.pairs}"
    path, record_path = METRICS / f"{run}.json", EVALUATIONS / f"{run}.json"
    check_writable(path, record_path)
    metrics, record = evaluate_retrieval(args.pairs, params)
    save_json(record, record_path)
    save_json(metrics, path)
    for name, m in metrics.items():
        print(f"{run} {name}: test TR R@1 {m['test_tr_r1_mean']:.2f} ± {m['test_tr_r1_std']:.2f}, "
              f"IR R@1 {m['test_ir_r1_mean']:.2f} ± {m['test_ir_r1_std']:.2f} % -> {path}")


if __name__ == "__main__":
    run_stage(main)
