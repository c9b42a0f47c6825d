"""Coresets of the image-text train split as evaluated pair sets (MTT-VL §3.2's baselines; stage select_pairs).

A coreset of N is N train images with ALL their captions, as `random-N` (mmdistill.data.pairs.subset); a pair's
feature joins its image and its captions (the mean of their embeddings), each part L2-normalised so the two
modalities weigh the same. Labels are never read.

    herding-N     Welling's herding (mmdistill.selection.coresets.herding) on the concatenated features of
                  pre-trained encoders: the `embed.image_encoder` image features (EfficientNet-Lite0 ImageNet
                  weights offline) and the caption embeddings of stage embed_pairs (`imagetext.text_encoder`)
    kcenter-N     greedy k-center (coresets.k_center) on the same features, first pair as `select.kcenter_start`
                  says (MTT-VL: a random pair)
    forgetting-N  Toneva's forgetting events of each pair while one pair model (`imagetext.model`, seed `seed`) is
                  trained on every train pair as an expert is (`imagetext.buffer`: lr, momentum, batch size,
                  expert_epochs): a pair is correct at a presentation when, within its mini-batch, its image
                  retrieves its caption and the caption its image; ranked by coresets.forgetting_order in the
                  order `select.forgetting_order` (fewest: the reliable pairs MTT-VL keeps), first N
    pds-N         PDS (coresets.pds_prototypes, `select.pds.prune_ratio`) with N clusters in the joint space of
                  that trained pair model; each prototype's nearest real pair (by its text prototype, the
                  nearest not already taken, so the set holds N distinct images)

Output data/pair_coresets/{name}.parquet: `rank` int32 (order of choice), `uid` (the image); metadata `selection`
(method, size, the settings it used, seed).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from mmdistill.core.config import param, positive
from mmdistill.core.storage import PipelineError
from mmdistill.data.pairs import CORESET_KINDS, parse_pair_set
from mmdistill.selection.coresets import FORGETTING_ORDERS, KCENTER_STARTS, forgetting_order, herding, k_center
from mmdistill.selection.forgetting import ForgettingCounter

def mean_caption(texts: torch.Tensor, image_of_text: torch.Tensor, n_images: int) -> torch.Tensor:
    """Each image's captions averaged, L2-normalised (n_images x D)."""
    total = torch.zeros(n_images, texts.shape[1]).index_add_(0, image_of_text, texts.float())
    return F.normalize(total, dim=1)


def pretrained_features(images_uint8: torch.Tensor, pairs: dict, params: dict, device) -> np.ndarray:
    """[image features of `embed.image_encoder` | mean caption embedding], each L2-normalised."""
    from mmdistill.embed.features import IMAGE_ENCODERS, build_encoder, encode_images
    _, encoder = build_encoder(params, "embed.image_encoder", IMAGE_ENCODERS, device)
    image = F.normalize(torch.from_numpy(encode_images(encoder, images_uint8, positive(params, "embed.batch_size"),
                                                       "pair coreset image features")).float(), dim=1)
    text = mean_caption(pairs["texts"], pairs["image_of_text"], len(pairs["images"]))
    return torch.cat([image, text], dim=1).numpy()


def train_reference_model(pairs: dict, params: dict, device, counter: ForgettingCounter | None = None):
    """One pair model trained on every train pair as expert 0 of stage buffer is; with `counter`, the correctness
    of each pair at each presentation (image and caption retrieve each other within the mini-batch)."""
    from mmdistill.nn.contrastive import build_pair_model, train_pairs
    seed = param(params, "seed", int)
    model = build_pair_model(params, pairs["channels"], pairs["image_size"], pairs["mean"], pairs["std"],
                             pairs["texts"].shape[1], seed)

    def record(idx, image_emb, text_emb):
        logits = image_emb @ text_emb.T
        diagonal = torch.arange(len(idx), device=logits.device)
        correct = (logits.argmax(1) == diagonal) & (logits.argmax(0) == diagonal)
        counter.update(idx.numpy(), correct.cpu().numpy())

    train_pairs(model, pairs["images"], pairs["texts"], pairs["image_of_text"],
                positive(params, "imagetext.buffer.expert_epochs"), device,
                lr=param(params, "imagetext.buffer.lr", float),
                momentum=param(params, "imagetext.buffer.momentum", float),
                batch_size=positive(params, "imagetext.buffer.batch_size"),
                generator=torch.Generator().manual_seed(seed), on_batch=record if counter is not None else None)
    return model


