"""embed_pairs: the frozen text features of the prepared captions -> data/pair_text/{train,val,test}.pt

    python -m mmdistill.stages.embed_pairs

Every caption of every image of each split (the prepared `captions` column) is embedded with
`imagetext.text_encoder` (a text encoder of mmdistill.embed.features: minilm offline, open_clip, hf_clip),
L2-normalised. Each distinct caption string is encoded once (label captions: a few dozen strings for thousands of
captions) and `text_id` numbers the distinct strings, the retrieval rule's notion of one text.
Layout: mmdistill.data.pairs. An image without captions is an error naming it.
"""
from __future__ import annotations

import torch

from mmdistill.core.config import load_params, positive
from mmdistill.core.runtime import resolve_device
from mmdistill.core.storage import check_finite, check_writable, save_tensors
from mmdistill.data.datasets import SPLITS
from mmdistill.data.pairs import flatten, pair_text_path, read_captions
from mmdistill.embed.features import TEXT_ENCODERS, build_encoder
from mmdistill.stages import ArgumentParser, run_stage


def embed_pair_texts(params) -> None:
    device = resolve_device(params)
    batch_size = positive(params, "imagetext.batch_size")
    check_writable(*(pair_text_path(s) for s in SPLITS))
    captions = {s: read_captions(s) for s in SPLITS}  # every split checked before the encoder loads
    name, encoder = build_encoder(params, "imagetext.text_encoder", TEXT_ENCODERS, device)
    for split, (uids, caps) in captions.items():
        texts, image_of_text = flatten(caps)
        position = {t: i for i, t in enumerate(dict.fromkeys(texts))}   # distinct strings, first-seen order
        distinct, text_id = list(position), torch.tensor([position[t] for t in texts], dtype=torch.long)
        vectors = encoder.encode(distinct, batch_size)
        check_finite(vectors, f"{name} embeddings of the {split} captions")
        save_tensors({"embeddings": torch.from_numpy(vectors).float()[text_id], "image_of_text": image_of_text,
                      "text_id": text_id, "uids": uids, "encoder": name, "dim": int(vectors.shape[1])},
                     pair_text_path(split))
        print(f"embed_pairs {split}: {len(texts)} captions ({len(distinct)} distinct) of {len(uids)} images -> "
              f"{pair_text_path(split)}")


def main() -> None:
    ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    embed_pair_texts(load_params())


if __name__ == "__main__":
    run_stage(main)
