"""Image-text pairs of the prepared splits, and the frozen text features of their captions (stage embed_pairs).

A pair split, as the pair model and the retrieval code take it:
    {"images": float N x C x H x W (dataset-normalised), "texts": float T x D (caption embeddings),
     "image_of_text": int64 T (the image each caption belongs to),
     "text_id": int64 T (the same id = the same caption string; evaluation splits, for the retrieval rule)}

data/pair_text/{split}.pt (stage embed_pairs): {"embeddings": float32 T x D, "image_of_text": int64 T,
"text_id": int64 T, "uids": the split's image uids in prepared order, "encoder": name, "dim": D}. Captions are the prepared
`captions` column (all of them, in order), embedded once with `imagetext.text_encoder`.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from mmdistill.core.paths import PREPARED
from mmdistill.core.storage import PipelineError, load_tensors, read_parquet
from mmdistill.data.datasets import SPLITS, load_split

PAIR_TEXT = Path("data/pair_text")
CORESET_KINDS = ("herding", "kcenter", "forgetting", "pds")   # stage select_pairs (mmdistill.selection.pair_sets)
PAIR_SET = re.compile(rf"^(full|(random|mttvl|{'|'.join(CORESET_KINDS)})-([1-9][0-9]*))$")
DISTILLED_PAIRS = Path("data/distilled_pairs")      # stage distill_pairs: {run}.pt, run = mttvl-N
PAIR_CORESETS = Path("data/pair_coresets")          # stage select_pairs: {name}.parquet (mmdistill.selection.pair_sets)


def pair_text_path(split: str) -> Path:
    return PAIR_TEXT / f"{split}.pt"


def read_captions(split: str, root=PREPARED) -> tuple[list[str], list[list[str]]]:
    """(uids, captions of each image) of a prepared split; an image without captions is an error naming it."""
    if split not in SPLITS:
        raise PipelineError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    table = read_parquet(Path(root) / split, ["uid", "captions"])
    uids, captions = table["uid"].to_pylist(), table["captions"].to_pylist()
    for uid, caps in zip(uids, captions):
        if not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            raise PipelineError(f"{root}/{split}: image {uid} has no captions (or an empty one); image-text stages "
                                "need a prepared image-text dataset (prepare.dataset fashion_mnist_captions, "
                                "scenes or karpathy)")
    return uids, captions


def flatten(captions: list[list[str]]) -> tuple[list[str], torch.Tensor]:
    texts = [c for caps in captions for c in caps]
    image_of_text = torch.repeat_interleave(torch.arange(len(captions)), torch.tensor([len(c) for c in captions]))
    return texts, image_of_text


def load_pairs(split: str, root=PREPARED, text_root=PAIR_TEXT) -> dict:
    """A pair split: prepared images with stage embed_pairs' caption embeddings (checked to be of the same images)."""
    images = load_split(split, root)
    text = load_tensors(Path(text_root) / f"{split}.pt")
    if list(text["uids"]) != list(images.uids):
        raise PipelineError(f"{text_root}/{split}.pt was embedded from other images than data/prepared/{split}; "
                            "re-run stage embed_pairs")
    if "text_id" not in text:
        raise PipelineError(f"{text_root}/{split}.pt has no text_id (made by an older embed_pairs); re-run stage "
                            "embed_pairs")
    return {"images": images.normalized(), "texts": text["embeddings"].float(),
            "image_of_text": text["image_of_text"].long(), "text_id": text["text_id"].long(), "uids": images.uids,
            "channels": images.images.shape[1], "image_size": images.images.shape[-1],
            "mean": images.mean, "std": images.std}


