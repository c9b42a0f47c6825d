"""Selection timings on this machine -> benchmarks/select.md

    python -m benchmarks.select_bench

1. PDS at Flickr30K scale: 31,783 image-text pairs of 768-d unit vectors (text = image
   + noise, renormalised), 20% pruning, mini-batch k-means per modality, Hungarian matching,
   for M = 100, 500, 1000 clusters.
2. VLCP per-class selection at Fashion-MNIST scale: LOF (10 neighbours, 1% contamination)
   + k-means (k = 10, n_init 10) on 6,000 x 1280 vectors per class, for 10 classes.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from mmdistill.core.runtime import versions
from mmdistill.core.storage import save_text
from mmdistill.selection.coresets import kmeans_prototypes, lof_inliers, pds_prototypes


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    rng = np.random.default_rng(0)
    image = unit(rng.normal(size=(31783, 768)))
    text = unit(image + rng.normal(0, 0.05, size=image.shape))
    lines = ["# Selection benchmarks", "", "Command: `python -m benchmarks.select_bench` "
             f"({os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
             f"scikit-learn {versions().get('scikit-learn')}).", "",
             "## PDS clustering + matching, 31,783 pairs x 768-d", "",
             "| M | prune + 2x mini-batch k-means + Hungarian (s) | pairs kept | pairless clusters |", "|---|---|---|---|"]
    for clusters in (100, 500, 1000):
        start = time.perf_counter()
        out = pds_prototypes(image, text, clusters, prune_ratio=0.2, seed=0)
        seconds = time.perf_counter() - start
        lines.append(f"| {clusters} | {seconds:.1f} | {len(out['kept'])} | {int((out['shared'] == 0).sum())} |")
        print(lines[-1], flush=True)
    lines += ["", "The PDS paper reports 9.0 s for its clustering on its own hardware.", "",
              "## LOF + k-means per class, 10 classes x 6,000 x 1280-d", "", "| step | seconds (all classes) |",
              "|---|---|"]
    lof_s = km_s = 0.0
    for c in range(10):
        x = unit(rng.normal(size=(6000, 1280)) + rng.normal(size=(1, 1280)) * 3)
        start = time.perf_counter()
        _, inlier = lof_inliers(x, 10, 0.01, 0)
        lof_s += time.perf_counter() - start
        start = time.perf_counter()
        kmeans_prototypes(x[inlier], 10, 10, 0)
        km_s += time.perf_counter() - start
    lines += [f"| LOF (10 neighbours, 1%) | {lof_s:.1f} |", f"| k-means (k 10, n_init 10) | {km_s:.1f} |"]
    print("\n".join(lines[-2:]))
    save_text("\n".join(lines) + "\n", Path("benchmarks/select.md"))


if __name__ == "__main__":
    main()
