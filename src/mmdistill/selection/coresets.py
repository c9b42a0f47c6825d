"""select: LOF, k-means prototypes and coresets -> data/selections/; text, PDS and pair prototypes -> data/prototypes/

    python -m mmdistill.stages.selection                # DVC stage select: lof, kmeans, herding, kcenter, forgetting + figures
    python -m mmdistill.stages.prototypes   # DVC stage prototypes: text-ipcK, pds-M, pairs-method-N

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

`data/prototypes/text-ipc{K}.parquet` (`python -m mmdistill.stages.prototypes`, DVC stage `prototypes`, its own stage so
that a description change never touches the image selections), VLCP text prototypes, one row per (class,
cluster) of `kmeans-ipc{K}`, clusters being k-means' assignment of the LOF inliers to their nearest centre:

| column      | type         | meaning                                                        |
|-------------|--------------|----------------------------------------------------------------|
| label       | int64        |                                                                |
| class_name  | string       |                                                                |
| cluster     | int32        | the k-means cluster (same numbering as kmeans-ipc{K})           |
| uid         | string       | the train image whose description was chosen                   |
| description | string       | the text prototype (that image's description)                  |
| words       | list<string> | the cluster's top words (`select.text_top_k`), most used first |
| score       | int32        | summed cluster counts of the top words the description uses    |

Words used by more than `select.text_threshold` of a class's descriptions are non-representative and never
top words (the VLCP supplement gives β = 0.7 and k = 30 without defining them further; this is our reading).

`data/prototypes/pairs-{method}-{N}.parquet` (same stage; `select.pair_coresets`: methods random, herding,
kcenter, forgetting and sizes N), coresets over the train split's image / whole-image-caption pairs that ignore labels, as
for unlabelled image-text data; a pair's feature is its image and caption features concatenated. Columns:
`rank` int32 (order of choice), `uid` (the image), `caption` (its whole-image caption), `label` (for reference
only). `forgetting` over pairs ranks them by the forgetting events stage align counted while training its
contrastive heads (a pair is correct at a presentation when its image and caption retrieve each other
within the mini-batch), in the order of `select.forgetting_order` as for the per-class coreset (MTT-VL §3.2 adapts
forgetting to image-text pairs this way and keeps the pairs with the fewest forgetting events). `kcenter` over pairs
starts as `select.kcenter_start` says (MTT-VL §3.2: a random pair).

`data/selections/{herding,kcenter}-ipc{K}.parquet`, one row per chosen image (on LOF inliers):

| column     | type   | meaning                                               |
|------------|--------|-------------------------------------------------------|
| label      | int64  |                                                       |
| class_name | string |                                                       |
| rank       | int32  | order of choice (0 = first picked)                    |
| uid        | string | the chosen real train image                           |

herding: greedily add the image that brings the running mean closest to the class mean
(Welling 2009). kcenter: greedy k-center (farthest-point): start at one image, then repeatedly add the image
farthest from everything chosen so far. `select.kcenter_start` picks the first image: `random` (the default; a
seeded random image of the class, as MTT-VL §3.2 describes its k-center baseline; the DSDM paper's k-center row
cites the classic greedy k-center, which starts from an arbitrary point) or `mean` (the image nearest the class
mean: deterministic, the earlier default). Metadata `selection.start` records it.

`data/selections/forgetting-ipc{K}.parquet`: same columns, K train images of each class (all train images, not
only LOF inliers) ranked by stage `forgetting`'s counts as `select.forgetting_order` says (metadata
`selection.order`):
  fewest  (default) Toneva et al.'s reliable examples, as MTT-VL §3.2 keeps them: learned at least once first,
          then fewest forgetting events, then fewest misclassified presentations, then uid (a never-learned
          image counts as forgotten infinitely often, so it comes last)
  most    the earlier default, the reverse ranking: never learned first, then most forgetting events, then most
          misclassified presentations, then uid
`data/selections/forgetting_most-ipc{K}.parquet`: the same in the order `most` whatever the param says (method
`forgetting_most`, the earlier rule reported beside `forgetting`).

`data/prototypes/pds-{M}.parquet` (same stage, one file per M in `select.pds.clusters`), PDS on the train
split's image / whole-image-caption pairs in one space (`select.pds.features`: `aligned` = stage align's
learned space, `embed` = data/features when both encoders are the same CLIP); one row per prototype:

| column        | type          | meaning                                                          |
|---------------|---------------|------------------------------------------------------------------|
| prototype     | int32         | 0..M-1                                                           |
| image_cluster | int32         | mini-batch k-means cluster of the images                         |
| text_cluster  | int32         | its Hungarian match among the caption clusters                   |
| shared        | int32         | kept pairs in both clusters (0: the prototypes are the centres)  |
| uid           | string        | image of the real caption nearest the text prototype             |
| caption       | string        | that caption                                                     |
| image, text   | list<float32> | the image and text prototypes (mean of the shared pairs)         |

Figures (DVC outs, in git): `outputs/figures/selection/kmeans-ipc{K}.png`, per class (first 10) a 2-D PCA of
the image features with LOF outliers, k-means centres and chosen images marked, and
`outputs/figures/selection/images-ipc{K}.png`, the chosen images (one row per class).

Only the train split is used (val and test never feed a selection).
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pyarrow as pa

# sklearn and scipy are imported where used: the params schema imports this module (PAIR_CORESETS) in every stage
from mmdistill.annotate.cache import read_annotations
from mmdistill.core.config import int_list, param
from mmdistill.core.paths import (
    ALIGNED,
    FEATURES,
    FORGETTING_EVENTS,
    PAIR_EVENTS,
    PREPARED,
    PROTOTYPES,
    SELECTION_FIGURES,
    SELECTIONS,
)
from mmdistill.core.storage import (
    PipelineError,
    read_parquet,
    save_figure,
    write_parquet,
)
from mmdistill.embed.alignment import image_caption_pairs
from mmdistill.embed.features import feature_metadata, load_features


def lof_inliers(features: np.ndarray, n_neighbors: int, contamination: float, seed: int):
    """(scores, inlier mask) of LOF; contamination 0 keeps everything."""
    if len(features) <= n_neighbors or contamination <= 0:
        return np.zeros(len(features), np.float32), np.ones(len(features), bool)
    from sklearn.neighbors import LocalOutlierFactor
    lof = LocalOutlierFactor(n_neighbors=n_neighbors, contamination=contamination)
    inlier = lof.fit_predict(features) == 1
    return lof.negative_outlier_factor_.astype(np.float32), inlier


def kmeans_prototypes(features: np.ndarray, k: int, n_init: int, seed: int):
    """(centres, labels, index of the nearest member of each centre), clusters sorted by size."""
    from sklearn.cluster import KMeans
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


KCENTER_STARTS = ("random", "mean")  # select.kcenter_start


def k_center(features: np.ndarray, k: int, start: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Greedy k-center (farthest-point) indices. `start`: "random" begins at a row drawn from `rng`, "mean" at
    the row nearest the mean."""
    if start == "random":
        if rng is None:
            raise PipelineError("k-center with a random start needs a random generator")
        first = int(rng.integers(len(features)))
    elif start == "mean":
        first = int(np.argmin(((features - features.mean(0)) ** 2).sum(1)))
    else:
        raise PipelineError(f"unknown k-center start {start!r} (param 'select.kcenter_start'); valid: "
                            f"{', '.join(KCENTER_STARTS)}")
    chosen = [first]
    dist = ((features - features[first]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, ((features - features[i]) ** 2).sum(1))
    return np.array(chosen)


PDS_FEATURES = ("aligned", "embed")  # select.pds.features: the space PDS clusters in
PDS_TEXT_FEATURES = ("prototype", "caption")  # imagetext.pds_unclip.text (mmdistill.distill.pair_synthesis)
PDS_CONDITIONS = ("both", "image")            # imagetext.pds_unclip.condition


def text_prototypes(descriptions: list[str], assign: np.ndarray, distance: np.ndarray, k: int, threshold: float,
                    top_k: int) -> list[tuple[int, list[str], int]]:
    """VLCP text prototypes of one class: for each of its k image clusters, (index of the chosen description,
    the cluster's top words, the description's score).

    Words (lower-case, English stop words removed) used by more than `threshold` of all the class's descriptions
    are non-representative: they describe the class, not a cluster. A cluster's top words are its `top_k` most
    used remaining words (counted once per description); each member description scores the summed counts of
    the top words it uses, and the best one is the text prototype (ties: the image nearest the centre).
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
    bags = [set(re.findall(r"[a-z]+", text.lower())) - ENGLISH_STOP_WORDS for text in descriptions]
    used_by = Counter(word for bag in bags for word in bag)
    common = {word for word, n in used_by.items() if n > threshold * len(bags)}
    out = []
    for j in range(k):
        members = np.flatnonzero(assign == j)
        if len(members) == 0:
            raise PipelineError(f"image cluster {j} has no members to take a text prototype from")
        members = members[np.argsort(distance[members], kind="stable")]
        counts = Counter(word for i in members for word in bags[i] - common)
        top = sorted(counts, key=lambda word: (-counts[word], word))[:top_k]
        scores = [sum(counts[word] for word in bags[i] if word in top) for i in members]
        best = int(np.argmax(scores))
        out.append((int(members[best]), top, scores[best]))
    return out


def text_prototype_inputs() -> dict:
    """What VLCP's text prototypes are made from: the train image features (uids, labels, vectors), stage select's
    LOF outliers and the descriptions, by uid."""
    uids, labels, vectors = train_features("image")
    lof = read_parquet(SELECTIONS / "lof.parquet", ["uid", "outlier"])
    descriptions = read_annotations("descriptions", ["uid", "description"])
    return {"uids": uids, "labels": labels, "vectors": vectors,
            "outlier": dict(zip(lof["uid"].to_pylist(), lof["outlier"].to_pylist())),
            "description": dict(zip(descriptions["uid"].to_pylist(), descriptions["description"].to_pylist()))}


def text_prototype_rows(inputs: dict, k: int, threshold: float, top_k: int) -> list[dict]:
    """The text prototype of every (class, cluster) of stage select's kmeans-ipc{k}, class-major, clusters in order:
    rows of data/prototypes/text-ipc{k} (label, class_name, cluster, uid, description, words, score)."""
    uids, labels, vectors = inputs["uids"], inputs["labels"], inputs["vectors"]
    clusters = read_parquet(SELECTIONS / f"kmeans-ipc{k}.parquet", ["label", "class_name", "cluster", "center"])
    inlier = ~np.array([inputs["outlier"].get(u, True) for u in uids])
    rows = []
    for c in sorted(set(clusters["label"].to_pylist())):
        mine = [i for i, lab in enumerate(clusters["label"].to_pylist()) if lab == c]
        name = clusters["class_name"][mine[0]].as_py()
        centres = np.array([clusters["center"][i].as_py() for i in mine], np.float32)[
            np.argsort([clusters["cluster"][i].as_py() for i in mine])]
        members = np.flatnonzero((labels == c) & inlier)
        if centres.shape[1] != vectors.shape[1]:
            raise PipelineError(f"kmeans-ipc{k} centres are {centres.shape[1]}-d but image features are "
                                f"{vectors.shape[1]}-d: re-run `dvc repro select`")
        missing = [u for u in uids[members] if u not in inputs["description"]]
        if missing:
            raise PipelineError(f"train image {missing[0]} has no row in data/annotations/descriptions.parquet; "
                                "re-run `dvc repro describe`")
        distance = ((vectors[members][:, None] - centres[None]) ** 2).sum(-1)
        assign = distance.argmin(1)  # k-means' own assignment: each inlier to its nearest centre
        texts = [inputs["description"][u] for u in uids[members]]
        chosen = text_prototypes(texts, assign, distance.min(1), k, threshold, top_k)
        rows += [{"label": c, "class_name": name, "cluster": j, "uid": str(uids[members[i]]),
                  "description": texts[i], "words": words, "score": score}
                 for j, (i, words, score) in enumerate(chosen)]
    return rows


FORGETTING_ORDERS = ("fewest", "most")  # select.forgetting_order


def forgetting_order(events: pa.Table, order: str) -> np.ndarray:
    """Rows of `events` ranked for a forgetting coreset, ties broken by uid.
    "fewest": learned first, then fewest forgetting events, then fewest misclassified presentations (Toneva's
    reliable examples; a never-learned example counts as forgotten infinitely often).
    "most": never learned first, then most forgetting events, then most misclassified presentations."""
    uids = np.array(events["uid"].to_pylist())
    events_, wrong = np.array(events["forgetting_events"].to_pylist()), np.array(events["misclassified"].to_pylist())
    learned = np.array(events["learned"].to_pylist())
    if order == "fewest":
        return np.lexsort((uids, wrong, events_, ~learned))
    if order == "most":
        return np.lexsort((uids, -wrong, -events_, learned))
    raise PipelineError(f"unknown forgetting order {order!r} (param 'select.forgetting_order'); valid: "
                        f"{', '.join(FORGETTING_ORDERS)}")


def forgetting_selection(events: pa.Table, class_names: list, ipcs: list[int], order: str) -> dict:
    """{K: rows} of K train images per class ranked by `forgetting_order(events, order)`."""
    uids = np.array(events["uid"].to_pylist())
    labels = np.array(events["label"].to_pylist())
    order = forgetting_order(events, order)
    rows = {k: [] for k in ipcs}
    for c, name in enumerate(class_names):
        ranked = order[labels[order] == c]
        for k in ipcs:
            if k > len(ranked):
                raise PipelineError(f"IPC {k} (param 'distill.ipcs') is larger than class '{name}', which has "
                                    f"{len(ranked)} train images in {FORGETTING_EVENTS}")
            rows[k] += [{"label": c, "class_name": name, "rank": r, "uid": str(uids[i])}
                        for r, i in enumerate(ranked[:k])]
    return rows


def pds_prototypes(image: np.ndarray, text: np.ndarray, clusters: int, prune_ratio: float = 0.2, seed: int = 0,
                   batch_size: int = 4096) -> dict:
    """PDS: prune weak pairs, cluster each modality, match clusters, average the shared pairs.

    image, text: row-aligned L2-normalised embeddings of N image-text pairs in one joint space.
    Returns image/text prototypes (clusters x d), the matched (image cluster, text cluster) pairs,
    the number of shared pairs of each match, the kept pair indices, for each text prototype the index
    of the nearest real text, and the rows each prototype averages (image_members, text_members: the
    shared pairs; a pairless match, its own image / text cluster).
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

    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import MiniBatchKMeans

    def cluster(x):
        km = MiniBatchKMeans(n_clusters=clusters, random_state=seed, batch_size=batch_size, n_init=1).fit(x)
        return km.labels_, km.cluster_centers_

    img_labels, img_centres = cluster(img)
    txt_labels, txt_centres = cluster(txt)
    shared = np.zeros((clusters, clusters), np.int64)
    np.add.at(shared, (img_labels, txt_labels), 1)
    rows, cols = linear_sum_assignment(-shared)
    img_protos, txt_protos = img_centres[rows].copy(), txt_centres[cols].copy()
    image_members, text_members = [], []
    for m, (i, j) in enumerate(zip(rows, cols)):
        members = (img_labels == i) & (txt_labels == j)
        if members.any():
            img_protos[m], txt_protos[m] = img[members].mean(0), txt[members].mean(0)
            image_members.append(keep[members])
            text_members.append(keep[members])
        else:
            image_members.append(keep[img_labels == i])
            text_members.append(keep[txt_labels == j])
    nearest_text = np.argmax(txt_protos @ text.T, axis=1)
    return {"image": img_protos.astype(np.float32), "text": txt_protos.astype(np.float32),
            "matches": np.stack([rows, cols], 1), "shared": shared[rows, cols], "kept": keep,
            "nearest_text": nearest_text, "image_members": image_members, "text_members": text_members}


def selection_figures(uids, labels, vectors, inlier, kmeans_rows: list, class_names: list, k: int,
                      max_classes: int = 10) -> None:
    """outputs/figures/selection/kmeans-ipc{k}.png: per class (the first `max_classes`), a 2-D PCA of the image
    features with LOF outliers, k-means centres and the chosen images marked; images-ipc{k}.png: the chosen
    images, one row per class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    from mmdistill.data.datasets import decode_images
    shown = class_names[:max_classes]
    cols = min(len(shown), 5)
    fig, axes = plt.subplots(-(-len(shown) // cols), cols, figsize=(3.2 * cols, 3.0 * -(-len(shown) // cols)),
                             squeeze=False)
    position = {u: i for i, u in enumerate(uids)}
    for c, (ax, name) in enumerate(zip(axes.flat, shown)):
        members = np.flatnonzero(labels == c)
        mine = [r for r in kmeans_rows if r["label"] == c]
        pca = PCA(2, svd_solver="full").fit(vectors[members])
        xy = pca.transform(vectors[members])
        out = ~inlier[members]
        ax.scatter(*xy[~out].T, s=4, c="0.7", label="inlier")
        ax.scatter(*xy[out].T, s=14, c="tab:red", marker="x", label="LOF outlier")
        centres = pca.transform(np.array([r["center"] for r in mine], np.float32))
        ax.scatter(*centres.T, s=80, c="black", marker="*", label="k-means centre")
        chosen = pca.transform(vectors[[position[r["uid"]] for r in mine]])
        ax.scatter(*chosen.T, s=60, facecolors="none", edgecolors="tab:blue", label="chosen image")
        for (x0, y0), (x1, y1) in zip(centres, chosen):  # nearest in feature space, not always in 2-D
            ax.plot([x0, x1], [y0, y1], c="tab:blue", lw=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"LOF + k-means, IPC {k}: PCA of each class's image features", fontsize=10)
    fig.tight_layout()
    save_figure(fig, SELECTION_FIGURES / f"kmeans-ipc{k}.png")
    plt.close(fig)

    table = read_parquet(PREPARED / "train", ["uid", "image"], {"image": "binary"})
    blob = dict(zip(table["uid"].to_pylist(), table["image"].to_pylist()))
    fig, axes = plt.subplots(len(shown), k, figsize=(0.9 * k + 1.5, 0.9 * len(shown)), squeeze=False)
    for c, name in enumerate(shown):
        mine = sorted((r for r in kmeans_rows if r["label"] == c), key=lambda r: r["cluster"])
        pixels = decode_images([blob[r["uid"]] for r in mine], [r["uid"] for r in mine], channels=3)
        for j, ax in enumerate(axes[c]):
            ax.imshow(pixels[j].transpose(1, 2, 0))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(f"kmeans, IPC {k}: the real image nearest each centre", fontsize=9)
    save_figure(fig, SELECTION_FIGURES / f"images-ipc{k}.png")
    plt.close(fig)


def train_features(kind: str):
    """(uids, labels, float32 vectors) of the train split's features of one kind."""
    index, vectors = load_features(kind)
    train_uids = set(read_parquet(PREPARED / "train", ["uid"])["uid"].to_pylist())
    uids = np.array(index["uid"].to_pylist())
    in_train = np.array([u in train_uids for u in uids], bool)
    return uids[in_train], np.array(index["label"].to_pylist())[in_train], vectors[in_train]


def pds_selection(params: dict) -> None:
    """PDS on the train split's image / whole-image-caption pairs -> data/prototypes/pds-{M}.parquet."""
    seed = param(params, "seed", int)
    prune_ratio = param(params, "select.pds.prune_ratio", float)
    source = param(params, "select.pds.features", str, choices=PDS_FEATURES)
    root = ALIGNED if source == "aligned" else FEATURES
    spaces = {kind: feature_metadata(kind, root).get("settings", {}).get("space") for kind in ("image", "caption")}
    if spaces["image"] != spaces["caption"]:
        raise PipelineError(f"PDS needs image and caption features in one space, but {root}/image is in "
                            f"{spaces['image']!r} and {root}/caption in {spaces['caption']!r}: use one CLIP for "
                            "both embed encoders, or param 'select.pds.features' = aligned (stage align)")
    image_index, image_vectors = load_features("image", root)
    caption_index, caption_vectors = load_features("caption", root)
    uids, image, text = image_caption_pairs("train", image_index, image_vectors, caption_index, caption_vectors)
    captions = read_annotations("captions", ["uid", "instance_id", "caption"])
    caption_of = {u: c for u, i, c in zip(*(captions[k].to_pylist() for k in ("uid", "instance_id", "caption")))
                  if i == -1}
    schema = pa.schema([("prototype", pa.int32()), ("image_cluster", pa.int32()), ("text_cluster", pa.int32()),
                        ("shared", pa.int32()), ("uid", pa.string()), ("caption", pa.string()),
                        ("image", pa.list_(pa.float32())), ("text", pa.list_(pa.float32()))])
    for clusters in int_list(params, "select.pds.clusters"):
        out = pds_prototypes(image, text, clusters, prune_ratio, seed)
        rows = [{"prototype": m, "image_cluster": int(i), "text_cluster": int(j), "shared": int(n),
                 "uid": uids[t], "caption": caption_of[uids[t]], "image": img.tolist(), "text": txt.tolist()}
                for m, ((i, j), n, t, img, txt) in enumerate(zip(out["matches"], out["shared"], out["nearest_text"],
                                                                out["image"], out["text"]))]
        write_parquet(pa.Table.from_pylist(rows, schema=schema), PROTOTYPES / f"pds-{clusters}.parquet",
                      {"selection": {"method": "pds", "clusters": clusters, "prune_ratio": prune_ratio,
                                     "features": source, "space": spaces["image"], "pairs": len(uids),
                                     "kept": len(out["kept"]), "pairless": int((out["shared"] == 0).sum()),
                                     "seed": seed}})


def forgetting_pairs(uids: list[str], k: int, order: str) -> np.ndarray:
    """Positions in `uids` of the first k pairs by `forgetting_order(.., order)` of the forgetting events of stage
    align's contrastive training."""
    events = read_parquet(PAIR_EVENTS, ["uid", "forgetting_events", "learned", "misclassified"])
    position = {u: i for i, u in enumerate(uids)}
    missing = [u for u in events["uid"].to_pylist() if u not in position]
    if missing or events.num_rows != len(uids):
        raise PipelineError(f"{PAIR_EVENTS} does not cover the train pairs (e.g. {missing[:1]}): re-run stage align")
    ranked = [position[events["uid"][i].as_py()] for i in forgetting_order(events, order)[:k]]
    return np.array(ranked)


PAIR_CORESETS = ("random", "herding", "kcenter", "forgetting")


def pair_coreset(method: str, pairs: np.ndarray, uids: list[str], k: int, seed: int, kcenter_start: str,
                 forgetting_order: str) -> tuple[np.ndarray, dict]:
    """(positions of the k chosen pairs in order of choice, the choice's settings for the output's metadata)."""
    if method == "random":
        return np.random.default_rng(seed).choice(len(pairs), k, replace=False), {}
    if method == "herding":
        return herding(pairs, k), {}
    if method == "kcenter":
        return k_center(pairs, k, kcenter_start, np.random.default_rng(seed)), {"start": kcenter_start}
    if method == "forgetting":
        return forgetting_pairs(uids, k, forgetting_order), {"order": forgetting_order}
    raise PipelineError(f"unknown pair coreset {method!r} (param 'select.pair_coresets.methods'); valid: "
                        f"{', '.join(PAIR_CORESETS)}")


def pair_coresets(params: dict) -> None:
    """Coresets over the train split's image / whole-image-caption pairs, ignoring labels (for unlabelled
    image-text data) -> data/prototypes/pairs-{method}-{N}.parquet. A pair is the concatenation of its
    image and caption features (each L2-normalised, so the two modalities weigh the same)."""
    seed = param(params, "seed", int)
    kcenter_start = param(params, "select.kcenter_start", str, choices=KCENTER_STARTS)
    order = param(params, "select.forgetting_order", str, choices=FORGETTING_ORDERS)
    methods = param(params, "select.pair_coresets.methods", list)
    unknown = [m for m in methods if m not in PAIR_CORESETS]
    if unknown:
        raise PipelineError(f"unknown pair coreset {unknown[0]!r} (param 'select.pair_coresets.methods'); valid: "
                            f"{', '.join(PAIR_CORESETS)}")
    image_index, image_vectors = load_features("image")
    caption_index, caption_vectors = load_features("caption")
    uids, image, text = image_caption_pairs("train", image_index, image_vectors, caption_index, caption_vectors)
    pairs = np.concatenate([image, text], 1)
    label_of = dict(zip(image_index["uid"].to_pylist(), image_index["label"].to_pylist()))
    captions = read_annotations("captions", ["uid", "instance_id", "caption"])
    caption_of = {u: c for u, i, c in zip(*(captions[k].to_pylist() for k in ("uid", "instance_id", "caption")))
                  if i == -1}
    schema = pa.schema([("rank", pa.int32()), ("uid", pa.string()), ("caption", pa.string()), ("label", pa.int64())])
    for size in int_list(params, "select.pair_coresets.sizes"):
        if size > len(uids):
            raise PipelineError(f"pair coreset size {size} (param 'select.pair_coresets.sizes') is larger than the "
                                f"{len(uids)} train pairs")
        for method in methods:
            chosen, how = pair_coreset(method, pairs, uids, size, seed, kcenter_start, order)
            rows = [{"rank": r, "uid": uids[i], "caption": caption_of[uids[i]], "label": label_of[uids[i]]}
                    for r, i in enumerate(chosen)]
            write_parquet(pa.Table.from_pylist(rows, schema=schema), PROTOTYPES / f"pairs-{method}-{size}.parquet",
                          {"selection": {"method": method, "size": size, "seed": seed, "over": "pairs", **how}})