def forgetting_ranking(counter: ForgettingCounter, uids: list[str], order: str) -> np.ndarray:
    events = pa.table({"uid": uids, "forgetting_events": counter.events, "learned": counter.learned,
                       "misclassified": counter.misclassified})
    return forgetting_order(events, order)


def pds_nearest_pairs(image: np.ndarray, text: np.ndarray, n: int, prune_ratio: float, seed: int) -> np.ndarray:
    """PDS with n clusters; per prototype (in order) the real pair whose text is nearest its text prototype among
    those not yet taken."""
    from mmdistill.selection.coresets import pds_prototypes
    out = pds_prototypes(image, text, n, prune_ratio, seed)
    similarity = out["text"] @ text.T
    taken, chosen = np.zeros(len(text), bool), []
    for row in similarity:
        ranked = np.argsort(-row, kind="stable")
        pick = int(ranked[~taken[ranked]][0])
        taken[pick] = True
        chosen.append(pick)
    return np.array(chosen)


def select_pair_coreset(name: str, pairs: dict, images_uint8: torch.Tensor, params: dict, device
                        ) -> tuple[np.ndarray, dict]:
    """(positions of the chosen train images in order of choice, the settings for the output's metadata)."""
    kind, n = parse_pair_set(name, len(pairs["images"]))
    if kind not in CORESET_KINDS:
        raise PipelineError(f"pair set {name!r} is not a coreset ({' | '.join(k + '-N' for k in CORESET_KINDS)})")
    seed = param(params, "seed", int)
    if kind in ("herding", "kcenter"):
        features = pretrained_features(images_uint8, pairs, params, device)
        how = {"image_encoder": param(params, "embed.image_encoder", str)}
        if kind == "herding":
            return herding(features, n), how
        start = param(params, "select.kcenter_start", str, choices=KCENTER_STARTS)
        return k_center(features, n, start, np.random.default_rng(seed)), {**how, "start": start}
    trained = {"model": params["imagetext"]["model"], "buffer": params["imagetext"]["buffer"]}
    if kind == "forgetting":
        order = param(params, "select.forgetting_order", str, choices=FORGETTING_ORDERS)
        counter = ForgettingCounter(len(pairs["images"]))
        train_reference_model(pairs, params, device, counter)
        ranked = forgetting_ranking(counter, list(pairs["uids"]), order)[:n]
        return ranked, {"order": order, "never_learned": int((~counter.learned).sum()), **trained}
    prune_ratio = param(params, "select.pds.prune_ratio", float)
    joint = joint_embeddings(train_reference_model(pairs, params, device), pairs, device)
    return pds_nearest_pairs(joint["image"].numpy(), joint["text"].numpy(), n, prune_ratio, seed), {
        "prune_ratio": prune_ratio, **trained}


@torch.no_grad()
def joint_embeddings(model, pairs: dict, device) -> dict:
    """The pair model's joint space: `image` (each image), `text` (each image's mean caption) and `captions` (each
    caption), all L2-normalised."""
    model.eval()
    image = torch.cat([model.encode_images(pairs["images"][s:s + 512].to(device)).cpu()
                       for s in range(0, len(pairs["images"]), 512)])
    text = model.encode_texts(mean_caption(pairs["texts"], pairs["image_of_text"], len(image)).to(device)).cpu()
    return {"image": image, "text": text, "captions": model.encode_texts(pairs["texts"].to(device)).cpu()}
