"""The text-to-image pipeline of the synthesis methods (VLCP): a diffusers StableDiffusionImg2ImgPipeline loaded from
a hub id or a local folder, fine-tuned on the train split's (image, description) pairs (stage finetune_diffusion:
mmdistill.stages.finetune_diffusion), and image-to-image generation with it (methods/vlcp.py).

Loading (`load_pipeline`): a local folder must be a `save_pretrained` pipeline with model_index.json and the folders
unet/, vae/, text_encoder/, tokenizer/, scheduler/; a missing one, a UNet whose cross_attention_dim is not the text
encoder's hidden size, a UNet whose input is not the VAE's latents, or a tokenizer longer than the text encoder's
positions is a one-line error. No safety checker or feature extractor is loaded.

Fine-tuning (`finetune`, params `diffusion`), as VLCP §3 / Table 1 describe it: the VAE and the text encoder are
frozen; the UNet learns to predict the noise (or the velocity, for a v-prediction scheduler) added to the VAE
latents of a train image at a uniformly drawn timestep, conditioned on the text encoder's states of the image's
description (data/annotations/descriptions.parquet): MSE, AdamW. Images are the prepared squares resized (bilinear,
antialiased) to `diffusion.resolution`, grey repeated to RGB for an RGB VAE, randomly flipped (`diffusion.flip`);
a share `caption_dropout` of captions is replaced by "" so that classifier-free guidance has an unconditional
model to contrast with. With `diffusion.class_name: mask` every caption (and every prompt of a method) has the
image's ground-truth class name replaced by "item" (CLASS_MASK), so no text names the label; `keep` is VLCP's form
(LLaVA was asked about the named class, so its descriptions name it).

  model: a hub id or local folder  fine-tune its UNet with `diffusion.finetune` (VLCP Table 1: batch 8, 8 epochs,
        lr 1e-5, weight decay 0.01; `lora_rank` r > 0: peft LoRA adapters of rank r (alpha r) on the attention
        projections are trained instead, and fused into the UNet when it is saved).
  model: offline  no pretrained weights exist here, so a small pipeline is built and trained from scratch on the
        train split (`diffusion.offline`): an AutoencoderKL of the `vae` params trained first (mmdistill.nn.vae
        .fit_vae) on the RGB images at the resolution; the CLIP tokenizer (CLIP's own BPE vocabulary, the file
        open_clip ships); a CLIPTextModel of `text_width`/`text_layers`/`text_heads` (MLP 4x wide) with RANDOM,
        FROZEN weights: its states tell tokens and their order apart but carry no pretrained meaning; a
        UNet2DConditionModel (`block_out_channels`, cross-attention in every level but the deepest, as SD's) trained
        from scratch; SD v1's DDIM schedule (scaled-linear betas 0.00085-0.012, 1000 steps).

Checkpoints under data/checkpoints/diffusion-{method}/: the offline pipeline before UNet training (base/), and after
every epoch the trainable weights, the optimiser, the generator (shuffling, flips, caption dropout, latent
sampling, noise, timesteps all come from it) and the loss history. `--resume` continues from the last epoch with
the same output bytes as an uninterrupted run; both runs load the pipeline from the same place (base/ or `model`).

Outputs (one per method of `distill.methods.synthesis`):
  data/diffusion/{method}/              save_pretrained pipeline (model_index.json, unet/, vae/, text_encoder/,
                                        tokenizer/, scheduler/)
  data/diffusion/{method}/record.json   model, settings, class_name, train pairs, classes, seed, device, versions,
                                        and per epoch the loss (train: mean over the epoch; val: the val split at
                                        fixed noise, before training first)
  outputs/metrics/diffusion/{method}.json  val_loss_untrained, val_loss, train_loss_last_epoch
  outputs/timings/diffusion/{method}.json  epoch_seconds: the wall seconds of each epoch's training steps (not a
                                        DVC output: they differ on every run; a resumed run keeps the earlier ones)
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmdistill.core.config import param, positive
from mmdistill.core.paths import (
    DIFFUSION_RECORD_NAME,
    diffusion_checkpoints,
    diffusion_dir,
    diffusion_metrics,
    diffusion_timings,
)
from mmdistill.core.runtime import resolve_device, seed_everything, versions
from mmdistill.core.storage import (
    PipelineError,
    atomic_path,
    check_writable,
    load_tensors,
    save_json,
    save_tensors,
)
from mmdistill.data.datasets import load_split, resolve_flip

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
CLASS_NAMES = ("mask", "keep")  # diffusion.class_name
CLASS_MASK = "item"
OFFLINE = "offline"


# ---- loading ---------------------------------------------------------------------------------------------------

def load_pipeline(source: str, revision: str | None, key: str):
    """StableDiffusionImg2ImgPipeline from a hub id or local folder (`key` names where `source` came from)."""
    from diffusers import StableDiffusionImg2ImgPipeline
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise PipelineError(f"{source} ({key}) has no model_index.json: not a diffusers pipeline folder")
        for component in COMPONENTS:
            if not (folder / component).is_dir():
                raise PipelineError(f"{source} ({key}) has no {component}/ folder; a Stable Diffusion pipeline "
                                    f"needs {', '.join(c + '/' for c in COMPONENTS)}")
    elif source.startswith((".", "/", "~")):
        raise PipelineError(f"{key}: no pipeline folder at {source!r}")
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            source, revision=revision or None, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, low_cpu_mem_usage=False)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"cannot load a Stable Diffusion pipeline from {source!r} ({key}, revision "
                            f"{revision or 'default'!r}): {first}") from exc
    check_pipeline(pipe, source, key)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_pipeline(pipe, source: str, key: str) -> None:
    """The components fit together: text width = UNet cross-attention width, VAE latents = UNet input, prompts fit
    the text encoder's positions."""
    unet, text, vae = pipe.unet.config, pipe.text_encoder.config, pipe.vae.config
    if unet.cross_attention_dim != text.hidden_size:
        raise PipelineError(f"{source} ({key}): the UNet's cross_attention_dim is {unet.cross_attention_dim} but the "
                            f"text encoder's hidden size is {text.hidden_size}; they must be equal")
    if unet.in_channels != vae.latent_channels:
        raise PipelineError(f"{source} ({key}): the UNet takes {unet.in_channels} channels but the VAE's latents "
                            f"have {vae.latent_channels}")
    if pipe.tokenizer.model_max_length > text.max_position_embeddings:
        raise PipelineError(f"{source} ({key}): the tokenizer's model_max_length {pipe.tokenizer.model_max_length} "
                            f"exceeds the text encoder's {text.max_position_embeddings} positions")


