"""select: LOF outlier removal, per-class k-means prototypes and coresets on image features -> data/selections/

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

`data/selections/{herding,kcenter}-ipc{K}.parquet`, one row per chosen image (on LOF inliers):

| column     | type   | meaning                                               |
|------------|--------|-------------------------------------------------------|
| label      | int64  |                                                       |
| class_name | string |                                                       |
| rank       | int32  | order of choice (0 = first picked)                    |
| uid        | string | the chosen real train image                           |

herding: greedily add the image that brings the running mean closest to the class mean
(Welling 2009). kcenter: greedy k-center, start at the image nearest the class mean, then
repeatedly add the image farthest from everything chosen so far.

`data/selections/forgetting-ipc{K}.parquet`: same columns, the K most forgotten train images of each class
(all train images, not only LOF inliers) from stage `forgetting`'s counts: never learned first, then most
forgetting events, then most misclassified presentations, then uid.

`pds_prototypes` (PDS cluster matching) is a library function here; it needs image and
text features in one joint space (CLIP), which the offline encoders do not give.

Only the train split is used (val and test never feed a selection).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.neighbors import LocalOutlierFactor
from tqdm import tqdm

from stages.data import dataset_info
from stages.embed import load_features
from stages.forgetting import EVENTS
from stages.io import PipelineError, read_parquet, read_parquet_metadata, write_parquet
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


def herding(features: np.ndarray, k: int) -> np.ndarray:
    """Indices of k rows chosen greedily so that their running mean tracks the mean of all rows."""
    target = features.mean(0)
    chosen, total = [], np.zeros_like(target)
    available = np.ones(len(features), bool)
    for t in range(k):
        gaps = ((target - (total + features) / (t + 1)) ** 2).sum(1)
        gaps[~available] = np.inf
        i = int(np.argmin(gaps))
        chosen.append(i)
        available[i] = False
        total += features[i]
    return np.array(chosen)


def k_center(features: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center (farthest-point) indices, starting from the row nearest the mean."""
    first = int(np.argmin(((features - features.mean(0)) ** 2).sum(1)))
    chosen = [first]
    dist = ((features - features[first]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, ((features - features[i]) ** 2).sum(1))
    return np.array(chosen)


CORESETS = {"herding": lambda x, k, seed: herding(x, k), "kcenter": lambda x, k, seed: k_center(x, k)}


def most_forgotten(events: pa.Table, class_names: list, ipcs: list[int]) -> dict:
    """{K: rows} of the K most forgotten train images per class: never learned first, then most forgetting
    events, then most misclassified presentations, then uid."""
    uids = np.array(events["uid"].to_pylist())
    labels = np.array(events["label"].to_pylist())
    order = np.lexsort((uids, -np.array(events["misclassified"].to_pylist()),
                        -np.array(events["forgetting_events"].to_pylist()), np.array(events["learned"].to_pylist())))
    rows = {k: [] for k in ipcs}
    for c, name in enumerate(class_names):
        ranked = order[labels[order] == c]
        for k in ipcs:
            if k > len(ranked):
                raise PipelineError(f"IPC {k} (param 'distill.ipcs') is larger than class '{name}', which has "
                                    f"{len(ranked)} train images in {EVENTS}")
            rows[k] += [{"label": c, "class_name": name, "rank": r, "uid": str(uids[i])}
                        for r, i in enumerate(ranked[:k])]
    return rows


def pds_prototypes(image: np.ndarray, text: np.ndarray, clusters: int, prune_ratio: float = 0.2, seed: int = 0,
                   batch_size: int = 4096) -> dict:
    """PDS: prune weak pairs, cluster each modality, match clusters, average the shared pairs.

    image, text: row-aligned L2-normalised embeddings of N image-text pairs in one joint space.
    Returns image/text prototypes (clusters x d), the matched (image cluster, text cluster) pairs,
    the number of shared pairs of each match, the kept pair indices and, for each text prototype,
    the index of the nearest real text.
    """
    if image.ndim != 2 or text.ndim != 2 or image.shape[1] != text.shape[1]:
        raise PipelineError(f"PDS needs image and text features in one space: got dims {image.shape} and "
                            f"{text.shape}")
    if len(image) != len(text):
        raise PipelineError(f"PDS needs row-aligned pairs: {len(image)} image rows vs {len(text)} text rows")
    if not 0 <= prune_ratio < 1:
        raise PipelineError(f"prune ratio must be in [0, 1), got {prune_ratio}")
    similarity = (image * text).sum(1)
    keep = np.sort(np.argsort(-similarity, kind="stable")[:int(round(len(image) * (1 - prune_ratio)))])
    if clusters > len(keep):
        raise PipelineError(f"{clusters} clusters asked for but only {len(keep)} pairs are left after pruning")
    img, txt = image[keep], text[keep]

    def cluster(x):
        km = MiniBatchKMeans(n_clusters=clusters, random_state=seed, batch_size=batch_size, n_init=1).fit(x)
        return km.labels_, km.cluster_centers_

    img_labels, img_centres = cluster(img)
    txt_labels, txt_centres = cluster(txt)
    shared = np.zeros((clusters, clusters), np.int64)
    np.add.at(shared, (img_labels, txt_labels), 1)
    rows, cols = linear_sum_assignment(-shared)
    img_protos, txt_protos = img_centres[rows].copy(), txt_centres[cols].copy()
    for m, (i, j) in enumerate(zip(rows, cols)):
        members = (img_labels == i) & (txt_labels == j)
        if members.any():
            img_protos[m], txt_protos[m] = img[members].mean(0), txt[members].mean(0)
    nearest_text = np.argmax(txt_protos @ text.T, axis=1)
    return {"image": img_protos.astype(np.float32), "text": txt_protos.astype(np.float32),
            "matches": np.stack([rows, cols], 1), "shared": shared[rows, cols], "kept": keep,
            "nearest_text": nearest_text}


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
    coreset_rows = {(name, k): [] for name in CORESETS for k in ipcs}
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
            for coreset, choose in CORESETS.items():
                for rank, i in enumerate(choose(vectors[kept], k, seed)):
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
    coreset_schema = pa.schema([("label", pa.int64()), ("class_name", pa.string()), ("rank", pa.int32()),
                                ("uid", pa.string())])
    for (coreset, k), chosen in coreset_rows.items():
        write_parquet(pa.Table.from_pylist(chosen, schema=coreset_schema), SELECTIONS / f"{coreset}-ipc{k}.parquet",
                      {"selection": {"method": coreset, "ipc": k, "seed": seed}})
    events = read_parquet(EVENTS, ["uid", "label", "forgetting_events", "learned", "misclassified"])
    for k, chosen in most_forgotten(events, class_names, ipcs).items():
        write_parquet(pa.Table.from_pylist(chosen, schema=coreset_schema), SELECTIONS / f"forgetting-ipc{k}.parquet",
                      {"selection": {"method": "forgetting", "ipc": k, "seed": seed,
                                     "events": read_parquet_metadata(EVENTS).get("forgetting", {})}})
    print(f"LOF removed {int((~inlier).sum())} of {len(uids)} train images; k-means, herding, k-center and "
          f"forgetting for IPC {ipcs}")


if __name__ == "__main__":
    main()
