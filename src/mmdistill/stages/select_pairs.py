"""select_pairs: a coreset of the image-text train split -> data/pair_coresets/{name}.parquet

    python -m mmdistill.stages.select_pairs --pairs herding-100    # or kcenter-N, forgetting-N, pds-N

One run per `imagetext.coreset_sets` entry (stage evaluate_coreset_pairs then scores it with evaluate_retrieval).
What each method chooses and the output's layout: mmdistill.selection.pair_sets. Only the train split is read.
"""
from __future__ import annotations

import pyarrow as pa

from mmdistill.core.config import load_params, param
from mmdistill.core.runtime import resolve_device, seed_everything
from mmdistill.core.storage import check_writable, write_parquet
from mmdistill.data.datasets import load_split
from mmdistill.data.pairs import check_set_lists, coreset_path, load_pairs
from mmdistill.selection.pair_sets import select_pair_coreset
from mmdistill.stages import ArgumentParser, run_stage


def select_pairs(name: str, params: dict) -> list[str]:
    """Choose the coreset `name`, write it; -> the chosen uids in order of choice."""
    check_set_lists(params)
    seed = param(params, "seed", int)
    seed_everything(seed)
    train = load_pairs("train")
    chosen, how = select_pair_coreset(name, train, load_split("train").images, params, resolve_device(params))
    uids = [train["uids"][int(i)] for i in chosen]
    write_parquet(pa.table({"rank": pa.array(range(len(uids)), pa.int32()), "uid": pa.array(uids, pa.string())}),
                  coreset_path(name), {"selection": {"method": name.rpartition("-")[0], "size": len(uids),
                                                     "seed": seed, **how}})
    return uids


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="herding-N | kcenter-N | forgetting-N | pds-N")
    args = parser.parse_args()
    check_writable(coreset_path(args.pairs))
    uids = select_pairs(args.pairs, load_params())
    print(f"select_pairs {args.pairs}: {len(uids)} train images -> {coreset_path(args.pairs)}")


if __name__ == "__main__":
    run_stage(main)
