"""distill: build a synthetic set for one (method, IPC) -> data/distilled/{method}-ipc{K}.pt

    python -m mmdistill.stages.distill --method dm --ipc 10 [--resume]

The output is a tensor file (mmdistill.core.storage.load_tensors) with:
  images       float32 [N, channels, H, W], normalised with the dataset mean/std; N = C*K, except
               dsdm with factor l: N = C*K*l^2 decoded images (what evaluation trains on)
  labels       int64   [N], class-major (the images of class 0, then class 1, ...)
  source_uids  list of the real train images each image started from (one per entry of `images`)
  mean, std    the normalisation, to turn images back into pixels
  loss         float32 [iterations] loss curve (empty for selection methods)
  info         method, ipc, seed, settings, engine settings and library versions
  encoded, factor, pool_net   dsdm only: the stored C*K images (l x l tiles each) and l
  captions     caption_concat only: float32 [N, d], the caption embedding of each synthetic image
               (stages/caption_head.py image_caption_vectors: mean of instance-caption embeddings)
  caption_space  caption_concat only: the caption features' encoder metadata
  latents, vae  `distill.engine.parameterisation: latent` only: the optimised latents (dsdm: of the
               encoded images) and the VAE (source, revision, subfolder, scaling_factor, shift_factor
               if it has one, weight digest);
               `images` are then the latents decoded by that VAE, clamped to valid pixels
plus a PNG grid `outputs/figures/distilled/{method}-ipc{K}.png` (one row per class; dsdm: encoded).
Optimising methods also write a DVCLive loss curve and periodic grids under
`outputs/distill/{method}-ipc{K}/` and checkpoints `data/checkpoints/{method}-ipc{K}.pt` that
`--resume` continues from (stages/engine.py); the result is byte-identical to an uninterrupted run.

Methods (the optimising ones run on stages/engine.py with the losses of stages/matching.py):
  random     K seeded random real train images per class
  kmeans     the real image nearest to each per-class k-means centre (stage `select`)
  herding    per-class herding coreset of image features (stage `select`)
  kcenter    per-class greedy k-center coreset of image features (stage `select`)
  forgetting per-class most-forgotten train images (stages `forgetting` and `select`)
  dm         Distribution Matching (Zhao & Bilen): pixels initialised from the `random`
             images, optimised so that the mean embedding of each class under a freshly
             initialised ConvNet-3 (new weights every iteration) matches that of a batch
             of real images of the class, both under the same DSA augmentation.
  masked_dm  dm's full-image term plus the same term on foreground-masked images
             (masks from stage `ground`). A synthetic image keeps the mask of the real
             image it was initialised from: the paper does not say how synthetic
             images are masked, and this keeps the object region where it started.
             `full_term: dc` pairs the masked DM term with full-image gradient matching
             instead (the paper's pairing; then the dc keys apply: lr, net_lr, loops).
  dc         Dataset Condensation (Zhao et al. 2021): per outer iteration a fresh ConvNet-3;
             `outer_loop` pixel steps on DC's layer-wise gradient distance (per class, real
             vs synthetic), with `inner_loop` epochs of training the network on the synthetic
             set between them. No augmentation.
  dsa        dc with differentiable siamese augmentation (stages/augment.py) on real and
             synthetic images and in the network updates.
  masked_dc  dsa's gradient-matching term on full images plus the same term on
             foreground-masked images (masks as in masked_dm), weights in params.
  dsdm       Diversified Semantic Distribution Matching: a network drawn each iteration from
             the pool of stage `pretrain`; prototype + covariance + historical-prototype
             (EMA memory per pool network) losses; IDC factor l (l^2 tiles per stored image).
  caption_match   the multi-modal paper's caption matching: lambda_1 (`full_weight`) x dsa's gradient
             matching + lambda_2 (`caption_weight`) x the squared distance, summed over classes, between the
             mean caption feature of a class's synthetic images (through the frozen differentiable head of
             stage caption_head) and the mean caption embedding of the class's real train images. The
             paper names neither the distance nor the target; this is our reading (a DM-style class-mean
             match in caption space), added to every matching step of the outer loop.
  caption_concat  the paper's caption concatenation: images distilled by dsa's gradient matching (its
             own keys), plus a caption embedding per synthetic image (`captions: source` = its source real
             image's, `cluster` = the mean over its k-means cluster, images initialised from the clusters'
             nearest images of stage select). stages/evaluate.py then trains a classifier on
             concat(penultimate features, caption embedding). Captions are instance captions only (label
             free; a template naming the class is refused); test images use their own (stage annotate_test).
"""
from __future__ import annotations

import argparse

from mmdistill.core.config import load_params
from mmdistill.distill.methods import distill
from mmdistill.stages import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--ipc", required=True, type=int)
    parser.add_argument("--resume", action="store_true",
                        help="continue from data/checkpoints/{method}-ipc{K}.pt (same settings required)")
    args = parser.parse_args()
    out = distill(args.method, args.ipc, load_params(), resume=args.resume)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_stage(main)