# ---- images and texts ------------------------------------------------------------------------------------------

def to_pipeline(images: torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    """[0, 1] images (N x C x H x W) -> the pipeline's [0, 1] images at `resolution`^2 with the VAE's `channels`
    (grey repeated to RGB)."""
    if images.shape[1] != channels and not (images.shape[1] == 1 and channels == 3):
        raise PipelineError(f"the pipeline's VAE takes {channels}-channel images; the data has {images.shape[1]} "
                            "(only grey data with an RGB VAE is converted)")
    if tuple(images.shape[2:]) != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                               antialias=True).clamp(0, 1)
    return images.expand(-1, channels, -1, -1)


def from_pipeline(images: torch.Tensor, channels: int, size: tuple) -> torch.Tensor:
    """The pipeline's [0, 1] images -> uint8 images of the data's `channels` (RGB averaged to grey) and `size`."""
    if tuple(images.shape[2:]) != tuple(size):
        images = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def mask_class_name(text: str, class_name: str) -> str:
    """`text` with every occurrence of `class_name` (any case) replaced by CLASS_MASK."""
    return re.sub(re.escape(class_name), CLASS_MASK, text, flags=re.IGNORECASE)


def captions_for(texts: list[str], labels, class_names: list[str], class_name: str) -> list[str]:
    """Descriptions as the pipeline's captions (`class_name`: mask | keep)."""
    if class_name not in CLASS_NAMES:
        raise PipelineError(f"class_name must be one of {', '.join(CLASS_NAMES)}, got {class_name!r}")
    if class_name == "keep":
        return list(texts)
    return [mask_class_name(t, class_names[int(y)]) for t, y in zip(texts, labels)]


# ---- generation ------------------------------------------------------------------------------------------------

def check_generation(strength: float, guidance_scale: float, steps: int, keys: dict) -> None:
    """img2img settings (`keys`: the param name of each, for messages)."""
    if not 0 < strength <= 1:
        raise PipelineError(f"param '{keys['strength']}' must be in (0, 1], got {strength}")
    if guidance_scale < 1:
        raise PipelineError(f"param '{keys['guidance_scale']}' must be >= 1 (1 = no classifier-free guidance), got "
                            f"{guidance_scale}")
    if int(steps * strength) < 1:
        raise PipelineError(f"param '{keys['steps']}' x '{keys['strength']}' = {steps} x {strength} leaves no "
                            "denoising step")


