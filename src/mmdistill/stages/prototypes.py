"""prototypes: text prototypes (VLCP), PDS prototypes and pair coresets -> data/prototypes/
"""
from __future__ import annotations

import pyarrow as pa

from mmdistill.core.config import int_list, load_params, param, positive
from mmdistill.core.paths import PROTOTYPES
from mmdistill.core.storage import PipelineError, check_writable, write_parquet
from mmdistill.selection.coresets import (
    pair_coresets,
    pds_selection,
    text_prototype_inputs,
    text_prototype_rows,
)
from mmdistill.stages import run_stage


def main() -> None:
    """Text prototypes for the image clusters of every kmeans-ipc{K} selection -> data/prototypes/text-ipc{K},
    and PDS prototypes -> data/prototypes/pds-{M}."""
    params = load_params()
    check_writable(PROTOTYPES / "x.parquet")
    ipcs = int_list(params, "distill.ipcs")
    threshold = param(params, "select.text_threshold", float)
    if not 0 < threshold <= 1:
        raise PipelineError(f"param 'select.text_threshold' must be in (0, 1], got {threshold}")
    top_k = positive(params, "select.text_top_k")
    inputs = text_prototype_inputs()
    schema = pa.schema([("label", pa.int64()), ("class_name", pa.string()), ("cluster", pa.int32()),
                        ("uid", pa.string()), ("description", pa.string()), ("words", pa.list_(pa.string())),
                        ("score", pa.int32())])
    for k in ipcs:
        rows = text_prototype_rows(inputs, k, threshold, top_k)
        write_parquet(pa.Table.from_pylist(rows, schema=schema), PROTOTYPES / f"text-ipc{k}.parquet",
                      {"selection": {"method": "text", "ipc": k, "threshold": threshold, "top_k": top_k}})
    pds_selection(params)
    pair_coresets(params)
    print(f"text prototypes for IPC {ipcs}, PDS prototypes and pair coresets -> {PROTOTYPES}")


if __name__ == "__main__":
    run_stage(main)
