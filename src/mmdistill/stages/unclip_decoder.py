"""unclip_decoder: the unCLIP decoder of the image-text track's PDS synthesis -> data/diffusion/pds_unclip/

    python -m mmdistill.stages.unclip_decoder [--resume]

Trains the reference pair model (`imagetext.model`, as stage select_pairs' pds-N), embeds the train and val images
and captions in its joint space, and trains the offline unCLIP decoder (`imagetext.pds_unclip.decoder: offline`;
`diffusion.resolution`, `diffusion.flip`, `diffusion.offline`, the `vae` params) on (image, caption, image
embedding), one row per caption. Outputs: the decoder (a save_pretrained StableUnCLIPImg2ImgPipeline folder without
image encoder), its record.json and pair_embeddings.pt (mmdistill.distill.pair_synthesis), and
outputs/metrics/diffusion/pds_unclip.json. `--resume` continues from the last finished epoch with the same bytes.
"""
from __future__ import annotations

from mmdistill.core.config import load_params
from mmdistill.core.runtime import resolve_device
from mmdistill.distill.pair_synthesis import train_decoder
from mmdistill.stages import ArgumentParser, run_stage


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resume", action="store_true", help="continue from data/checkpoints/diffusion-pds_unclip/")
    args = parser.parse_args()
    params = load_params()
    print(f"wrote {train_decoder(params, args.resume, resolve_device(params))}")


if __name__ == "__main__":
    run_stage(main)
