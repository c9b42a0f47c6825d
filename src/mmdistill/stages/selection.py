"""select: LOF outliers, per-class k-means prototypes and coresets -> data/selections/
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from mmdistill.core.config import int_list, load_params, param, positive
from mmdistill.core.paths import FORGETTING_EVENTS, SELECTION_FIGURES, SELECTIONS
from mmdistill.core.storage import (
    PipelineError,
    check_writable,
    read_parquet,
    read_parquet_metadata,
    write_parquet,
)
from mmdistill.data.datasets import dataset_info
from mmdistill.selection.coresets import (
    FORGETTING_ORDERS,
    KCENTER_STARTS,
    forgetting_selection,
    herding,
    k_center,
    kmeans_prototypes,
    lof_inliers,
    selection_figures,
    train_features,
)
from mmdistill.stages import run_stage


def main() -> None:
    """LOF, k-means prototypes and coresets -> data/selections/."""
    params = load_params()
    check_writable(SELECTIONS / "x.parquet", SELECTION_FIGURES / "x.png")
    seed = param(params, "seed", int)
    ipcs = int_list(params, "distill.ipcs")
    n_neighbors = positive(params, "select.lof_neighbors")
    contamination = param(params, "select.lof_contamination", float)
    if not 0 <= contamination < 0.5:
        raise PipelineError(f"param 'select.lof_contamination' must be in [0, 0.5), got {contamination}")
    n_init = positive(params, "select.kmeans_n_init")
    kcenter_start = param(params, "select.kcenter_start", str, choices=KCENTER_STARTS)
    forgetting_order = param(params, "select.forgetting_order", str, choices=FORGETTING_ORDERS)
    class_names = dataset_info()["class_names"]

    uids, labels, vectors = train_features("image")
    for c, name in enumerate(class_names):
        if not (labels == c).any():
            raise PipelineError(f"class '{name}' has no train images with features")
    # every input is read before anything is written: a bad one changes no output
    events = read_parquet(FORGETTING_EVENTS, ["uid", "label", "forgetting_events", "learned", "misclassified"])
    events_meta = read_parquet_metadata(FORGETTING_EVENTS).get("forgetting", {})
    forgotten = {("forgetting", forgetting_order): forgetting_selection(events, class_names, ipcs, forgetting_order),
                 ("forgetting_most", "most"): forgetting_selection(events, class_names, ipcs, "most")}

    scores = np.zeros(len(uids), np.float32)
    inlier = np.ones(len(uids), bool)
    rows = {k: [] for k in ipcs}
    coresets = {"herding": lambda x, k, c: herding(x, k),  # class c's rows x -> k positions in order of choice
                "kcenter": lambda x, k, c: k_center(x, k, kcenter_start, np.random.default_rng((seed, c)))}
    coreset_rows = {(name, k): [] for name in coresets for k in ipcs}
    for c, name in enumerate(tqdm(class_names, desc="select", mininterval=2)):
        members = np.flatnonzero(labels == c)
        scores[members], inlier[members] = lof_inliers(vectors[members], n_neighbors, contamination, seed)
        kept = members[inlier[members]]
        for k in ipcs:
            if k > len(kept):
                raise PipelineError(f"IPC {k} (param 'distill.ipcs') is larger than class '{name}', which has "
                                    f"{len(kept)} train images after outlier removal")
            centres, assign, nearest = kmeans_prototypes(vectors[kept], k, n_init, seed)
            sizes = np.bincount(assign, minlength=k)
            for j in range(k):
                rows[k].append({"label": c, "class_name": name, "cluster": j, "uid": str(uids[kept[nearest[j]]]),
                                "cluster_size": int(sizes[j]), "center": centres[j].tolist()})
            for coreset, choose in coresets.items():
                for rank, i in enumerate(choose(vectors[kept], k, c)):
                    coreset_rows[(coreset, k)].append({"label": c, "class_name": name, "rank": rank,
                                                       "uid": str(uids[kept[i]])})

    write_parquet({"uid": uids.tolist(), "label": labels.tolist(), "lof_score": scores, "outlier": ~inlier},
                  SELECTIONS / "lof.parquet", {"selection": {"n_neighbors": n_neighbors,
                                                              "contamination": contamination}})
    schema = pa.schema([("label", pa.int64()), ("class_name", pa.string()), ("cluster", pa.int32()),
                        ("uid", pa.string()), ("cluster_size", pa.int32()), ("center", pa.list_(pa.float32()))])
    for k in ipcs:
        write_parquet(pa.Table.from_pylist(rows[k], schema=schema), SELECTIONS / f"kmeans-ipc{k}.parquet",
                      {"selection": {"method": "kmeans", "ipc": k, "n_init": n_init, "seed": seed}})
        selection_figures(uids, labels, vectors, inlier, rows[k], class_names, k)
    coreset_schema = pa.schema([("label", pa.int64()), ("class_name", pa.string()), ("rank", pa.int32()),
                                ("uid", pa.string())])
    how = {"herding": {}, "kcenter": {"start": kcenter_start}}  # the choices each coreset was made with
    for (coreset, k), chosen in coreset_rows.items():
        write_parquet(pa.Table.from_pylist(chosen, schema=coreset_schema), SELECTIONS / f"{coreset}-ipc{k}.parquet",
                      {"selection": {"method": coreset, "ipc": k, "seed": seed, **how[coreset]}})
    for (method, order), by_ipc in forgotten.items():  # forgetting_most: the earlier rule, for rows beside it
        for k, chosen in by_ipc.items():
            write_parquet(pa.Table.from_pylist(chosen, schema=coreset_schema), SELECTIONS / f"{method}-ipc{k}.parquet",
                          {"selection": {"method": method, "ipc": k, "seed": seed, "order": order,
                                         "events": events_meta}})
    print(f"LOF removed {int((~inlier).sum())} of {len(uids)} train images; k-means (+ text prototypes), herding, "
          f"k-center (start: {kcenter_start}) and forgetting ({forgetting_order} forgetting events first) for IPC "
          f"{ipcs}")


if __name__ == "__main__":
    run_stage(main)
