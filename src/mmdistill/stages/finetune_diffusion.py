"""finetune_diffusion: the text-to-image pipeline of a synthesis method -> data/diffusion/{method}/

    python -m mmdistill.stages.finetune_diffusion --method vlcp [--resume]

A Stable Diffusion img2img pipeline (`diffusion.model`: a hub id or local folder, fine-tuned with
`diffusion.finetune`; or `offline`, a small one built and trained from scratch with `diffusion.offline` and the `vae`
params) trained on the train split's (image, description) pairs, one per method of `distill.methods.synthesis`;
its metrics (measured numbers only) go to outputs/metrics/diffusion/{method}.json, what produced them to
data/diffusion/{method}/record.json. `--resume` continues from the last finished epoch (data/checkpoints/
diffusion-{method}/) with the same output bytes. Training, checkpoints and outputs: mmdistill.nn.diffusion.
"""
from __future__ import annotations

from mmdistill.core.config import load_params
from mmdistill.core.storage import PipelineError
from mmdistill.distill import methods
from mmdistill.nn.diffusion import finetune
from mmdistill.stages import ArgumentParser, run_stage


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, help="the synthesis method that generates with it")
    parser.add_argument("--resume", action="store_true", help="continue from data/checkpoints/diffusion-{method}/")
    args = parser.parse_args()
    if methods.get(args.method).group != "synthesis":
        raise PipelineError(f"--method {args.method}: not a synthesis method (distill.methods.synthesis)")
    print(f"wrote {finetune(load_params(), args.method, args.resume)}")


if __name__ == "__main__":
    run_stage(main)
