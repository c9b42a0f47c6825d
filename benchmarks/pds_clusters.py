"""Why PDS on the benchmark's random pairs leaves many matched clusters without shared pairs.

    python -m benchmarks.pds_clusters

Same data as benchmarks/select_bench.py (31,783 random 768-d unit image vectors, text = image + N(0, 0.05^2)
per dimension, renormalised, 20% pruned). For each M, the cluster-size balance of the two mini-batch
k-means runs and the number of Hungarian matches with zero shared pairs.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import MiniBatchKMeans

from benchmarks.select_bench import unit


def main() -> None:
    rng = np.random.default_rng(0)
    image = unit(rng.normal(size=(31783, 768)))
    text = unit(image + rng.normal(0, 0.05, size=image.shape))
    similarity = (image * text).sum(1)
    print(f"cosine(image, text): mean {similarity.mean():.3f}")
    keep = np.sort(np.argsort(-similarity, kind="stable")[:25426])
    print("| M | modality | empty clusters | largest | clusters holding 90% of pairs |")
    for clusters in (100, 500, 1000):
        labels = {}
        for name, x in (("image", image[keep]), ("text", text[keep])):
            km = MiniBatchKMeans(n_clusters=clusters, random_state=0, batch_size=4096, n_init=1).fit(x)
            sizes = np.sort(np.bincount(km.labels_, minlength=clusters))[::-1]
            labels[name] = km.labels_
            holding = int(np.searchsorted(np.cumsum(sizes), 0.9 * len(x)) + 1)
            print(f"| {clusters} | {name} | {int((sizes == 0).sum())} | {sizes[0]} | {holding} |", flush=True)
        shared = np.zeros((clusters, clusters), np.int64)
        np.add.at(shared, (labels["image"], labels["text"]), 1)
        rows, cols = linear_sum_assignment(-shared)
        print(f"M {clusters}: {int((shared[rows, cols] == 0).sum())} pairless matches, "
              f"{int(shared[rows, cols].sum())} of {len(keep)} pairs shared by matched clusters", flush=True)


if __name__ == "__main__":
    main()
