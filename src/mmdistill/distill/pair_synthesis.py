"""PDS synthesis of image-text pairs (PDS §3.2): `pds_unclip-N`, N pairs generated from PDS prototypes by an unCLIP
decoder (mmdistill.nn.unclip), evaluated by evaluate_retrieval beside the coresets (`pds-N`: the real pairs nearest
the same prototypes) and mttvl.

The joint space is the one stage select_pairs' `pds-N` uses (mmdistill.selection.pair_sets): a pair model
(`imagetext.model`) trained on every train pair as expert 0 of stage buffer is (seed `seed`); PDS's CLIP is not
available offline. Stage unclip_decoder embeds the train images and captions with it and trains the decoder on
(train image, its caption, its image embedding), one row per caption (mmdistill.nn.diffusion.train_pipeline,
`diffusion.offline` and `diffusion.resolution`/`flip`), saving the embeddings beside the decoder. Stage
synthesize_pairs then, per set:

  prototypes  PDS (coresets.pds_prototypes, `select.pds.prune_ratio`, seed) on the saved image / mean-caption
              embeddings with N clusters: prune, mini-batch k-means per modality, Hungarian matching, averages
  prompt      the train caption nearest the text prototype (PDS: the retrieved caption); `condition: image`
              (PDS Table 11's ablation) generates from the image prototype alone, with the empty prompt
  image       the decoder from noise, conditioned on the image prototype (`image_embeds`, at `noise_level`) and the
              prompt, `guidance_scale` 5 and `steps` 100 (PDS §4.1), one seeded generator per image; resized to the
              data's size and channels, rounded to 8-bit pixels
  text        `text: prototype` (PDS: the text prototype is the distilled text feature): the mean of the frozen
              caption features (stage embed_pairs) of the pairs the text prototype averages, L2-normalised, since
              the student reads those features and not the pair model's space; `caption`: the prompt's features

Output data/distilled_pairs/pds_unclip-N.pt: {images: float N x C x H x W (dataset-normalised), texts: float N x D,
prompts, shared (pairs behind each prototype; 0 = a pairless match), settings, decoder digest}; no learned
learning rate (the students train at `imagetext.evaluate.lr`). Figure outputs/figures/distilled/pds_unclip-N.png:
generated images beside the train image nearest each image prototype, with the prompt.

Not built: a pretrained Stable unCLIP decoder (`imagetext.pds_unclip.decoder` other than offline): its prototypes
would have to be means in its own CLIP image space, with a CLIP text encoder aligned with it.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
import torch.nn.functional as F

from mmdistill.core.config import param, positive
from mmdistill.core.paths import DIFFUSION_RECORD_NAME, diffusion_dir, distilled_figure
from mmdistill.core.storage import PipelineError, load_tensors, save_figure, save_tensors
from mmdistill.data.datasets import load_split, normalize
from mmdistill.data.pairs import distilled_pairs_path, flatten, load_pairs, parse_pair_set, read_captions
from mmdistill.selection.coresets import PDS_CONDITIONS, PDS_TEXT_FEATURES

DECODER = "pds_unclip"                  # data/diffusion/pds_unclip (stage unclip_decoder)
EMBEDDINGS = "pair_embeddings.pt"       # beside the decoder: the joint-space embeddings it was trained on
BLOCK = "imagetext.pds_unclip"


def prototype_captions(image_captions: torch.Tensor, text_members: list, name: str) -> torch.Tensor:
    """Each prototype's caption feature: the mean of its member images' mean captions, L2-normalised. A prototype
    whose text cluster is empty (k-means over fewer distinct captions than prototypes, e.g. label captions) has
    none: an error, never a NaN row."""
    empty = [k for k, members in enumerate(text_members) if len(members) == 0]
    if empty:
        raise PipelineError(f"{name}: {len(empty)} of {len(text_members)} PDS prototypes have no caption members "
                            f"(first: prototype {empty[0]}); the train captions have too few distinct texts for "
                            f"{len(text_members)} prototypes: use fewer pairs, more varied captions, or "
                            "imagetext.pds_unclip.text: caption")
    return F.normalize(torch.stack([image_captions[torch.as_tensor(m)].mean(0) for m in text_members]), dim=1)


def decoder_source(params: dict) -> str:
    source = param(params, f"{BLOCK}.decoder", str)
    if source != "offline":
        raise PipelineError(f"param '{BLOCK}.decoder' = {source!r}: only 'offline' is built (a pretrained Stable "
                            "unCLIP needs PDS prototypes in its own CLIP image space and an aligned CLIP text encoder)")
    return source


def train_decoder(params: dict, resume: bool, device):
    """Stage unclip_decoder: embed the pairs with the reference pair model, train the offline decoder on them."""
    from mmdistill.nn.diffusion import TrainingPairs, train_pipeline
    from mmdistill.nn.unclip import unclip_conditioning
    from mmdistill.selection.pair_sets import joint_embeddings, train_reference_model
    source = decoder_source(params)
    pairs = {split: load_pairs(split) for split in ("train", "val")}
    model = train_reference_model(pairs["train"], params, device)
    joint = {split: joint_embeddings(model, p, device) for split, p in pairs.items()}
    data = {}
    for split, p in pairs.items():
        _, captions = read_captions(split)
        texts, image_of_text = flatten(captions)
        data[split] = TrainingPairs(load_split(split).images[image_of_text], texts,
                                    joint[split]["image"][image_of_text])
    saved = {"uids": list(pairs["train"]["uids"]), **{k: joint["train"][k] for k in ("image", "text", "captions")}}
    trained = {"model": params["imagetext"]["model"], "buffer": params["imagetext"]["buffer"]}
    return train_pipeline(params, DECODER, resume, data["train"], data["val"],
                          json.dumps([saved["uids"], data["train"].captions, trained]),
                          {"embedding": "pair model (imagetext.model, trained as expert 0 of stage buffer)",
                           "pair_model": trained, "embed_dim": int(joint["train"]["image"].shape[1])},
                          files={EMBEDDINGS: saved}, model=source, conditioning=unclip_conditioning())


def settings(params: dict) -> dict:
    from mmdistill.nn.unclip import check_decoding
    out = {"guidance_scale": param(params, f"{BLOCK}.guidance_scale", float),
           "steps": param(params, f"{BLOCK}.steps", int), "noise_level": param(params, f"{BLOCK}.noise_level", int),
           "batch_size": positive(params, f"{BLOCK}.batch_size"),
           "text": param(params, f"{BLOCK}.text", str, choices=PDS_TEXT_FEATURES),
           "condition": param(params, f"{BLOCK}.condition", str, choices=PDS_CONDITIONS)}
    check_decoding(out["guidance_scale"], out["steps"], out["noise_level"],
                   {k: f"{BLOCK}.{k}" for k in ("guidance_scale", "steps", "noise_level")})
    return out


def synthesize_pairs(name: str, params: dict, device) -> dict:
    """The set `name` (pds_unclip-N) -> what it wrote to data/distilled_pairs/{name}.pt."""
    from mmdistill.nn.unclip import decode, load_unclip
    from mmdistill.selection.coresets import pds_prototypes
    from mmdistill.selection.pair_sets import mean_caption
    how = settings(params)
    seed = param(params, "seed", int)
    prune_ratio = param(params, "select.pds.prune_ratio", float)
    train = load_pairs("train")
    kind, n = parse_pair_set(name, len(train["images"]))
    if kind != "pds_unclip":
        raise PipelineError(f"--pairs {name!r}: synthesize_pairs makes pds_unclip-N sets")
    folder = diffusion_dir(DECODER)
    if not (folder / DIFFUSION_RECORD_NAME).exists():
        raise PipelineError(f"{folder} holds no decoder: run `python -m mmdistill.stages.unclip_decoder` (DVC stage "
                            "unclip_decoder@on, imagetext.unclip: [on])")
    record = json.loads((folder / DIFFUSION_RECORD_NAME).read_text())
    saved = load_tensors(folder / EMBEDDINGS)
    if list(saved["uids"]) != list(train["uids"]):
        raise PipelineError(f"{folder}/{EMBEDDINGS} was made from other train images; re-run stage unclip_decoder")
    pds = pds_prototypes(saved["image"].numpy(), saved["text"].numpy(), n, prune_ratio, seed)
    _, captions = read_captions("train")
    texts, _ = flatten(captions)
    nearest = np.argmax(pds["text"] @ saved["captions"].numpy().T, axis=1)
    prompts = [texts[t] for t in nearest]
    if how["text"] == "prototype":
        features = prototype_captions(mean_caption(train["texts"], train["image_of_text"], len(train["images"])),
                                      pds["text_members"], name)
    else:
        features = train["texts"][torch.as_tensor(nearest)]
    pipe = load_unclip(str(folder), None, "stage unclip_decoder's " + str(folder), saved["image"].shape[1])
    split = load_split("train")
    pixels = decode(pipe, torch.from_numpy(pds["image"]), prompts if how["condition"] == "both" else [""] * n,
                    guidance_scale=how["guidance_scale"], steps=how["steps"], noise_level=how["noise_level"], seed=seed,
                    batch_size=how["batch_size"], resolution=record["resolution"], channels=split.images.shape[1],
                    size=tuple(split.images.shape[2:]), keys={k: f"{BLOCK}.{k}" for k in how}, device=device)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.safetensors")))).hexdigest()[:16]
    out = {"images": normalize(pixels, train["mean"], train["std"]), "texts": features.float(), "prompts": prompts,
           "shared": torch.as_tensor(pds["shared"]), "settings": how, "prune_ratio": prune_ratio, "seed": seed,
           "decoder": {"folder": str(folder), "digest": digest, "model": record["model"]}}
    save_tensors(out, distilled_pairs_path(name))
    nearest_image = np.argmax(pds["image"] @ saved["image"].numpy().T, axis=1)
    save_pairs_figure(pixels, split.images[torch.as_tensor(nearest_image)], prompts, distilled_figure(name),
                      f"{name}: generated (left) beside the train image nearest its image prototype, with its prompt")
    return out


def save_pairs_figure(generated: torch.Tensor, nearest: torch.Tensor, prompts: list[str], path, title: str,
                      shown: int = 12) -> None:
    """The first `shown` generated images (uint8) beside their prototypes' nearest real images and prompts."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = min(shown, len(generated))
    fig, axes = plt.subplots(rows, 2, figsize=(5.5, 1.3 * rows + 0.6), squeeze=False)
    for r in range(rows):
        for c, img in enumerate((generated[r], nearest[r])):
            pixels = img.permute(1, 2, 0).numpy()
            axes[r, c].imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 1].set_ylabel("\n".join(textwrap.wrap(prompts[r], 28)[:3]), rotation=0, ha="left", va="center",
                              fontsize=6, labelpad=4)
        axes[r, 1].yaxis.set_label_position("right")
    fig.suptitle(title, fontsize=7)
    save_figure(fig, path)
    plt.close(fig)