def parse_pair_set(name: str, n_train: int) -> tuple[str, int | None]:
    """(kind, pair count) of a pair-set name: `full` -> ("full", None), `random-N` -> ("random", N) (N train images
    drawn at random, with all their captions), `mttvl-N` -> ("mttvl", N) (stage distill_pairs' N synthetic pairs),
    `herding-N`, `kcenter-N`, `forgetting-N`, `pds-N` -> (kind, N) (stage select_pairs' N train images, with all
    their captions); N is checked against the train split."""
    match = PAIR_SET.match(name)
    if not match:
        raise PipelineError(f"pair set {name!r}: expected 'full', 'random-N' (N train pairs drawn at random), "
                            "'mttvl-N' (N pairs distilled by stage distill_pairs) or a coreset "
                            f"({', '.join(k + '-N' for k in CORESET_KINDS)}: stage select_pairs)")
    if match.group(2) is None:
        return "full", None
    n = int(match.group(3))
    if n > n_train:
        raise PipelineError(f"pair set {name!r}: {n} pairs requested, but the train split holds {n_train} images")
    return match.group(2), n


SET_LISTS = {"pair_sets": ("full", "random"), "distill_sets": ("mttvl",), "coreset_sets": CORESET_KINDS}


def check_set_lists(params: dict) -> None:
    """`imagetext.pair_sets` lists full / random-N sets, `imagetext.distill_sets` mttvl-N runs and
    `imagetext.coreset_sets` herding/kcenter/forgetting/pds-N (dvc.yaml gives the lists different stages: a
    distilled set's or a coreset's evaluation depends on the file that made it)."""
    for key, kinds in SET_LISTS.items():
        for name in params["imagetext"][key]:
            kind, _ = parse_pair_set(name, 2**62)
            if kind not in kinds:
                home = next(k for k, v in SET_LISTS.items() if kind in v)
                raise PipelineError(f"param 'imagetext.{key}' lists {name!r}; it takes {' / '.join(kinds)} sets "
                                    f"(imagetext.{home} takes {kind} sets)")


def distilled_pairs_path(run: str) -> Path:
    return DISTILLED_PAIRS / f"{run}.pt"


def load_distilled_pairs(run: str) -> dict:
    """Stage distill_pairs' set as a pair split (one text per image) plus its learned student learning rate."""
    saved = load_tensors(distilled_pairs_path(run))
    return {"images": saved["images"].float(), "texts": saved["texts"].float(),
            "image_of_text": torch.arange(len(saved["images"])), "lr": float(saved["lr"])}


def subset(pairs: dict, n: int | None, seed: int) -> dict:
    """`n` images drawn at random (seeded) with ALL their captions; None = every pair."""
    if n is None:
        return pairs
    return take(pairs, torch.randperm(len(pairs["images"]), generator=torch.Generator().manual_seed(seed))[:n])


def take(pairs: dict, keep: torch.Tensor) -> dict:
    """The images at positions `keep` (in train order) with ALL their captions."""
    keep = torch.sort(torch.as_tensor(keep, dtype=torch.long)).values
    n = len(keep)
    new_index = torch.full((len(pairs["images"]),), -1, dtype=torch.long)
    new_index[keep] = torch.arange(n)
    mask = new_index[pairs["image_of_text"]] >= 0
    return {**pairs, "images": pairs["images"][keep], "texts": pairs["texts"][mask],
            "image_of_text": new_index[pairs["image_of_text"][mask]], "uids": [pairs["uids"][i] for i in keep.tolist()],
            **({"text_id": pairs["text_id"][mask]} if "text_id" in pairs else {})}


def coreset_path(name: str) -> Path:
    return PAIR_CORESETS / f"{name}.parquet"


def read_coreset(name: str, train_uids: list[str]) -> torch.Tensor:
    """Positions in the train split of stage select_pairs' chosen images, in order of choice."""
    path = coreset_path(name)
    if not path.exists():
        raise PipelineError(f"{path} is missing: run stage select_pairs@{name} (list it in imagetext.coreset_sets)")
    uids = read_parquet(path, ["uid"])["uid"].to_pylist()
    position = {u: i for i, u in enumerate(train_uids)}
    missing = [u for u in uids if u not in position]
    if missing:
        raise PipelineError(f"{path}: image {missing[0]} is not in the prepared train split; re-run stage "
                            f"select_pairs@{name}")
    return torch.tensor([position[u] for u in uids], dtype=torch.long)
