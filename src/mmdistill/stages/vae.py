"""vae: a small diffusers AutoencoderKL trained on the real train split -> data/vae/{method}/

    python -m mmdistill.stages.vae --method dm

The offline VAE of `method`'s latent runs (`python -m mmdistill.stages.distill --method dm --ipc K --latent` with
`distill.latent.vae: offline`), one per method of `distill.methods.latent` so that a VAE change re-runs only the
runs that read it; its metrics (measured numbers only) go to
outputs/metrics/vae/{method}.json, what produced them to data/vae/{method}/record.json. The training (`vae` params) and the
latent parameterisation are described in mmdistill.nn.vae.
"""
from __future__ import annotations

from mmdistill.core.config import load_params
from mmdistill.core.storage import PipelineError
from mmdistill.distill import methods
from mmdistill.nn.vae import train_vae
from mmdistill.stages import ArgumentParser, run_stage


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, help="the method whose latent runs use it -> data/vae/{method}")
    args = parser.parse_args()
    if not methods.get(args.method).engine:
        raise PipelineError(f"--method {args.method}: a selection method has no latent runs")
    print(f"wrote {train_vae(load_params(), args.method)}")


if __name__ == "__main__":
    run_stage(main)
