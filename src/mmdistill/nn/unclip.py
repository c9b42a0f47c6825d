"""The unCLIP decoder of PDS synthesis (image-text track): a diffusers StableUnCLIPImg2ImgPipeline that generates an
image from an image embedding (`image_embeds=`) and a caption, as PDS §3.2 uses Stable unCLIP's decoder.

Two forms load here (`load_unclip`), both as EmbeddingUnCLIPPipeline (the library pipeline, generation unchanged):
  a pretrained Stable unCLIP folder or hub id   its own CLIP image encoder (CLIPVisionModelWithProjection) embeds
        images; its image_normalizer and image_noising_scheduler noise the embedding (noise_level) before the UNet's
        class-embedding projection takes it with the noise level's sinusoidal embedding.
  the offline decoder (stage unclip_decoder, mmdistill.nn.diffusion.build_offline with image embeddings)  trained
        here from scratch on embeddings that come from OUTSIDE the pipeline (the pair model's image embeddings), so
        it has no image encoder or feature extractor: it only takes `image_embeds`.
A folder missing a component is an error naming it; so is a UNet whose cross-attention width is not the text
encoder's, or whose class-embedding input is not 2 x the image-embedding width (embedding + noise-level embedding).

Training condition (`condition`): the embedding normalised by the image_normalizer's mean and std, noised by the
image_noising_scheduler at a uniformly drawn level (Stable unCLIP's noise augmentation), un-normalised, then joined
with the level's sinusoidal embedding, exactly as the pipeline builds it at generation (noise_image_embeddings);
zero where the caption was dropped, which is the unconditional input the pipeline's classifier-free guidance uses.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from mmdistill.core.storage import PipelineError

UNCLIP_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_normalizer",
                     "image_noising_scheduler")
NOISING_BETAS = "squaredcos_cap_v2"   # Stable unCLIP's image-noising schedule


def _pipeline_class():
    from diffusers import StableUnCLIPImg2ImgPipeline

    class EmbeddingUnCLIPPipeline(StableUnCLIPImg2ImgPipeline):
        """StableUnCLIPImg2ImgPipeline that also works without an image encoder when `image_embeds` are given."""

        def _encode_image(self, image, device, batch_size, num_images_per_prompt, do_classifier_free_guidance,
                          noise_level, generator, image_embeds):
            if self.image_encoder is not None:
                return super()._encode_image(image, device, batch_size, num_images_per_prompt,
                                             do_classifier_free_guidance, noise_level, generator, image_embeds)
            if image_embeds is None or num_images_per_prompt != 1:
                raise PipelineError("this unCLIP decoder has no image encoder: pass image_embeds, one image each")
            embeds = self.noise_image_embeddings(image_embeds=image_embeds.to(device), noise_level=noise_level,
                                                 generator=generator)
            if do_classifier_free_guidance:
                embeds = torch.cat([torch.zeros_like(embeds), embeds])
            return embeds

    return EmbeddingUnCLIPPipeline


def offline_decoder(vae, text_encoder, tokenizer, unet, scheduler, image_embeds: torch.Tensor):
    """The offline unCLIP decoder's pipeline, its image normaliser set to the train embeddings' mean and std."""
    from diffusers import DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=image_embeds.shape[1])
    with torch.no_grad():
        normalizer.mean.copy_(image_embeds.float().mean(0, keepdim=True))
        normalizer.std.copy_(image_embeds.float().std(0, keepdim=True).clamp_min(1e-6))
    return _pipeline_class()(feature_extractor=None, image_encoder=None, image_normalizer=normalizer,
                             image_noising_scheduler=DDPMScheduler(beta_schedule=NOISING_BETAS), tokenizer=tokenizer,
                             text_encoder=text_encoder, unet=unet, scheduler=scheduler, vae=vae)


def load_unclip(source: str, revision: str | None, key: str, embed_dim: int | None = None):
    """An unCLIP decoder from a hub id or local folder (`key` names where `source` came from); `embed_dim`: the
    width of the image embeddings it will be given."""
    folder = Path(source).expanduser()
    absent = {}
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise PipelineError(f"{source} ({key}) has no model_index.json: not a diffusers pipeline folder")
        for component in UNCLIP_COMPONENTS:
            if not (folder / component).is_dir():
                raise PipelineError(f"{source} ({key}) has no {component}/ folder; an unCLIP decoder needs "
                                    f"{', '.join(c + '/' for c in UNCLIP_COMPONENTS)}")
        listed = json.loads(index.read_text())
        absent = {c: None for c in ("image_encoder", "feature_extractor") if listed.get(c, [None])[0] is None}
    elif source.startswith((".", "/", "~")):
        raise PipelineError(f"{key}: no pipeline folder at {source!r}")
    try:
        pipe = _pipeline_class().from_pretrained(source, revision=revision or None, low_cpu_mem_usage=False, **absent)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"cannot load an unCLIP decoder from {source!r} ({key}, revision "
                            f"{revision or 'default'!r}): {first}") from exc
    check_unclip(pipe, source, key, embed_dim)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_unclip(pipe, source: str, key: str, embed_dim: int | None) -> None:
    from mmdistill.nn.diffusion import check_pipeline
    check_pipeline(pipe, source, key)
    unet = pipe.unet.config
    width = pipe.image_normalizer.mean.shape[-1]
    if unet.class_embed_type != "projection":
        raise PipelineError(f"{source} ({key}): the UNet's class_embed_type is {unet.class_embed_type!r}; an unCLIP "
                            "decoder's is 'projection' (it takes the image embedding)")
    if unet.projection_class_embeddings_input_dim != 2 * width:
        raise PipelineError(f"{source} ({key}): the UNet's projection_class_embeddings_input_dim is "
                            f"{unet.projection_class_embeddings_input_dim} but the image embeddings are {width} wide "
                            f"(it takes 2 x {width}: the embedding and its noise level)")
    if embed_dim is not None and embed_dim != width:
        raise PipelineError(f"{source} ({key}): the decoder takes {width}-wide image embeddings, the prototypes are "
                            f"{embed_dim} wide")


def condition(pipe, embeds: torch.Tensor, gen: torch.Generator, dropped: torch.Tensor | None) -> torch.Tensor:
    """The UNet's class input for image embeddings `embeds` (N x D) at uniformly drawn noise levels."""
    from diffusers.models.embeddings import get_timestep_embedding
    noising = pipe.image_noising_scheduler
    levels = torch.randint(0, int(noising.config.num_train_timesteps), (len(embeds),), generator=gen)
    noise = torch.randn(embeds.shape, generator=gen)
    scaled = pipe.image_normalizer.scale(embeds.float())
    noised = pipe.image_normalizer.unscale(noising.add_noise(scaled, noise, levels))
    joined = torch.cat([noised, get_timestep_embedding(levels, embeds.shape[1], flip_sin_to_cos=True,
                                                       downscale_freq_shift=0)], 1)
    if dropped is not None:
        joined = torch.where(dropped.view(-1, 1), torch.zeros_like(joined), joined)
    return joined


