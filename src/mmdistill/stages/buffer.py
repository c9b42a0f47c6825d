"""buffer: expert trajectories of the image-text pair model -> data/buffer/ (MTT-VL's buffer)

    python -m mmdistill.stages.buffer [--resume]

Reads data/prepared (train split) and data/pair_text (stage embed_pairs); layout, training and resume in
mmdistill.distill.experts. Settings: `imagetext.model`, `imagetext.buffer`. The measured seconds per expert
epoch go to outputs/timings/buffer.json (not a DVC output: they differ on every run).
"""
from __future__ import annotations

from mmdistill.core.config import load_params
from mmdistill.core.paths import BUFFER_TIMINGS
from mmdistill.core.runtime import resolve_device
from mmdistill.core.storage import check_writable, save_json
from mmdistill.data.pairs import load_pairs
from mmdistill.distill.experts import BUFFER, train_experts
from mmdistill.stages import ArgumentParser, run_stage


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resume", action="store_true", help="continue from data/checkpoints/buffer/")
    args = parser.parse_args()
    params = load_params()
    check_writable(BUFFER / "record.json", BUFFER_TIMINGS)
    record = train_experts(params, load_pairs("train"), resolve_device(params), resume=args.resume)
    save_json({k: record[k] for k in ("experts", "expert_epochs", "seconds_per_expert_epoch")}, BUFFER_TIMINGS)
    print(f"buffer: {record['experts']} experts x {record['expert_epochs']} epochs -> {BUFFER} "
          f"({record['shards']} shards)")


if __name__ == "__main__":
    run_stage(main)
