"""prototypes: text prototypes (VLCP), PDS prototypes and pair coresets -> data/prototypes/
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmdistill.annotate.cache import read_annotations
from mmdistill.core.config import int_list, load_params, param, positive
from mmdistill.core.paths import PROTOTYPES, SELECTIONS
from mmdistill.core.storage import PipelineError, check_writable, read_parquet, write_parquet
from mmdistill.selection.coresets import (
    pair_coresets,
    pds_selection,
    text_prototypes,
    train_features,
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
    uids, labels, vectors = train_features("image")
    outlier = dict(zip(*(read_parquet(SELECTIONS / "lof.parquet", ["uid", "outlier"])[c].to_pylist()
                         for c in ("uid", "outlier"))))
    descriptions = read_annotations("descriptions", ["uid", "description"])
    description_of = dict(zip(descriptions["uid"].to_pylist(), descriptions["description"].to_pylist()))
    schema = pa.schema([("label", pa.int64()), ("class_name", pa.string()), ("cluster", pa.int32()),
                        ("uid", pa.string()), ("description", pa.string()), ("words", pa.list_(pa.string())),
                        ("score", pa.int32())])
    for k in ipcs:
        clusters = read_parquet(SELECTIONS / f"kmeans-ipc{k}.parquet", ["label", "class_name", "cluster", "center"])
        rows = []
        for c in sorted(set(clusters["label"].to_pylist())):
            mine = [i for i, lab in enumerate(clusters["label"].to_pylist()) if lab == c]
            name = clusters["class_name"][mine[0]].as_py()
            centres = np.array([clusters["center"][i].as_py() for i in mine], np.float32)[
                np.argsort([clusters["cluster"][i].as_py() for i in mine])]
            members = np.flatnonzero((labels == c) & ~np.array([outlier.get(u, True) for u in uids]))
            if centres.shape[1] != vectors.shape[1]:
                raise PipelineError(f"kmeans-ipc{k} centres are {centres.shape[1]}-d but image features are "
                                    f"{vectors.shape[1]}-d: re-run `dvc repro select`")
            missing = [u for u in uids[members] if u not in description_of]
            if missing:
                raise PipelineError(f"train image {missing[0]} has no row in data/annotations/descriptions.parquet; "
                                    "re-run `dvc repro describe`")
            distance = ((vectors[members][:, None] - centres[None]) ** 2).sum(-1)
            assign = distance.argmin(1)  # k-means' own assignment: each inlier to its nearest centre
            texts = [description_of[u] for u in uids[members]]
            chosen = text_prototypes(texts, assign, distance.min(1), k, threshold, top_k)
            rows += [{"label": c, "class_name": name, "cluster": j, "uid": str(uids[members[i]]),
                      "description": texts[i], "words": words, "score": score}
                     for j, (i, words, score) in enumerate(chosen)]
        write_parquet(pa.Table.from_pylist(rows, schema=schema), PROTOTYPES / f"text-ipc{k}.parquet",
                      {"selection": {"method": "text", "ipc": k, "threshold": threshold, "top_k": top_k}})
    pds_selection(params)
    pair_coresets(params)
    print(f"text prototypes for IPC {ipcs}, PDS prototypes and pair coresets -> {PROTOTYPES}")


if __name__ == "__main__":
    run_stage(main)
