"""synthesize_pairs: PDS synthesis of N image-text pairs -> data/distilled_pairs/pds_unclip-N.pt

    python -m mmdistill.stages.synthesize_pairs --pairs pds_unclip-100

One run per `imagetext.synthesis_sets` entry: PDS prototypes in the pair model's joint space, each decoded by stage
unclip_decoder's decoder with the caption retrieved by its text prototype (mmdistill.distill.pair_synthesis).
Stage evaluate_synthesis_pairs then scores the set with evaluate_retrieval.
"""
from __future__ import annotations

from mmdistill.core.config import load_params, param
from mmdistill.core.runtime import resolve_device, seed_everything
from mmdistill.core.storage import check_writable
from mmdistill.data.pairs import check_set_lists, distilled_pairs_path, parse_pair_set
from mmdistill.distill.pair_synthesis import synthesize_pairs
from mmdistill.stages import ArgumentParser, run_stage


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="pds_unclip-N")
    args = parser.parse_args()
    parse_pair_set(args.pairs, 2**62)
    params = load_params()
    check_set_lists(params)
    check_writable(distilled_pairs_path(args.pairs))
    seed_everything(param(params, "seed", int))
    out = synthesize_pairs(args.pairs, params, resolve_device(params))
    print(f"synthesize_pairs {args.pairs}: {len(out['images'])} pairs ({int((out['shared'] == 0).sum())} from pairless "
          f"matches) -> {distilled_pairs_path(args.pairs)}")


if __name__ == "__main__":
    run_stage(main)
