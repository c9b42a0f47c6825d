"""distill: build a synthetic set for one (method, IPC) -> data/distilled/{method}-ipc{K}.pt

    python -m mmdistill.stages.distill --method dm --ipc 10 [--resume] [--latent]

`--latent` optimises the set as latents of a VAE (`distill.latent`: `offline` = data/vae/{method} of
`python -m mmdistill.stages.vae --method M`, or a hub/folder AutoencoderKL) and writes
data/distilled/{method}-latent-ipc{K}.pt. The method is one registered in mmdistill.distill.methods (one module
each, listed there with what it does); its settings are `distill.<family>` overlaid with `distill.<method>`
(mmdistill.distill.methods.resolve), recorded in the output's `info.settings`. The output format is in
mmdistill.distill.runs. Optimising methods also write a DVCLive loss curve and periodic grids under
`outputs/distill/{run}/` and checkpoints `data/checkpoints/{run}.pt` that `--resume` continues from
(mmdistill.distill.engine); the result is byte-identical to an uninterrupted run. Under
`torchrun --standalone --nproc_per_node N -m mmdistill.stages.distill --method M --ipc K`, dm's real batch (dsa's and
dc's classes) is split across N CPU processes and rank 0 alone writes (mmdistill.distill.distributed).
"""
from __future__ import annotations

from mmdistill.core.config import load_params
from mmdistill.distill import distributed
from mmdistill.distill.runs import distill
from mmdistill.stages import ArgumentParser, run_stage


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--ipc", required=True, type=int)
    parser.add_argument("--resume", action="store_true",
                        help="continue from data/checkpoints/{run}.pt (same settings required)")
    parser.add_argument("--latent", action="store_true",
                        help="optimise latents of the VAE of distill.latent -> {method}-latent-ipc{K}")
    args = parser.parse_args()
    out = distill(args.method, args.ipc, args.latent, load_params(), args.resume)
    if distributed.writes():  # under torchrun: rank 0
        print(f"wrote {out}")


if __name__ == "__main__":
    run_stage(main)
