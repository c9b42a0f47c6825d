"""select: LOF outlier removal and per-class k-means prototypes on image features -> data/selections/

`data/selections/lof.parquet`, one row per train image:

| column    | type    | meaning                                                  |
|-----------|---------|----------------------------------------------------------|
| uid       | string  | train image                                              |
| label     | int64   |                                                          |
| lof_score | float32 | negative LOF of the image within its class (lower = more outlying) |
| outlier   | bool    | removed before clustering                                |

`data/selections/kmeans-ipc{K}.parquet`, one row per (class, cluster), K = each IPC in `distill.ipcs`:

| column       | type          | meaning                                       |
|--------------|---------------|-----------------------------------------------|
| label        | int64         |                                               |
| class_name   | string        |                                               |
| cluster      | int32         | 0..K-1, ordered by decreasing cluster size    |
| uid          | string        | the real inlier image nearest to the centre   |
| cluster_size | int32         | inliers in the cluster                        |
| center       | list<float32> | the cluster centre in image-feature space     |

Only the train split is used (val and test never feed a selection).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.cluster import KMeans
from sklearn.neighbors import LocalOutlierFactor
from tqdm import tqdm

from stages.data import dataset_info
from stages.embed import load_features
from stages.io import PipelineError, read_parquet, write_parquet
from stages.params import int_list, load_params, param, positive

SELECTIONS = Path("data/selections")


def lof_inliers(features: np.ndarray, n_neighbors: int, contamination: float, seed: int):
    """(scores, inlier mask) of LOF; contamination 0 keeps everything."""
    if len(features) <= n_neighbors or contamination <= 0:
        return np.zeros(len(features), np.float32), np.ones(len(features), bool)
    lof = LocalOutlierFactor(n_neighbors=n_neighbors, contamination=contamination)
    inlier = lof.fit_predict(features) == 1
    return lof.negative_outlier_factor_.astype(np.float32), inlier


def kmeans_prototypes(features: np.ndarray, k: int, n_init: int, seed: int):
    """(centres, labels, index of the nearest member of each centre), clusters sorted by size."""
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(features)
    sizes = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    centres = km.cluster_centers_[order]
    relabel = np.empty(k, int)
    relabel[order] = np.arange(k)
    labels = relabel[km.labels_]
    nearest = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        dist = ((features[members] - centres[c]) ** 2).sum(1)
        nearest.append(int(members[np.argmin(dist)]))
    return centres.astype(np.float32), labels, np.array(nearest)


def main() -> None:
    params = load_params()
    seed = param(params, "seed", int)
    ipcs = int_list(params, "distill.ipcs")
    n_neighbors = positive(params, "select.lof_neighbors")
    contamination = param(params, "select.lof_contamination", float)
    if not 0 <= contamination < 0.5:
        raise PipelineError(f"param 'select.lof_contamination' must be in [0, 0.5), got {contamination}")
    n_init = positive(params, "select.kmeans_n_init")
    class_names = dataset_info()["class_names"]

    index, vectors = load_features("image")
    train_uids = set(read_parquet("data/prepared/train", ["uid"])["uid"].to_pylist())
    uids = np.array(index["uid"].to_pylist())
    labels = np.array(index["label"].to_pylist())
    in_train = np.array([u in train_uids for u in uids])
    uids, labels, vectors = uids[in_train], labels[in_train], vectors[in_train]

    scores = np.zeros(len(uids), np.float32)
    inlier = np.ones(len(uids), bool)
    rows = {k: [] for k in ipcs}
    for c, name in enumerate(tqdm(class_names, desc="select", mininterval=2)):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            raise PipelineError(f"class '{name}' has no train images with features")
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

    write_parquet({"uid": uids.tolist(), "label": labels.tolist(), "lof_score": scores, "outlier": ~inlier},
                  SELECTIONS / "lof.parquet", {"selection": {"n_neighbors": n_neighbors,
                                                              "contamination": contamination}})
    schema = pa.schema([("label", pa.int64()), ("class_name", pa.string()), ("cluster", pa.int32()),
                        ("uid", pa.string()), ("cluster_size", pa.int32()), ("center", pa.list_(pa.float32()))])
    for k in ipcs:
        write_parquet(pa.Table.from_pylist(rows[k], schema=schema), SELECTIONS / f"kmeans-ipc{k}.parquet",
                      {"selection": {"method": "kmeans", "ipc": k, "n_init": n_init, "seed": seed}})
    print(f"LOF removed {int((~inlier).sum())} of {len(uids)} train images; k-means for IPC {ipcs}")


if __name__ == "__main__":
    main()
