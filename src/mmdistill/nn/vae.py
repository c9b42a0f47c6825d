"""A small diffusers AutoencoderKL trained on the real train split (stage vae: mmdistill.stages.vae), and the
parameterisations of the distillation engine (pixels, or the latent space of an AutoencoderKL).

Stage: an `AutoencoderKL` (`vae.block_out_channels`, one downsample per extra block, so (16, 32) on
28x28 gives 4 x 14 x 14 latents; `vae.latent_channels`; input/output channels = the prepared data's)
is trained for `vae.epochs` epochs (Adam, lr `vae.lr`, batch `vae.batch_size`) on the train images
scaled to [-1, 1] (the diffusers convention) with MSE reconstruction + `vae.kl_weight` x KL. Its
`scaling_factor` is then set to 1 / std of the train latent means, as Stable Diffusion's is.

Outputs of stage vae (one VAE per method of `distill.methods.latent`, so a VAE change re-runs only that method's runs;
the training does not depend on the method):
  data/vae/{method}/                save_pretrained folder (config.json, diffusion_pytorch_model.safetensors)
  data/vae/{method}/record.json     what produced the metrics: scaling_factor, latent_shape, train_images,
                                    settings, seed, device, versions
  outputs/metrics/vae/{method}.json measured numbers only: val reconstruction of the latent mean, mse (pixels
                                    in [0, 1]) and psnr (dB); train loss of the last epoch

Parameterisation (mmdistill.distill.engine; `--latent` of stages distill and evaluate):
  pixels   the synthetic set is optimised as normalised pixels (identity; runs without --latent).
  latent   it is optimised as latents of `distill.latent.vae`: `offline` (data/vae/{method} of this stage) or a
           diffusers AutoencoderKL hub id / local folder (+ `vae_revision`, `vae_subfolder`), loaded
           like the annotation models (offline: the HF cache or a local folder). Latents start as the
           scaled latent means of the real init images; every loss sees them decoded by the frozen
           decoder; the output holds them decoded once more, clamped to valid pixels. Data in the
           pipeline's normalisation goes to the VAE as [-1, 1] pixels: grey data is repeated to RGB
           for an RGB VAE (and the decoded RGB averaged back to grey), and images are resized
           (bilinear) up to a multiple of the VAE's downsampling and back.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from mmdistill.core.config import param, positive
from mmdistill.core.hub import from_pretrained
from mmdistill.core.paths import VAE_RECORD_NAME, vae_dir, vae_metrics
from mmdistill.core.runtime import resolve_device, seed_everything, versions
from mmdistill.core.storage import PipelineError, atomic_path, check_writable, save_json
from mmdistill.data.datasets import dataset_info, load_split
from mmdistill.nn.train import adam_minibatches


def build_vae(params: dict, channels: int, size: int):
    from diffusers import AutoencoderKL
    widths = param(params, "vae.block_out_channels", list)
    if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
        raise PipelineError(f"param 'vae.block_out_channels' must be a list of positive integers, got {widths!r}")
    groups = positive(params, "vae.norm_num_groups")
    if any(w % groups for w in widths):
        raise PipelineError(f"param 'vae.norm_num_groups' = {groups} must divide every 'vae.block_out_channels' {widths}")
    return AutoencoderKL(in_channels=channels, out_channels=channels, block_out_channels=tuple(widths),
                         down_block_types=("DownEncoderBlock2D",) * len(widths),
                         up_block_types=("UpDecoderBlock2D",) * len(widths),
                         layers_per_block=positive(params, "vae.layers_per_block"),
                         latent_channels=positive(params, "vae.latent_channels"), norm_num_groups=groups,
                         sample_size=size, mid_block_add_attention=param(params, "vae.attention", bool))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [-1, 1] floats."""
    return images.float() / 127.5 - 1


@torch.no_grad()
def reconstruction(vae, images: torch.Tensor, device, batch_size: int) -> tuple[float, torch.Tensor]:
    """(val MSE of the decoded latent means in [0, 1] pixels, the latent means)."""
    errors, means = [], []
    for start in range(0, len(images), batch_size):
        x = to_unit(images[start:start + batch_size]).to(device)
        mean = vae.encode(x).latent_dist.mean
        y = vae.decode(mean).sample.clamp(-1, 1)
        errors.append(((y - x) / 2).pow(2).flatten(1).mean(1).cpu())
        means.append(mean.cpu())
    return torch.cat(errors).mean().item(), torch.cat(means)


def fit_vae(params: dict, images: torch.Tensor, device, seed: int) -> tuple:
    """A VAE of the `vae` params trained on uint8 `images` (N x C x H x W; channels and size are the VAE's) ->
    (the VAE in eval mode with its scaling_factor set, mean loss of each epoch). Initialised from the global RNG
    (seed it first); sampling and shuffling from a generator seeded with `seed`."""
    epochs, batch_size = positive(params, "vae.epochs"), positive(params, "vae.batch_size")
    kl_weight = param(params, "vae.kl_weight", float)
    vae = build_vae(params, images.shape[1], images.shape[2]).to(device)
    gen = torch.Generator().manual_seed(seed)
    vae.train()

    def batch_loss(idx):
        x = to_unit(images[idx]).to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)
        return F.mse_loss(vae.decode(z).sample, x) + kl_weight * posterior.kl().mean() / x[0].numel()

    history = adam_minibatches(vae.parameters(), len(images), batch_loss, epochs=epochs, batch_size=batch_size,
                               lr=param(params, "vae.lr", float), generator=gen, desc="vae")
    vae.eval()
    _, means = reconstruction(vae, images, device, 256)
    vae.register_to_config(scaling_factor=round(1.0 / means.std().item(), 6))
    return vae, history


