"""vae: the offline AutoencoderKL a latent run optimises -> data/vae/<method>/, outputs/metrics/vae-<method>.json

Stage: an `AutoencoderKL` (`vae.block_out_channels`, one downsample per extra block, so (16, 32) on
28x28 gives 4 x 14 x 14 latents; `vae.latent_channels`; input/output channels = the prepared data's)
is trained for `vae.epochs` epochs (Adam, lr `vae.lr`, batch `vae.batch_size`) on the train images
scaled to [-1, 1] (the diffusers convention) with MSE reconstruction + `vae.kl_weight` x KL. Its
`scaling_factor` is then set to 1 / std of the train latent means, as Stable Diffusion's is.

Outputs:
  data/vae/                  save_pretrained folder (config.json, diffusion_pytorch_model.safetensors) and
                             record.json: what produced the metrics (scaling_factor, latent_shape,
                             train_images, settings, seed, device, versions)
  outputs/metrics/vae.json   measured numbers only: val reconstruction of the latent mean, mse (pixels in
                             [0, 1]) and psnr (dB); train loss of the last epoch

Parameterisation (`distill.engine.parameterisation`, used by stages/engine.py and stages/distill.py):
  pixels   the synthetic set is optimised as normalised pixels (identity; the default).
  latent   it is optimised as latents of `distill.engine.vae`: `offline` (this stage's data/vae) or a
           diffusers AutoencoderKL hub id / local folder (+ `vae_revision`, `vae_subfolder`), loaded
           like the annotation models (offline: the HF cache or a local folder). Latents start as the
           scaled latent means of the real init images; every loss sees them decoded by the frozen
           decoder; the output holds them decoded once more, clamped to valid pixels. Data in the
           pipeline's normalisation goes to the VAE as [-1, 1] pixels: grey data is repeated to RGB
           for an RGB VAE (and the decoded RGB averaged back to grey), and images are resized
           (bilinear) up to a multiple of the VAE's downsampling and back.
"""
from __future__ import annotations

from mmdistill.core.config import load_params
from mmdistill.nn.vae import train_vae
from mmdistill.stages import run_stage


def main() -> None:
    print(f"wrote {train_vae(load_params())}")


if __name__ == "__main__":
    run_stage(main)
