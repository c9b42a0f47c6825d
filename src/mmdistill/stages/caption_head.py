"""caption_head: a differentiable image -> caption-embedding head for caption_match -> data/caption_head/

    python -m mmdistill.stages.caption_head

Caption matching (multi-modal DD paper, Sec. 3.2) needs caption features of the synthetic images at
every distillation step, so it needs a differentiable map from pixels to the caption-embedding space
of `data/features/caption`. `caption_head.head` picks it:

  offline  a small ConvNet (`caption_head.width` channels, depth by image size, as stages/nets.py's
           ConvNet) whose linear layer outputs the caption dimension, L2-normalised. Trained with Adam on
           the train split's (normalised image, caption embedding) pairs to maximise their cosine; scored
           on the val split's pairs.
  blip2    BLIP-2 (transformers, `caption_head.blip2.model` + `revision`, frozen): the images are turned
           into BLIP-2's input differentiably (back to [0, 1] pixels, grey to RGB, bilinear resize to the
           processor's size, its mean/std), then vision encoder -> Q-Former -> language projection; the
           query outputs are averaged and a linear map, trained like the offline head on the train pairs
           (BLIP-2's query features computed once), takes them into the caption space, L2-normalised. The
           caption space is the text encoder's (e.g. MiniLM), which BLIP-2 does not share, hence the map.

An image's caption embedding (`image_caption_vectors`) is the L2-normalised mean of the embeddings of its
instance captions (`instance_id` >= 0: the paper captions object instances), or, with
`caption_head.target: image`, its whole-image caption (`instance_id` -1). Images without such a
caption get a zero vector (they are left out of the head's training and scoring).

Outputs:
  data/caption_head/head.pt      `state_dict` (offline: the ConvNet; blip2: the linear map only), `head`,
                                 `width`, `channels`, `image_size`, `dim` (caption dimension), `target`,
                                 `mean`/`std` (the dataset's normalisation), `settings` (blip2: model, revision),
                                 `loss` curve, `space` (the caption features' encoder settings), seed, versions
  data/caption_head/record.json  what produced the metrics: val_pairs, train_pairs, chance (R@K of a random
                                 ranking), settings, seed, versions
  outputs/metrics/caption_head.json   measured numbers only: val mean cosine of head(image) and its caption
                                 embedding, val retrieval R@1/5/10 image->caption (ties do not count against),
                                 final train loss
"""
from __future__ import annotations

import torch

from mmdistill.core.config import load_params, param
from mmdistill.core.paths import CAPTION_HEAD, CAPTION_HEAD_METRICS, CAPTION_HEAD_RECORD
from mmdistill.core.runtime import resolve_device, seed_everything, versions
from mmdistill.core.storage import PipelineError, check_writable, save_json, save_tensors
from mmdistill.data.datasets import load_split
from mmdistill.embed.features import FEATURES, feature_metadata
from mmdistill.nn.caption_head import (
    CaptionHead,
    Projection,
    _pairs,
    _settings,
    blip2_features,
    load_blip2,
    score_head,
    train_head,
)
from mmdistill.stages import run_stage


def main() -> None:
    params = load_params()
    check_writable(CAPTION_HEAD, CAPTION_HEAD_METRICS, CAPTION_HEAD_RECORD)
    seed = param(params, "seed", int)
    settings = _settings(params)
    train = load_split("train")
    train_images, train_captions = _pairs(train, settings["target"])
    val_images, val_captions = _pairs(load_split("val"), settings["target"])
    if not len(train_images) or not len(val_images):
        raise PipelineError(f"no train or val image has a caption of target {settings['target']!r} in "
                            f"{FEATURES}/caption")
    budget = {k: settings[k] for k in ("epochs", "batch_size", "lr")}
    seed_everything(seed)
    if settings["head"] == "blip2":
        device = resolve_device(params)
        features = load_blip2(settings["blip2"], train.mean, train.std, device)
        train_inputs = blip2_features(features, train_images, settings["batch_size"], "blip2 train features")
        val_inputs = blip2_features(features, val_images, settings["batch_size"], "blip2 val features")
        head = Projection(train_inputs.shape[1], train_captions.shape[1])
    else:
        train_inputs, val_inputs = train_images, val_images
        head = CaptionHead(train_images.shape[1], train_images.shape[2], train_captions.shape[1], settings["width"])
    head, history = train_head(head, train_inputs, train_captions, seed=seed, **budget)
    scores = score_head(head, val_inputs, val_captions)
    metrics = {"val": {k: scores[k] for k in ("cosine_mean", "image_to_caption")},
               "final_train_loss": round(history[-1], 4)}
    record = {"val_pairs": scores["pairs"], "train_pairs": len(train_images), "chance": scores["chance"],
              "settings": settings, "seed": seed, "versions": versions()}
    save_tensors({"state_dict": head.state_dict(), "head": settings["head"], "width": settings["width"],
                  "channels": int(train_images.shape[1]), "image_size": int(train_images.shape[2]),
                  "dim": int(train_captions.shape[1]), "target": settings["target"], "settings": settings,
                  "mean": train.mean, "std": train.std,
                  "loss": torch.tensor(history), "space": feature_metadata("caption"), "seed": seed,
                  "versions": versions()}, CAPTION_HEAD)
    save_json(record, CAPTION_HEAD_RECORD)
    save_json(metrics, CAPTION_HEAD_METRICS)
    print(f"caption_head: val cosine {metrics['val']['cosine_mean']}, R@1 {metrics['val']['image_to_caption']['R@1']}"
          f" (chance {record['chance']['R@1']}) over {len(val_images)} pairs -> {CAPTION_HEAD}")


if __name__ == "__main__":
    run_stage(main)
