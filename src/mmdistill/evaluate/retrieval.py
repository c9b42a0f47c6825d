"""Image-text retrieval: recall@K both ways, the random-ranking bound, and students trained on a pair set.

Recall rule (the standard multi-caption protocol of Flickr30K/COCO, MTT-VL §4 and PDS §4.1):
  - text retrieval (TR, image -> text): an image's query is a hit at K if ANY of its own captions is among the K
    highest-scoring captions;
  - image retrieval (IR, text -> image): a caption's query is a hit at K if its own image is among the K
    highest-scoring images.
Ties never count as hits: the rank of the (best) correct candidate is 1 + the number of WRONG candidates scoring
greater than OR EQUAL to it, so a wrong candidate tied with the correct one at the K-th place makes a miss (a
constant score matrix scores 0, never the luck of a sort order). Other correct captions tied with or above the
best one do not push it down. Recall is in % of queries.

Identical caption strings (`text_id`, stage embed_pairs: the same id = the same text) are one candidate: TR
ranks the split's distinct texts, and an image's own texts are the distinct texts among its captions; an IR query
(one per caption) is a hit when ANY image having that text is in the top K. Where every caption is distinct (Flickr,
COCO, scenes) this is the rule above; with label captions ("a photo of a sneaker", shared by every sneaker image)
it is MTT-VL Appendix B's class matching (Table 7: TR R@1 = whether an image is matched with its class's caption),
where the instance rule would make every identical caption a tied wrong candidate and score 0.

`chance_recall` is the expected recall of a uniformly random ranking (the lower bound of MTT-VL Table 3): TR
1 - C(T - m, K) / C(T, K) for an image with m of the T distinct texts, averaged over images; IR
1 - C(N - r, K) / C(N, K) for a caption that r of the N images have (K / N when r = 1), averaged over captions.

`evaluate_pair_set` trains `repeats` fresh students (seeds seed, seed+1, ...) on a pair set for a fixed budget
(no early stopping and no choice of any kind: val and test are only scored), then scores val and test.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mmdistill.evaluate.ranking import ranks, relevance

KS = (1, 5, 10)


def recall(scores: torch.Tensor, image_of_text, ks=KS, text_id=None) -> dict:
    """{tr_r1, tr_r5, tr_r10, ir_r1, ...} in % (rule in the module docstring)."""
    tr, ir = ranks(scores.float().cpu(), image_of_text, text_id)
    out = {}
    for k in ks:
        out[f"tr_r{k}"] = 100.0 * float((tr <= k).float().mean())
        out[f"ir_r{k}"] = 100.0 * float((ir <= k).float().mean())
    return out


def chance_recall(image_of_text, n_images: int, ks=KS, text_id=None) -> dict:
    """Expected recall (%) of a uniformly random ranking, both ways."""
    _, own, inverse = relevance(image_of_text, n_images, text_id)
    own_texts = own.sum(dim=1).tolist()                          # m: distinct own texts of each image
    having = own.sum(dim=0)[inverse].tolist()                    # r: images having each caption's text
    n_texts = own.shape[1]
    out = {}
    for k in ks:
        tr_miss = [math.comb(n_texts - m, k) / math.comb(n_texts, k) if k <= n_texts else 0.0 for m in own_texts]
        ir_miss = [math.comb(n_images - r, k) / math.comb(n_images, k) if k <= n_images else 0.0 for r in having]
        out[f"tr_r{k}"] = 100.0 * (1.0 - float(np.mean(tr_miss)))
        out[f"ir_r{k}"] = 100.0 * (1.0 - float(np.mean(ir_miss)))
    return out


@torch.no_grad()
def similarity(model, images: torch.Tensor, texts: torch.Tensor, device, batch_size: int = 512) -> torch.Tensor:
    """Cosine similarities (images x texts) of a pair model's two projections, on CPU."""
    model.eval()
    img = torch.cat([model.encode_images(images[s:s + batch_size].to(device)).cpu()
                     for s in range(0, len(images), batch_size)])
    txt = torch.cat([model.encode_texts(texts[s:s + batch_size].to(device)).cpu()
                     for s in range(0, len(texts), batch_size)])
    model.train()
    return img @ txt.T


def summarize(runs: list[dict]) -> dict:
    """{metric}_mean and {metric}_std (population std) over repeats."""
    out = {}
    for key in runs[0]:
        values = np.array([r[key] for r in runs])
        out[f"{key}_mean"], out[f"{key}_std"] = float(values.mean()), float(values.std())
    return out


def evaluate_pair_set(make_model, train: dict, splits: dict, *, repeats: int, seed: int, epochs: int, lr: float,
                      momentum: float, batch_size: int, device) -> tuple[dict, list[dict]]:
    """Train `repeats` students `make_model(seed)` on `train` (images, texts, image_of_text) and score each split of
    `splits` ({name: same dict}) -> ({split: summary}, per-repeat {split: recall}). Budget fixed: nothing is chosen
    on any split."""
    from mmdistill.nn.contrastive import train_pairs
    per_repeat = []
    for r in range(repeats):
        model = make_model(seed + r)
        train_pairs(model, train["images"], train["texts"], train["image_of_text"], epochs, device, lr=lr,
                    momentum=momentum, batch_size=batch_size, generator=torch.Generator().manual_seed(seed + r))
        per_repeat.append({name: recall(similarity(model, s["images"], s["texts"], device), s["image_of_text"],
                                        text_id=s.get("text_id")) for name, s in splits.items()})
    return {name: summarize([p[name] for p in per_repeat]) for name in splits}, per_repeat