def check_decoding(guidance_scale: float, steps: int, noise_level: int, keys: dict, pipe=None) -> None:
    if guidance_scale < 1:
        raise PipelineError(f"param '{keys['guidance_scale']}' must be >= 1 (1 = no classifier-free guidance), got "
                            f"{guidance_scale}")
    if steps < 1:
        raise PipelineError(f"param '{keys['steps']}' must be >= 1, got {steps}")
    levels = None if pipe is None else int(pipe.image_noising_scheduler.config.num_train_timesteps)
    if noise_level < 0 or (levels is not None and noise_level >= levels):
        raise PipelineError(f"param '{keys['noise_level']}' must be in [0, {levels or 'the noising steps'}), got "
                            f"{noise_level}")


@torch.no_grad()
def decode(pipe, embeds: torch.Tensor, prompts: list[str], *, guidance_scale: float, steps: int, noise_level: int,
           seed: int, batch_size: int, resolution: int, channels: int, size: tuple, keys: dict, device) -> torch.Tensor:
    """One image per (image embedding, prompt), generated from noise by the decoder at `guidance_scale` over
    `steps` scheduler steps -> uint8 images of the data's `channels` and `size`. Image i draws from a generator
    seeded image_seed(seed, i), so its bytes do not depend on the batch it is in."""
    from mmdistill.nn.diffusion import from_pipeline, image_seed
    check_decoding(guidance_scale, steps, noise_level, keys, pipe)
    if len(prompts) != len(embeds):
        raise PipelineError(f"{len(prompts)} prompts for {len(embeds)} image embeddings")
    pipe = pipe.to(device)
    out = []
    for start in tqdm(range(0, len(embeds), batch_size), desc="unclip decode", unit="batch", mininterval=2):
        stop = min(start + batch_size, len(embeds))
        generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in range(start, stop)]
        images = pipe(prompt=prompts[start:stop], image_embeds=embeds[start:stop].float().to(device),
                      guidance_scale=guidance_scale, num_inference_steps=steps, noise_level=noise_level,
                      generator=generators, height=resolution, width=resolution, output_type="pt").images
        out.append(from_pipeline(images.float().cpu(), channels, size))
    return torch.cat(out)


def unclip_conditioning():
    """The unCLIP decoder as mmdistill.nn.diffusion.train_pipeline trains it."""
    from mmdistill.nn.diffusion import Conditioning
    return Conditioning(load=load_unclip, assemble=offline_decoder, condition=condition)