def train_vae(params: dict, method: str) -> Path:
    """Train the offline VAE of `method`'s latent runs -> data/vae/{method}."""
    check_writable(vae_dir(method), vae_metrics(method))
    seed = param(params, "seed", int)
    seed_everything(seed)
    device = resolve_device(params)
    train, val = load_split("train"), load_split("val")
    vae, history = fit_vae(params, train.images, device, seed)
    mse, _ = reconstruction(vae, val.images, device, 256)
    _, first = reconstruction(vae, train.images[:1], device, 1)
    with atomic_path(vae_dir(method)) as tmp:
        vae.to("cpu").save_pretrained(tmp)
        save_json({"scaling_factor": vae.config.scaling_factor, "latent_shape": list(first.shape[1:]),
                   "train_images": len(train), "seed": seed, "settings": param(params, "vae", dict),
                   "device": str(device), "versions": versions()}, tmp / VAE_RECORD_NAME)
    save_json({"val_mse": round(mse, 6), "val_psnr": round(10 * math.log10(1 / mse), 3),
               "train_loss_last_epoch": round(history[-1], 6)}, vae_metrics(method))
    print(f"vae: val reconstruction mse {mse:.5f}, psnr {10 * math.log10(1 / mse):.2f} dB")
    return vae_dir(method)


class Pixels:
    """The synthetic set is its normalised pixels."""

    fingerprint: dict = {}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, syn: torch.Tensor) -> torch.Tensor:
        return syn

    def final(self, syn: torch.Tensor) -> torch.Tensor:
        return syn.detach().cpu()

    def outputs(self, syn: torch.Tensor) -> dict:
        return {}


class Latent:
    """The synthetic set is latents of a frozen AutoencoderKL; images are their decodings.

    Latents follow diffusers' convention: (z - shift_factor) * scaling_factor, shift_factor 0 when the VAE has
    none (SD 1/2 VAEs; SD3 and Flux VAEs have one).
    """

    def __init__(self, vae, source: dict, mean, std, channels: int, size: tuple[int, int], device):
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.channels, self.size = channels, tuple(size)
        self.vae_channels = vae.config.in_channels
        if self.vae_channels != channels and not (channels == 1 and self.vae_channels == 3):
            raise PipelineError(f"VAE {source['vae']!r} takes {self.vae_channels}-channel images; the data has "
                                f"{channels} channels (only grey data with an RGB VAE is converted)")
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        self.vae_size = tuple(math.ceil(s / down) * down for s in self.size)
        digest = hashlib.sha256()
        for name, tensor in sorted(vae.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        self.source = {**source, "scaling_factor": self.scale, "digest": digest.hexdigest()[:16]}
        if self.shift:  # only when set: a VAE without one keeps its earlier fingerprint and outputs
            self.source["shift_factor"] = self.shift
        self.fingerprint = {"parameterisation": "latent", "vae": self.source}

    def _to_vae(self, images: torch.Tensor) -> torch.Tensor:
        x = (images * self.std + self.mean) * 2 - 1
        if self.vae_channels != self.channels:
            x = x.expand(-1, self.vae_channels, -1, -1)
        if self.vae_size != self.size:
            x = F.interpolate(x, size=self.vae_size, mode="bilinear", align_corners=False)
        return x

    def _from_vae(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae_size != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if self.vae_channels != self.channels:
            x = x.mean(1, keepdim=True)
        return ((x + 1) / 2 - self.mean) / self.std

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> shifted and scaled latent means."""
        z = self.vae.encode(self._to_vae(images)).latent_dist.mean
        return (z - self.shift) * self.scale if self.shift else z * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Shifted and scaled latents -> normalised images (differentiable)."""
        z = latents / self.scale + self.shift if self.shift else latents / self.scale
        return self._from_vae(self.vae.decode(z).sample)

    @torch.no_grad()
    def final(self, latents: torch.Tensor) -> torch.Tensor:
        """The images written to the output: decoded, clamped to valid pixels, normalised."""
        pixels = ((self.decode(latents) * self.std + self.mean).clamp(0, 1))
        return ((pixels - self.mean) / self.std).cpu()

    def outputs(self, latents: torch.Tensor) -> dict:
        return {"latents": latents.detach().cpu().contiguous(), "vae": self.source}


def load_vae(params: dict, method: str):
    """The AutoencoderKL named by `distill.latent.vae` for `method` -> (model, description of its source)."""
    from diffusers import AutoencoderKL
    key = "distill.latent.vae"
    source = param(params, key, str)
    if source == "offline":
        folder = vae_dir(method)
        if not (folder / "config.json").exists():
            raise PipelineError(f"param '{key}' is 'offline' but {folder} has no trained VAE: run "
                                f"`python -m mmdistill.stages.vae --method {method}` (DVC stage vae@{method})")
        return AutoencoderKL.from_pretrained(folder, low_cpu_mem_usage=False), {"vae": "offline"}
    subfolder = param(params, "distill.latent.vae_subfolder", str) or None
    vae = from_pretrained(AutoencoderKL, params, key, "distill.latent.vae_revision", subfolder=subfolder,
                          low_cpu_mem_usage=False)  # True only warns without `accelerate`
    return vae, {"vae": source, "revision": param(params, "distill.latent.vae_revision", str),
                 "subfolder": subfolder or ""}


def latent_space(params: dict, method: str, device) -> Latent:
    """The latent parameterisation of `method`'s latent runs (`distill.latent`)."""
    info = dataset_info()
    vae, source = load_vae(params, method)
    return Latent(vae, source, info["mean"], info["std"], info["channels"], (info["height"], info["width"]), device)