def image_seed(seed: int, index: int) -> int:
    """The generator seed of the `index`-th generated image of a run seeded `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@torch.no_grad()
def generate(pipe, init: torch.Tensor, prompts: list[str], *, strength: float, guidance_scale: float, steps: int,
             seed: int, batch_size: int, resolution: int, keys: dict, device) -> torch.Tensor:
    """Image-to-image: every [0, 1] `init` image (data channels and size) noised to `strength` of the schedule and
    denoised with its prompt at `guidance_scale` -> uint8 images of the data's channels and size. Image i draws its
    noise from a generator seeded image_seed(seed, i), so its bytes do not depend on the batch it is in."""
    check_generation(strength, guidance_scale, steps, keys)
    if len(prompts) != len(init):
        raise PipelineError(f"{len(prompts)} prompts for {len(init)} init images")
    pipe = pipe.to(device)
    x = to_pipeline(init.float(), resolution, pipe.vae.config.in_channels)
    out = []
    for start in tqdm(range(0, len(x), batch_size), desc="generate", unit="batch", mininterval=2):
        stop = min(start + batch_size, len(x))
        generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in range(start, stop)]
        images = pipe(prompt=prompts[start:stop], image=x[start:stop].to(device), strength=strength,
                      guidance_scale=guidance_scale, num_inference_steps=steps, generator=generators,
                      output_type="pt").images
        out.append(from_pipeline(images.float().cpu(), init.shape[1], init.shape[2:]))
    return torch.cat(out)


# ---- the offline pipeline --------------------------------------------------------------------------------------

def clip_tokenizer(folder: Path):
    """CLIPTokenizer with CLIP's BPE vocabulary (the merges file open_clip ships), written to `folder`: byte-level
    symbols, the same with the end-of-word mark, one token per merge, then the start and end tokens."""
    import gzip

    from transformers import CLIPTokenizer
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("diffusion.model 'offline' needs the CLIP vocabulary file of open_clip_torch (pip "
                            "install open_clip_torch)")
    bpe = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(rest))]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>",
                                                                                       "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


@dataclass(frozen=True)
class Conditioning:
    """How a pipeline conditioned on image embeddings besides text (an unCLIP decoder: mmdistill.nn.unclip
    .unclip_conditioning) is loaded, assembled from the offline components, and given its embeddings in training."""
    load: Callable        # (source, revision, key, embed_dim) -> pipeline
    assemble: Callable    # (vae, text_encoder, tokenizer, unet, scheduler, train embeddings) -> pipeline
    condition: Callable   # (pipeline, embeddings, generator, dropped) -> the UNet's class input


def build_offline(params: dict, train_images: torch.Tensor, device, seed: int, folder: Path,
                  image_embeds: torch.Tensor | None = None, conditioning: Conditioning | None = None):
    """The offline pipeline before UNet training, saved to `folder`: VAE trained on `train_images` (uint8 RGB at the
    resolution), CLIP tokenizer, random frozen CLIPTextModel, random UNet, DDIM scheduler. With `conditioning` and
    `image_embeds` (N x D, the train images' embeddings) the UNet also takes the noised image embedding and its
    noise level (class_embed_type "projection", 2 D inputs): an unCLIP decoder."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mmdistill.nn.vae import fit_vae
    block = "diffusion.offline"
    widths = param(params, f"{block}.block_out_channels", list)
    groups = positive(params, f"{block}.norm_num_groups")
    if any(w % groups for w in widths):
        raise PipelineError(f"param '{block}.norm_num_groups' = {groups} must divide every "
                            f"'{block}.block_out_channels' {widths}")
    width, heads = positive(params, f"{block}.text_width"), positive(params, f"{block}.text_heads")
    if width % heads:
        raise PipelineError(f"param '{block}.text_heads' = {heads} must divide '{block}.text_width' = {width}")
    vae, _ = fit_vae(params, train_images, device, seed)
    tokenizer = clip_tokenizer(folder / "clip_vocabulary")
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=positive(params, f"{block}.text_layers"), num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    levels = len(widths)
    unet = UNet2DConditionModel(
        sample_size=train_images.shape[-1] // down, in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels, block_out_channels=tuple(widths),
        layers_per_block=positive(params, f"{block}.layers_per_block"),
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=width, attention_head_dim=positive(params, f"{block}.attention_head_dim"),
        norm_num_groups=groups,
        **({} if conditioning is None else {"class_embed_type": "projection",
                                            "projection_class_embeddings_input_dim": 2 * image_embeds.shape[1]}))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    if conditioning is None:
        pipe = StableDiffusionImg2ImgPipeline(vae=vae.to("cpu"), text_encoder=text, tokenizer=tokenizer, unet=unet,
                                              scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    else:
        pipe = conditioning.assemble(vae.to("cpu"), text, tokenizer, unet, scheduler, image_embeds)
    with atomic_path(folder / "base") as tmp:
        pipe.save_pretrained(tmp)
    shutil.rmtree(folder / "clip_vocabulary")


# ---- fine-tuning -----------------------------------------------------------------------------------------------

def training_settings(params: dict, model: str | None = None) -> dict:
    """The `diffusion` settings that apply: the shared keys plus the `finetune` or `offline` block (`model`: instead
    of `diffusion.model`)."""
    settings = {k: param(params, f"diffusion.{k}") for k in ("model", "revision", "resolution", "flip", "class_name")}
    model = settings["model"] = model or settings["model"]
    block = "offline" if model == OFFLINE else "finetune"
    settings.update(param(params, f"diffusion.{block}", dict))
    settings["block"] = f"diffusion.{block}"
    if model == OFFLINE:
        settings["vae"] = param(params, "vae", dict)
    return settings


def _trainable(unet, settings: dict) -> list:
    """(name, parameter) pairs the optimiser updates: the whole UNet, or LoRA adapters (`lora_rank` > 0)."""
    rank = settings.get("lora_rank", 0)
    if rank:
        from peft import LoraConfig
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    return [(n, p) for n, p in unet.named_parameters() if p.requires_grad]


class Denoising:
    """The training objective on a batch: noise-prediction (or velocity) MSE of the UNet on VAE latents."""

    def __init__(self, pipe, device, conditioning: Conditioning | None = None):
        self.pipe, self.device, self.conditioning = pipe, device, conditioning
        self.scheduler = pipe.scheduler
        self.prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction not in ("epsilon", "v_prediction"):
            raise PipelineError(f"the scheduler's prediction_type {self.prediction!r} is not supported "
                                "(epsilon, v_prediction)")
        self.scale = float(pipe.vae.config.scaling_factor)
        self.shift = float(getattr(pipe.vae.config, "shift_factor", None) or 0.0)
        self.steps = int(pipe.scheduler.config.num_train_timesteps)

    def tokens(self, captions: list[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer
        return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids

    def loss(self, pixels: torch.Tensor, ids: torch.Tensor, gen: torch.Generator, embeds: torch.Tensor | None = None,
             dropped: torch.Tensor | None = None) -> torch.Tensor:
        """`pixels` in [-1, 1] at the resolution, `ids` their tokens; every draw from `gen`. An unCLIP decoder also
        takes the images' embeddings `embeds` (Conditioning.condition: noised at a random level), zero where
        `dropped` (the unconditional input classifier-free guidance contrasts with)."""
        with torch.no_grad():
            latents = self.pipe.vae.encode(pixels.to(self.device)).latent_dist.sample(generator=gen)
            latents = (latents - self.shift) * self.scale
            states = self.pipe.text_encoder(ids.to(self.device))[0]
            labels = None
            if self.conditioning is not None:
                labels = self.conditioning.condition(self.pipe, embeds, gen, dropped).to(self.device)
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        t = torch.randint(0, self.steps, (len(latents),), generator=gen).to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        target = noise if self.prediction == "epsilon" else self.scheduler.get_velocity(latents, noise, t)
        return F.mse_loss(self.pipe.unet(noisy, t, states, class_labels=labels).sample.float(), target.float())


def _batch_pixels(images: torch.Tensor, idx, resolution: int, channels: int, flip: bool,
                  gen: torch.Generator | None) -> torch.Tensor:
    x = to_pipeline(images[idx].float() / 255, resolution, channels) * 2 - 1
    if flip:
        flipped = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


@dataclass
class TrainingPairs:
    """What a pipeline is trained on: one row per (image, caption) pair (an image with several captions repeats)."""
    images: torch.Tensor                 # uint8 N x C x H x W
    captions: list[str]
    embeds: torch.Tensor | None = None   # N x D image embeddings an unCLIP decoder is conditioned on

    def __len__(self) -> int:
        return len(self.captions)


@torch.no_grad()
def validation_loss(objective: Denoising, pairs: TrainingPairs, resolution: int, batch_size: int, seed: int) -> float:
    """Mean denoising loss over `pairs` at fixed draws (a generator seeded `seed`)."""
    objective.pipe.unet.eval()
    gen = torch.Generator().manual_seed(seed)
    channels = objective.pipe.vae.config.in_channels
    total = 0.0
    for start in range(0, len(pairs), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(pairs)))
        x = _batch_pixels(pairs.images, idx, resolution, channels, False, None)
        embeds = None if pairs.embeds is None else pairs.embeds[idx]
        total += objective.loss(x, objective.tokens([pairs.captions[i] for i in idx.tolist()]), gen,
                                embeds).item() * len(idx)
    objective.pipe.unet.train()
    return total / len(pairs)


def _descriptions(split_uids: list[str]) -> list[str]:
    from mmdistill.annotate.cache import read_annotations
    table = read_annotations("descriptions", ["uid", "description"])
    description_of = dict(zip(table["uid"].to_pylist(), table["description"].to_pylist()))
    missing = [u for u in split_uids if u not in description_of]
    if missing:
        raise PipelineError(f"image {missing[0]} has no row in data/annotations/descriptions.parquet; re-run "
                            "`dvc repro describe`")
    return [description_of[u] for u in split_uids]


def finetune(params: dict, method: str, resume: bool) -> Path:
    """Fine-tune (or, offline, build and train) the img2img pipeline of synthesis method `method` on the train split's
    (image, description) pairs -> data/diffusion/{method}."""
    class_name = param(params, "diffusion.class_name", str, choices=CLASS_NAMES)
    train, val = load_split("train"), load_split("val")
    captions = captions_for(_descriptions(train.uids), train.labels, train.class_names, class_name)
    val_captions = captions_for(_descriptions(val.uids), val.labels, val.class_names, class_name)
    return train_pipeline(params, method, resume, TrainingPairs(train.images, captions),
                          TrainingPairs(val.images, val_captions), json.dumps([train.uids, captions]),
                          {"class_name": class_name, "classes": len(train.class_names)})


def train_pipeline(params: dict, method: str, resume: bool, train: TrainingPairs, val: TrainingPairs, data_id: str,
                   record: dict, files: dict | None = None, model: str | None = None,
                   conditioning: Conditioning | None = None) -> Path:
    """Train the pipeline of `method` on `train` (`val`: the validation loss) -> data/diffusion/{method}: an img2img
    pipeline, or with `conditioning` an unCLIP decoder on the pairs' image embeddings (offline: built here;
    `diffusion.model`: loaded and fine-tuned). `data_id` identifies the data for --resume; `record` is added to record.json; `files`
    ({name: tensors}) are saved beside the pipeline; `model` replaces `diffusion.model`."""
    out, metrics_path, work = diffusion_dir(method), diffusion_metrics(method), diffusion_checkpoints(method)
    timings_path = diffusion_timings(method)
    check_writable(out, metrics_path, timings_path, work / "x")
    settings = training_settings(params, model)
    seed = param(params, "seed", int)
    seed_everything(seed)
    device = resolve_device(params)
    resolution = positive(params, "diffusion.resolution")
    block = settings["block"]
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    dropout = settings["caption_dropout"]
    flip = resolve_flip(settings["flip"], "diffusion.flip")
    if (conditioning is None) != (train.embeds is None):
        raise PipelineError(f"finetune_diffusion {method}: image embeddings go with an embedding-conditioned pipeline")
    fingerprint = {"method": method, "seed": seed, "settings": settings,
                   "data": hashlib.sha256(data_id.encode()).hexdigest()}

    saved = _last_checkpoint(work, fingerprint) if resume else False
    if saved is False:  # a fresh start
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        save_json(fingerprint, work / "fingerprint.json")
    source, revision = settings["model"], settings["revision"]
    if source == OFFLINE:
        if not (work / "base").exists():
            rgb = to_pipeline(train.images.float() / 255, resolution, 3)
            build_offline(params, (rgb * 255).round().to(torch.uint8), device, seed, work, train.embeds, conditioning)
        source, revision = str(work / "base"), None
    if conditioning is None:
        pipe = load_pipeline(source, revision, "param 'diffusion.model'")
    else:
        pipe = conditioning.load(source, revision, "param 'diffusion.model'", train.embeds.shape[1])
    pipe.vae.to(device).eval().requires_grad_(False)
    pipe.text_encoder.to(device).eval().requires_grad_(False)
    unet = pipe.unet.to(device).train()
    trainable = _trainable(unet, settings)
    opt = torch.optim.AdamW([p for _, p in trainable], lr=settings["lr"], weight_decay=settings["weight_decay"])
    objective = Denoising(pipe, device, conditioning)
    channels = pipe.vae.config.in_channels
    gen = torch.Generator().manual_seed(seed)
    val_seed = seed + 1
    if not saved:
        start, history = 0, {"train_loss": [], "val_loss": [validation_loss(objective, val, resolution, batch_size,
                                                                            val_seed)], "seconds": []}
    else:
        ckpt = load_tensors(saved)
        named = dict(trainable)
        with torch.no_grad():
            for name, tensor in ckpt["trainable"].items():
                named[name].copy_(tensor)
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        start, history = ckpt["epoch"], {k: list(v) for k, v in ckpt["history"].items()}
        print(f"--resume: continuing after epoch {start} from {saved}")

    empty = objective.tokens([""])[0]
    ids = objective.tokens(train.captions)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    with tqdm(total=epochs * steps_per_epoch, initial=start * steps_per_epoch, desc=f"finetune_diffusion {method}",
              unit="batch", mininterval=2) as bar:
        for epoch in range(start, epochs):
            began = time.perf_counter()
            order = torch.randperm(len(train), generator=gen)
            total = 0.0
            for first in range(0, len(order), batch_size):
                idx = order[first:first + batch_size]
                x = _batch_pixels(train.images, idx, resolution, channels, flip, gen)
                dropped = torch.rand(len(idx), generator=gen) < dropout
                batch_ids = torch.where(dropped.view(-1, 1), empty.view(1, -1), ids[idx])
                loss = objective.loss(x, batch_ids, gen, None if train.embeds is None else train.embeds[idx], dropped)
                if not torch.isfinite(loss):
                    raise PipelineError(f"finetune_diffusion {method}: the loss is {loss.item()} in epoch {epoch + 1}; "
                                        f"lower '{block}.lr'")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                bar.update()
            history["train_loss"].append(total / len(train))
            history["seconds"].append(round(time.perf_counter() - began, 1))
            history["val_loss"].append(validation_loss(objective, val, resolution, batch_size, val_seed))
            _save_checkpoint(work, epoch + 1, trainable, opt, gen, history)

    if settings.get("lora_rank", 0):
        unet.fuse_lora()
        unet.unload_lora()
    with atomic_path(out) as tmp:
        pipe.to("cpu").save_pretrained(tmp)
        for name, tensors in (files or {}).items():
            save_tensors(tensors, tmp / name)
        save_json({"model": settings["model"], "settings": settings, **record, "train_pairs": len(train),
                   "resolution": resolution, "seed": seed, "device": str(device),
                   "history": {k: v for k, v in history.items() if k != "seconds"}, "versions": versions()},
                  tmp / DIFFUSION_RECORD_NAME)
    save_json({"val_loss_untrained": round(history["val_loss"][0], 6), "val_loss": round(history["val_loss"][-1], 6),
               "train_loss_last_epoch": round(history["train_loss"][-1], 6)}, metrics_path)
    save_json({"epoch_seconds": history["seconds"]}, timings_path)
    shutil.rmtree(work)
    print(f"finetune_diffusion {method}: val denoising loss {history['val_loss'][0]:.4f} -> "
          f"{history['val_loss'][-1]:.4f} -> {out}")
    return out


def _save_checkpoint(work: Path, epoch: int, trainable: list, opt, gen: torch.Generator, history: dict) -> None:
    save_tensors({"epoch": epoch, "trainable": {n: p.detach().cpu().clone() for n, p in trainable},
                  "optimizer": opt.state_dict(), "generator": gen.get_state(), "history": history},
                 work / f"epoch-{epoch:04d}.pt")
    for older in sorted(work.glob("epoch-*.pt"))[:-1]:
        older.unlink()


def _last_checkpoint(work: Path, fingerprint: dict):
    """For --resume: the last epoch checkpoint in `work`; None when no epoch has finished yet (the offline pipeline
    in base/ is reused if it was built); False when there is nothing to resume. Another run's checkpoints are an
    error."""
    marker = work / "fingerprint.json"
    if not marker.exists():
        print(f"--resume: no checkpoint in {work}, starting from the beginning")
        return False
    if json.loads(marker.read_text()) != json.loads(json.dumps(fingerprint)):
        raise PipelineError(f"--resume: {work} was made with other settings or data; run without --resume to "
                            "start again")
    epochs = sorted(work.glob("epoch-*.pt"))
    return epochs[-1] if epochs else None
