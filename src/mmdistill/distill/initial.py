"""The real train images a synthetic set consists of (selection methods) or starts from (optimising methods)."""
from __future__ import annotations

import numpy as np

from mmdistill.core.paths import selection
from mmdistill.core.storage import PipelineError, read_parquet, read_parquet_metadata
from mmdistill.data.datasets import ImageSet


def random_selection(train: ImageSet, ipc: int, seed: int) -> list[int]:
    """`ipc` seeded random train images per class (indices into `train`), class-major."""
    rng = np.random.default_rng(seed)
    labels = train.labels.numpy()
    picked = []
    for c, name in enumerate(train.class_names):
        members = np.flatnonzero(labels == c)
        if ipc > len(members):
            raise PipelineError(f"IPC {ipc} is larger than class '{name}', which has {len(members)} train images")
        picked += sorted(rng.choice(members, size=ipc, replace=False).tolist())
    return picked


def selected(train: ImageSet, method: str, ipc: int) -> list[int]:
    """The real images stage `select` chose for `method` (kmeans, herding, kcenter, forgetting, forgetting_most),
    class-major."""
    path = selection(method, ipc)
    if not path.exists():
        raise PipelineError(f"{path} is missing: IPC {ipc} must be listed in 'distill.ipcs' and `select` run")
    order = "cluster" if method == "kmeans" else "rank"
    table = read_parquet(path, ["label", order, "uid"])
    position = {u: i for i, u in enumerate(train.uids)}
    rows = sorted(zip(table["label"].to_pylist(), table[order].to_pylist(), table["uid"].to_pylist()))
    return [position[u] for _, _, u in rows]


SELECTION_CHOICES = {"kcenter": ("start", "kcenter_start"), "forgetting": ("order", "forgetting_order"),
                     "forgetting_most": ("order", "forgetting_order")}


def selection_settings(method: str, ipc: int) -> dict:
    """The choice stage `select` made `method`'s selection with, from its metadata, as {param name: value}
    (kcenter: select.kcenter_start, forgetting: select.forgetting_order, forgetting_most: "most"; {} for the
    others)."""
    if method not in SELECTION_CHOICES:
        return {}
    key, name = SELECTION_CHOICES[method]
    path = selection(method, ipc)
    meta = read_parquet_metadata(path).get("selection", {})
    if key not in meta:
        raise PipelineError(f"{path} does not record its '{key}' (made by an older stage select): re-run "
                            "`dvc repro select`")
    return {name: meta[key]}
