"""align: a learned joint space for the offline image and text features -> data/aligned/, outputs/metrics/align.json

    python -m mmdistill.stages.align

The offline encoders (EfficientNet-Lite0 images, MiniLM texts) do not share a space. Two small
projection heads (one linear layer per modality to `align.dim`, L2-normalised, with a learned
temperature as in CLIP) are trained with the symmetric contrastive (InfoNCE) loss on the train split's
image / whole-image-caption pairs (`instance_id` -1). Training is its own cached DVC stage.

Outputs:
  data/aligned/heads.pt            state dicts of the heads, settings, loss curve, seed, versions
  data/aligned/{image,caption}/    every image and caption feature projected, in the format of
                                   data/features/<kind>/ (float16 shards + index), `settings.space` = "aligned"
  data/aligned/pair_forgetting.parquet   per train pair: uid, forgetting_events, learned, misclassified, counted
                                   during training (a pair is correct when image and caption retrieve each other
                                   within the mini-batch); the `forgetting` pair coreset reads it
  data/aligned/record.json         what produced the metrics: val_pairs, train_pairs, chance (recall@K of a random
                                   ranking, K / val_pairs), settings, encoders, seed, versions
  outputs/metrics/align.json       measured numbers only: retrieval recall@1/5/10 (%) on the val split's pairs,
                                   image->text and text->image, in the aligned space (`aligned`) and, when the
                                   two encoders share a space, in theirs (`unaligned`); final_train_loss

Recall counts a hit when the true partner is among the K most similar; candidates exactly as similar as
the true partner (e.g. identical template captions of other images) do not push it down.
"""
from __future__ import annotations

import torch

from mmdistill.core.config import load_params, param, positive
from mmdistill.core.paths import ALIGN_METRICS, ALIGN_RECORD, ALIGNED, PAIR_EVENTS
from mmdistill.core.runtime import versions
from mmdistill.core.storage import check_writable, save_json, save_tensors, write_parquet
from mmdistill.embed.alignment import (
    RECALL_AT,
    image_caption_pairs,
    retrieval,
    train_heads,
)
from mmdistill.embed.features import feature_metadata, load_features, write_features
from mmdistill.selection.forgetting import ForgettingCounter
from mmdistill.stages import run_stage


def main() -> None:
    params = load_params()
    check_writable(ALIGNED / "heads.pt", PAIR_EVENTS, ALIGN_RECORD, ALIGN_METRICS)
    seed = param(params, "seed", int)
    settings = {"dim": positive(params, "align.dim"), "epochs": positive(params, "align.epochs"),
                "batch_size": positive(params, "align.batch_size"), "lr": positive(params, "align.lr", float)}
    image_index, image_vectors = load_features("image")
    caption_index, caption_vectors = load_features("caption")
    train_uids, train_image, train_text = image_caption_pairs("train", image_index, image_vectors, caption_index,
                                                              caption_vectors)
    val_uids, val_image, val_text = image_caption_pairs("val", image_index, image_vectors, caption_index,
                                                        caption_vectors)
    counter = ForgettingCounter(len(train_uids))
    heads, history = train_heads(torch.from_numpy(train_image), torch.from_numpy(train_text), seed=seed,
                                 counter=counter, **settings)
    heads.eval()
    with torch.no_grad():
        aligned_image = heads.project_image(torch.from_numpy(image_vectors)).numpy()
        aligned_caption = heads.project_text(torch.from_numpy(caption_vectors)).numpy()
        val_aligned = retrieval(heads.project_image(torch.from_numpy(val_image)).numpy(),
                                heads.project_text(torch.from_numpy(val_text)).numpy())
    encoders = {kind: feature_metadata(kind) for kind in ("image", "caption")}
    same_space = encoders["image"].get("settings", {}).get("space") == encoders["caption"].get("settings", {}).get(
        "space") and val_image.shape[1] == val_text.shape[1]
    metrics = {"aligned": val_aligned, **({"unaligned": retrieval(val_image, val_text)} if same_space else {}),
               "final_train_loss": round(history[-1], 4)}
    record = {"val_pairs": len(val_uids), "train_pairs": len(train_image),
              "chance": {f"R@{k}": round(100 * min(k, len(val_uids)) / len(val_uids), 2) for k in RECALL_AT},
              "settings": settings, "encoders": {k: v.get("encoder") for k, v in encoders.items()}, "seed": seed,
              "versions": versions()}
    space = {"space": "aligned", "heads": str(ALIGNED / "heads.pt")} | settings
    write_features("image", {"uid": image_index["uid"].to_pylist(), "label": image_index["label"].to_pylist()},
                   aligned_image, "aligned:" + str(encoders["image"].get("encoder")), space, 50000, root=ALIGNED)
    write_features("caption", {c: caption_index[c].to_pylist() for c in ("uid", "label", "instance_id")},
                   aligned_caption, "aligned:" + str(encoders["caption"].get("encoder")), space, 50000, root=ALIGNED)
    save_tensors({"state_dict": heads.state_dict(), "settings": settings, "loss": torch.tensor(history),
                  "seed": seed, "versions": versions()}, ALIGNED / "heads.pt")
    write_parquet({"uid": train_uids, "forgetting_events": counter.events, "learned": counter.learned,
                   "misclassified": counter.misclassified}, PAIR_EVENTS,
                  {"forgetting": {"over": "pairs", "settings": settings, "seed": seed}})
    save_json(record, ALIGN_RECORD)
    save_json(metrics, ALIGN_METRICS)
    print(f"align: val recall image->text {val_aligned['image_to_text']}, text->image "
          f"{val_aligned['text_to_image']} over {len(val_uids)} pairs -> {ALIGN_METRICS}")


if __name__ == "__main__":
    run_stage(main)
